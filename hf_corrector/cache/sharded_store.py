"""A stale cache saved as one shard per process plus a manifest: no process ever holds more than its rows.

Layout of a sharded cache folder (``stale_cache/`` of a checkpoint or of ``save_model``)::

    stale_cache/
      shard-00000-of-00002/   a complete StaleCache folder (cache.arrow + cache_info.json with its SHA-256)
      shard-00001-of-00002/
      cache_manifest.json     written last, by the main process: rows, dim, dtype, provenance and, per shard,
                              its row range, row count, bytes and SHA-256

Each process writes its own shard (:func:`write_shard`, atomic: :meth:`StaleCache.save`) into a staging folder;
after a barrier the main process moves the shards into place and writes the manifest (:func:`finish_save`). A folder
without a manifest is not a cache; a manifest whose shard is missing, of another size or checksum is refused naming
the shard. :meth:`StaleCache.load` reads either layout: ``rows=(start, stop)`` reads only the shards that overlap
(zero-copy when the range is one shard, as with ``W`` processes loading a ``W``-shard cache), without ``rows`` the
shards are concatenated into one :class:`StaleCache`.

Example:
    >>> write_shard(part, staging, rank=0, world=2)  # on every process  # doctest: +SKIP
    >>> finish_save(staging, "out/stale_cache")                 # on the main process, after a barrier  # doctest: +SKIP
    >>> StaleCache.load("out/stale_cache", rows=(0, 60))        # any number of processes  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import CacheCorruptError
from ..atomic_io import fsync_dir, sha256_file, write_text_atomic
from .card import render_cache_card
from .folder import check_save_target, embedding_span
from .hub_io import push_tables
from .provenance_checks import CacheHeader
from .schema import CACHE_FILE, FORMAT_VERSION, INFO_FILE, INITIAL_STEP
from .stale_cache import StaleCache, check_finite

logger = logging.getLogger(__name__)

MANIFEST_FILE = "cache_manifest.json"
MANIFEST_VERSION = 1
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})$")
_DAMAGED = "the sharded cache is incomplete or damaged: resume from another checkpoint or rebuild the cache"


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}"


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (or was being written as) a sharded cache folder (a manifest or shard folders)."""
    path = Path(path)
    return (path / MANIFEST_FILE).is_file() or (path.is_dir() and not (path / CACHE_FILE).exists()
                                               and any(_SHARD_RE.match(p.name) for p in path.iterdir()))


def staging_dir(final_dir: str | os.PathLike) -> Path:
    """Where the processes write their shards before the main process installs them (the same on every process)."""
    final_dir = Path(os.path.abspath(final_dir))
    return final_dir.parent / f".{final_dir.name}.shards"


def write_shard(part: StaleCache, staging: str | os.PathLike, rank: int, world: int) -> Path:
    """Write this process's rows as shard ``rank`` of ``world`` (atomic); shards hold consecutive row ranges in
    rank order."""
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    folder = staging / shard_name(rank, world)
    part.save(folder)
    return folder


def finish_save(staging: str | os.PathLike, final_dir: str | os.PathLike, world: int) -> Path:
    """Main process, after every shard is written: move the ``world`` shards of ``staging`` into ``final_dir``
    and write the manifest last. Raises :class:`CacheCorruptError` naming a shard that is missing."""
    staging, final_dir = Path(staging), Path(final_dir)
    entries, dims, dtypes, provenance, expected = [], set(), set(), None, 0
    for rank in range(world):
        name = shard_name(rank, world)
        folder = staging / name
        if not (folder / INFO_FILE).is_file() or not (folder / CACHE_FILE).is_file():
            raise CacheCorruptError(f"{folder}: shard {name} was not written (every process must call save)")
        info = json.loads((folder / INFO_FILE).read_text())
        dims.add(info["embedding_dim"]), dtypes.add(info["dtype"])
        provenance = provenance if provenance is not None else info.get("provenance", {})
        entries.append({"name": name, "start": expected, "stop": expected + int(info["num_rows"]),
                        "sha256": info["sha256"], "bytes": (folder / CACHE_FILE).stat().st_size})
        expected += int(info["num_rows"])
    if len(dims) > 1 or len(dtypes) > 1:
        raise CacheCorruptError(f"{staging}: shards disagree on dimension {sorted(dims)} or dtype {sorted(dtypes)}")
    if final_dir.exists():
        _check_save_target_sharded(final_dir)
        (final_dir / MANIFEST_FILE).unlink(missing_ok=True)  # from here on the old cache is not complete
    final_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = final_dir / entry["name"]
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / entry["name"], target)
    keep = {e["name"] for e in entries}
    for old in final_dir.iterdir():  # shards of an earlier save with another number of processes
        if old.is_dir() and _SHARD_RE.match(old.name) and old.name not in keep:
            shutil.rmtree(old)
    fsync_dir(final_dir)
    manifest = {"format": "sharded", "format_version": MANIFEST_VERSION, "num_rows": expected,
                "embedding_dim": dims.pop() if dims else 0, "dtype": dtypes.pop() if dtypes else "float32",
                "provenance": provenance or {}, "shards": entries}
    write_text_atomic(final_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))
    shutil.rmtree(staging, ignore_errors=True)
    return final_dir


def _check_save_target_sharded(path: Path) -> None:
    """A sharded save may replace a sharded or a single-file cache folder, nothing else."""
    if (path / CACHE_FILE).exists() or (path / INFO_FILE).exists():
        check_save_target(path)  # a single-file cache folder: its usual check, then swap it out
        for name in (CACHE_FILE, INFO_FILE):
            (path / name).unlink(missing_ok=True)
        return
    others = [p.name for p in path.iterdir() if not (_SHARD_RE.match(p.name) or p.name in (MANIFEST_FILE, "README.md")
                                                     or p.name.startswith("."))]
    if others:
        from ..errors import UnsafeOverwriteError

        raise UnsafeOverwriteError(f"{path} holds {others[:5]}: not a cache folder; refusing to write a sharded "
                                   "cache over it")


def read_manifest(path: str | os.PathLike, verify: str = "checksum") -> dict:
    """The validated manifest of a sharded cache folder; every shard is checked to be there, of the recorded size
    and (``verify="checksum"``) SHA-256. Raises :class:`CacheCorruptError` naming the folder or the shard."""
    path = Path(path)
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise CacheCorruptError(f"{path}: no {MANIFEST_FILE} (a sharded cache whose save did not finish); {_DAMAGED}")
    try:
        manifest = json.loads(file.read_text())
        shards = manifest["shards"]
        num_rows = int(manifest["num_rows"])
    except (ValueError, KeyError, TypeError) as err:
        raise CacheCorruptError(f"{file}: unreadable manifest ({err}); {_DAMAGED}") from None
    expected = 0
    for entry in shards:
        folder = path / entry["name"]
        data = folder / CACHE_FILE
        if not data.is_file() or not (folder / INFO_FILE).is_file():
            raise CacheCorruptError(f"{path}: shard {entry['name']} (rows {entry['start']}:{entry['stop']}) is "
                                    f"missing; {_DAMAGED}")
        if data.stat().st_size != entry["bytes"]:
            raise CacheCorruptError(f"{data}: shard {entry['name']} has {data.stat().st_size} bytes, the manifest "
                                    f"says {entry['bytes']} (torn); {_DAMAGED}")
        if verify == "checksum" and sha256_file(data) != entry["sha256"]:
            raise CacheCorruptError(f"{data}: shard {entry['name']} does not match the checksum in {file}; {_DAMAGED}")
        if entry["start"] != expected:
            raise CacheCorruptError(f"{file}: shard {entry['name']} starts at row {entry['start']}, expected "
                                    f"{expected}; {_DAMAGED}")
        expected = entry["stop"]
    if expected != num_rows:
        raise CacheCorruptError(f"{file}: the shards cover {expected} rows, the manifest says {num_rows}; {_DAMAGED}")
    return manifest


def load_sharded(path: str | os.PathLike, verify: str = "checksum", rows: tuple[int, int] | None = None) -> StaleCache:
    """Rows ``rows`` (default: all) of a sharded cache folder as one :class:`StaleCache` (see the module docstring).

    Only the shards overlapping ``rows`` are opened (memory-mapped); a range equal to one shard is zero-copy."""
    path = Path(path)
    manifest = read_manifest(path, verify)
    num_rows = int(manifest["num_rows"])
    start, stop = (0, num_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start <= stop <= num_rows:
        raise CacheCorruptError(f"{path}: rows {start}:{stop} are outside the cache's {num_rows} rows")
    # the manifest's checksums were just verified: each shard is read as "rows" (schema and row count)
    shard_verify = "rows" if verify == "checksum" else verify
    pieces = [(entry["name"], (max(start, entry["start"]) - entry["start"], min(stop, entry["stop"]) - entry["start"]))
              for entry in manifest["shards"] if max(start, entry["start"]) < min(stop, entry["stop"])]
    if not pieces:  # an empty range (a process with no rows)
        pieces = [(manifest["shards"][0]["name"], (0, 0))]
    if len(pieces) == 1:  # zero-copy over the memory-mapped shard
        cache = StaleCache.load(path / pieces[0][0], verify=shard_verify, rows=pieces[0][1])
    else:
        cache = _concat(path, pieces, stop - start, shard_verify)
    if verify == "checksum":
        check_finite(cache.matrix(), f"loaded cache embeddings ({path})")
    cache.source = f"{path}" if rows is None else f"{path} (rows {start}:{stop})"
    cache.provenance = dict(manifest.get("provenance", cache.provenance))
    cache.row_offset, cache.total_rows = (start, num_rows) if rows is not None else (0, len(cache))
    return cache


def _concat(path: Path, pieces: list[tuple[str, tuple[int, int]]], num_rows: int, verify: str) -> StaleCache:
    """The rows of several shards in one matrix, read shard by shard with plain file reads straight into it: the
    peak is the result alone (copying from each shard's memory map would add the mapped shard's pages to the
    process's memory, one shard at a time). Each shard is still opened as a cache (schema, ids, steps)."""
    doc_ids: list[str] = []
    steps, out, filled, first = [], None, 0, None
    for name, rows in pieces:
        part = StaleCache.load(path / name, verify=verify, rows=rows)
        if out is None:
            out = torch.empty(num_rows, part.dim, dtype=part.matrix().dtype)
            first = {"provenance": part.provenance, "dtype": part.dtype}
        _read_rows(path / name / CACHE_FILE, rows, out[filled : filled + len(part)])
        if len(part) and not all(_same_bytes(out[filled + i], part.matrix()[i]) for i in (0, len(part) - 1)):
            raise CacheCorruptError(f"{path / name}: rows read from the file differ from its Arrow table; {_DAMAGED}")
        filled += len(part)
        doc_ids += part.doc_ids
        steps.append(part.steps.clone())
        del part  # unmaps the shard
    return StaleCache(doc_ids, out, steps=torch.cat(steps).numpy(), **first)


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))  # NaN rows compare too


def _read_rows(data_file: Path, rows: tuple[int, int], into: torch.Tensor, chunk_bytes: int = 1 << 26) -> None:
    """Rows ``rows`` of the embedding values of ``data_file`` into the contiguous ``into``, 64 MB a read."""
    offset, row_bytes = embedding_span(data_file)
    target = memoryview(into.view(torch.uint8).numpy().reshape(-1))  # bfloat16 has no numpy type: bytes
    with open(data_file, "rb") as fh:
        fh.seek(offset + rows[0] * row_bytes)
        for lo in range(0, len(target), chunk_bytes):
            view = target[lo : lo + chunk_bytes]
            got = fh.readinto(view)
            while got < len(view):  # a short read: keep reading (never past the file's end, checked below)
                more = fh.readinto(view[got:])
                if not more:
                    raise CacheCorruptError(f"{data_file}: ends inside its embedding values; {_DAMAGED}")
                got += more


def check_part_provenance(part: StaleCache, path: str | os.PathLike, doc_ids: list[str], texts: list[str] | None,
                          retriever: Any = None, **kwargs: Any) -> None:
    """:meth:`StaleCache.check_provenance` of a whole sharded cache, checked from this process's rows ``part``:
    its doc ids against ``doc_ids[part's rows]``, the corpus texts against the manifest's fingerprint, the encoder
    against its provenance (and the part's step markers). No other process's rows are read."""
    from ..errors import CacheMismatchError

    lo = part.row_offset
    for i, (a, b) in enumerate(zip(part.doc_ids, doc_ids[lo : lo + len(part)])):
        if a != str(b):
            raise CacheMismatchError(f"cache row {lo + i} is doc id {a!r} but corpus row {lo + i} is {b!r}")
    header = CacheHeader(doc_ids, part.steps, part.provenance, part.dim, source=str(path))  # no embeddings
    if len(doc_ids) != part.total_rows:
        raise CacheMismatchError(f"the stale cache at {path} has {part.total_rows} rows but the corpus has "
                                 f"{len(doc_ids)} documents")
    header.check_provenance(retriever, texts=texts, **kwargs)


class ShardedCacheSummary:
    """What a dataset card needs of a sharded cache (rows, dim, dtype, provenance, step markers), without its
    embeddings: the step markers (8 bytes a row) are read shard by shard."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, verify="rows")
        self.dtype = self.manifest["dtype"]
        self.dim = int(self.manifest["embedding_dim"])
        self.provenance = dict(self.manifest.get("provenance", {}))
        self.steps = torch.cat([StaleCache.load(self.path / e["name"], verify="rows").steps
                                for e in self.manifest["shards"]]) if self.manifest["shards"] else torch.zeros(0)
        self.source = str(self.path)

    def __len__(self) -> int:
        return int(self.manifest["num_rows"])

    @property
    def nbytes(self) -> int:
        return len(self) * self.dim * torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()

    def info(self) -> dict[str, Any]:
        n = len(self)
        return {"format_version": FORMAT_VERSION, "num_rows": n, "embedding_dim": self.dim, "dtype": self.dtype,
                "provenance": self.provenance,
                "steps": {"min": int(self.steps.min()) if n else None, "max": int(self.steps.max()) if n else None,
                          "initial_rows": int((self.steps == INITIAL_STEP).sum())},
                "shards": len(self.manifest["shards"])}


def push_to_hub(path: str | os.PathLike, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload stale cache", card: str | None = None) -> str:
    """Publish a saved cache folder (sharded or single-file) as a dataset repo in ``datasets``' sharded layout:
    ``data/train-0000r-of-0000W.parquet`` per shard (one shard in memory at a time), ``cache_info.json`` and the
    card. ``StaleCache.from_hub`` / ``datasets.load_dataset`` read it back as one split.

    Example:
        >>> push_to_hub("out/stale_cache", "me/my-cache")  # doctest: +SKIP
    """
    path = Path(path)
    if not is_sharded(path):
        return StaleCache.load(path, verify="rows").push_to_hub(repo_id, private=private, token=token,
                                                                commit_message=commit_message, card=card)
    summary = ShardedCacheSummary(path)
    shards = summary.manifest["shards"]
    tables = (StaleCache.load(path / entry["name"], verify="rows").dataset.data.table for entry in shards)
    info = {k: v for k, v in summary.info().items() if k != "shards"}
    if card is None:
        text = render_cache_card(summary, repo_id=repo_id, keep_existing_metadata=False)
    else:
        text = card
    return push_tables(repo_id, tables, info, text, num_tables=len(shards), private=private, token=token,
                       layout_metadata=card is None, commit_message=commit_message)


def cache_summary(path: str | os.PathLike) -> Any:
    """What a card needs of a saved cache folder, without holding a sharded cache's embeddings."""
    return ShardedCacheSummary(path) if is_sharded(path) else StaleCache.load(path, verify="rows")


__all__ = ["MANIFEST_FILE", "ShardedCacheSummary", "cache_summary", "check_part_provenance", "finish_save", "is_sharded", "load_sharded", "push_to_hub",
           "read_manifest", "shard_name", "staging_dir", "write_shard"]
