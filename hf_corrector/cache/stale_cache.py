"""The stale cache: target embeddings g'(y) written by an older encoder, kept in a ``datasets`` Arrow column.

Columns: ``doc_id`` (string), ``embedding`` (fixed-length list of the storage dtype, length d) and ``step`` (the
training step whose encoder wrote the row; :data:`INITIAL_STEP` marks the initial encoding).

Storage and views
    On disk a cache is one Arrow IPC stream file written as a single record batch (``cache.arrow``) plus
    ``cache_info.json`` (provenance, row count, dimension, dtype, SHA-256). Loading memory-maps the file and
    :meth:`StaleCache.matrix` returns an (N, d) tensor that *views* the Arrow buffer: no copy, no load time. The
    first write-back makes one private, writable copy (copy-on-write); later write-backs only touch their rows. A
    ``datasets.Dataset`` snapshot (:attr:`StaleCache.dataset`) is built zero-copy on demand for saving and the Hub.

Crash safety and no data loss
    :meth:`save` writes into a hidden sibling folder ``.NAME.tmp-<host>-<pid>-<random>``, fsyncs, and swaps it into
    place. It never removes what a cache save did not write: an existing target must be a cache folder (only
    ``cache.arrow``, ``cache_info.json`` and the card ``README.md``) or empty, otherwise :class:`UnsafeOverwriteError`.
    Temporary folders left by a killed save are removed by the next save or load of the same target, once their
    writer process is gone (:func:`remove_leftovers`). :meth:`load` validates ``cache_info.json`` and the Arrow
    schema (:class:`CacheCorruptError` names the file and field) and, by default, the checksum. :meth:`build` can
    write shards as they complete and resumes from them after a crash.

Provenance
    :meth:`build` records fingerprints of the target tower's weights and of the corpus (ids and texts, see
    :mod:`hf_corrector.cache.provenance`); :meth:`check_provenance` refuses a cache of other texts, and one of other
    weights unless that is said on purpose (``allow_other_weights=True``: the stale cache a corrector corrects).
    Caches saved before fingerprints existed still load; their checks log a warning that provenance cannot be
    verified.

Example:
    >>> cache = StaleCache.build(corpus, retriever)  # doctest: +SKIP
    >>> cache.matrix().shape  # doctest: +SKIP
    torch.Size([5183, 384])
    >>> cache.save("scifact-cache"); StaleCache.load("scifact-cache")  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ..errors import CacheCorruptError, CacheMismatchError, ConfigError, UnsafeOverwriteError
from .provenance import (SCHEME, TEXTS_KEY, WEIGHTS_KEY, fingerprint_corpus, fingerprint_retriever,
                         fingerprint_texts, short)

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)

INITIAL_STEP = -1
CACHE_FILE = "cache.arrow"
INFO_FILE = "cache_info.json"
CARD_FILE = "README.md"
#: the only files a cache save writes; a folder holding anything else is never replaced
CACHE_FOLDER_FILES = frozenset({CACHE_FILE, INFO_FILE, CARD_FILE})
BUILD_INFO_FILE = "build_info.json"
FORMAT_VERSION = 1
VERIFY_MODES = ("checksum", "rows", "none")
#: leftovers whose name carries no writer pid (written by hf_corrector before this scheme) are removed after this long
LEGACY_LEFTOVER_AGE_S = 3600.0
STORAGE_DTYPES = {"float32": (torch.float32, pa.float32()), "float16": (torch.float16, pa.float16()),
                  "bfloat16": (torch.bfloat16, pa.uint16())}  # Arrow has no bfloat16: raw bits in uint16


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished ``tmp_dir`` to ``final_dir`` so that readers see either the old or the new folder.

    Replacing an existing folder is one atomic swap on Linux; elsewhere it is two renames, and a crash between
    them leaves the old folder as ``.NAME.old-*`` next to the new one's ``.NAME.tmp-*``.
    """
    final_dir, tmp_dir = Path(final_dir), Path(tmp_dir)
    _fsync_dir(tmp_dir)
    if final_dir.exists():
        if _exchange(tmp_dir, final_dir):  # tmp_dir now holds the old folder
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            trash = final_dir.with_name(f".{final_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final_dir, trash)
            os.rename(tmp_dir, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"checksum of {path.name}",
                                      disable=size < (256 << 20)) as bar:  # a bar for files that take a while
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# -- temporary names, leftovers of killed writers, refusing unsafe overwrites -----------------------------------------
def _host_tag() -> str:
    """Hash of the host name and, on Linux, the pid namespace: pids are only comparable within one of these."""
    ident = socket.gethostname()
    try:
        ident += f"/pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


_HOST_TAG = _host_tag()
_WRITER_TAG = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


def _writer_tag() -> str:
    """``<host hash>-<pid>-<random>``: lets a later process tell whether the writer of a temporary is still alive."""
    return f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no safe liveness probe (os.kill would terminate the process on Windows): keep it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def _last_touched(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    return max(times)


def _writer_gone(path: Path, tag: str) -> bool:
    """True if the process that wrote the temporary ``path`` (named with ``tag``) can no longer be writing it."""
    match = _WRITER_TAG.match(tag)
    if match:  # a writer on another host or in another pid namespace cannot be probed: keep its temporaries
        return match["host"] == _HOST_TAG and not _pid_alive(int(match["pid"]))
    return time.time() - _last_touched(path) > LEGACY_LEFTOVER_AGE_S  # no pid in the name (older hf_corrector)


def _remove_cache_dir(path: Path) -> bool:
    """Remove a folder that a cache save wrote: its cache files, then the folder. Anything else in it is kept (and
    so is the folder, with a warning). True if the folder is gone."""
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in os.scandir(path):
        if entry.name in CACHE_FOLDER_FILES and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        logger.warning("kept %s: it holds files a cache save did not write (%s)", path, _names(os.listdir(path)))
        return False
    return True


def _names(entries: Sequence[str], limit: int = 5) -> str:
    entries = sorted(entries)
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` folders that killed saves of ``target`` left beside it.

    Only leftovers whose writer is gone are touched: the name carries the writer's host and pid, and a folder of a
    live process (or of another host) is kept; names without a pid (older versions) must be untouched for
    :data:`LEGACY_LEFTOVER_AGE_S`. Only cache files are deleted from them. Returns the folders removed.
    """
    target = Path(os.path.abspath(target))
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefixes)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        tag = entry.name[len(f".{target.name}.tmp-"):]  # both prefixes have the same length
        try:
            if entry.is_dir(follow_symlinks=False) and _writer_gone(path, tag) and _remove_cache_dir(path):
                removed.append(path)
                logger.info("removed %s, left by a killed save of %s", path, target)
        except OSError as err:  # read-only media, a concurrent cleaner: leave it
            logger.debug("could not remove leftover %s (%s)", path, err)
    return removed


def _remove_leftover_shards(shard_dir: Path) -> None:
    """Remove ``.shard-*.npy.tmp-<tag>.npy`` files of killed builds whose writer is gone."""
    for entry in shard_dir.glob(".shard-*.npy.tmp-*"):
        tag = entry.name.split(".tmp-", 1)[1].removesuffix(".npy")
        try:
            if entry.is_file() and _writer_gone(entry, tag):
                entry.unlink()
                logger.info("removed %s, left by a killed cache build", entry)
        except OSError as err:
            logger.debug("could not remove leftover %s (%s)", entry, err)


def _looks_like_cache_info(path: Path) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "format_version" in info and "num_rows" in info


def _check_save_target(path: Path) -> None:
    """Raise :class:`UnsafeOverwriteError` unless saving to ``path`` can only replace a cache (or an empty folder)."""
    if path.is_symlink():
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: it is a symbolic link, and saving would replace the link; "
            f"save to the folder it points to ({os.path.realpath(path)}) or to a new path")
    if not path.exists():
        return
    if not path.is_dir():
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: it is an existing file, and saving would replace it; "
            f"save to a folder path that does not exist yet (for example {path.with_name(path.name + '_cache')})")
    entries = os.listdir(path)
    if not entries:
        return
    foreign = [e for e in entries
               if e not in CACHE_FOLDER_FILES or (path / e).is_symlink() or not (path / e).is_file()]
    if foreign:
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: the folder holds files a cache save did not write "
            f"({_names(foreign)}), and saving would delete them; save the cache to a subfolder (for example "
            f"{path / 'stale_cache'}) or to a new path")
    if INFO_FILE not in entries or not _looks_like_cache_info(path / INFO_FILE):
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: the folder holds {_names(entries)} but no valid "
            f"{INFO_FILE}, so it is not a saved cache; save to a new path, or delete the folder if it is a damaged "
            f"cache you no longer need")


def _install_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move the finished ``tmp_dir`` to ``final_dir`` (readers see the old or the new folder, never a torn one);
    the replaced folder loses only its cache files (see :func:`_remove_cache_dir`)."""
    _fsync_dir(tmp_dir)
    if final_dir.exists() or final_dir.is_symlink():
        if _exchange(tmp_dir, final_dir):
            old = tmp_dir  # now holds the previous folder
        else:
            old = final_dir.with_name(f".{final_dir.name}.old-{_writer_tag()}")
            os.rename(final_dir, old)
            os.rename(tmp_dir, final_dir)
        _remove_cache_dir(old)
    else:
        os.rename(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


# -- validating cache_info.json and the Arrow table -------------------------------------------------------------------
_DAMAGED = "the cache is damaged: rebuild it (StaleCache.build) or restore a copy"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(rf"^{re.escape(SCHEME)}:[0-9a-f]{{64}}$")


def _int_field(info: dict, key: str, where: str, minimum: int) -> int:
    if key not in info:
        raise CacheCorruptError(f"{where}: field {key!r} is missing; {_DAMAGED}")
    value = info[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CacheCorruptError(f"{where}: field {key!r} must be an integer, got {type(value).__name__} "
                                f"{_preview(value)}; {_DAMAGED}")
    if value < minimum:
        raise CacheCorruptError(f"{where}: field {key!r} must be >= {minimum}, got {value}; {_DAMAGED}")
    return value


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_info(info: Any, where: str, checksum: bool = True) -> dict:
    """Check the fields of a ``cache_info.json`` (types, ranges, dtype name, format version); returns it.

    Raises :class:`CacheCorruptError` naming ``where`` and the field. ``checksum``: ``sha256`` must be present.
    """
    if not isinstance(info, dict):
        raise CacheCorruptError(f"{where}: expected a JSON object, got {type(info).__name__}; {_DAMAGED}")
    version = _int_field(info, "format_version", where, 1)
    if version > FORMAT_VERSION:
        raise CacheCorruptError(f"{where}: field 'format_version' is {version}, but this hf_corrector reads version "
                                f"{FORMAT_VERSION}; upgrade hf_corrector to load this cache")
    _int_field(info, "num_rows", where, 0)
    _int_field(info, "embedding_dim", where, 1)
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in STORAGE_DTYPES:
        raise CacheCorruptError(f"{where}: field 'dtype' is {_preview(dtype)}, not one of {sorted(STORAGE_DTYPES)}; "
                                f"{_DAMAGED}")
    if checksum and not (isinstance(info.get("sha256"), str) and _SHA256.match(info["sha256"])):
        raise CacheCorruptError(f"{where}: field 'sha256' is {_preview(info.get('sha256'))}, not a SHA-256 hex "
                                f"digest; {_DAMAGED} (or load with verify='rows' to skip the checksum)")
    provenance = info.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CacheCorruptError(f"{where}: field 'provenance' must be an object, got {type(provenance).__name__}; "
                                f"{_DAMAGED}")
    for key in (WEIGHTS_KEY, TEXTS_KEY, "doc_ids_fingerprint"):
        # absent or null: saved before fingerprints existed ("cannot verify"); anything else must be well formed
        if provenance.get(key) is not None and not (isinstance(provenance[key], str)
                                                    and _FINGERPRINT.match(provenance[key])):
            raise CacheCorruptError(f"{where}: field 'provenance.{key}' is {_preview(provenance[key])}, not a "
                                    f"fingerprint ('{SCHEME}:' and 64 hex digits); {_DAMAGED}")
    return info


def _validate_table(table: pa.Table, info: dict, data_where: str, info_where: str) -> None:
    """The Arrow table must have the columns, types, row count and vector length that ``info`` promises."""
    missing = [c for c in ("doc_id", "embedding", "step") if c not in table.column_names]
    if missing:
        raise CacheCorruptError(f"{data_where}: column(s) {missing} missing (has {table.column_names}); {_DAMAGED}")
    schema = table.schema
    if not (pa.types.is_string(schema.field("doc_id").type) or pa.types.is_large_string(schema.field("doc_id").type)):
        raise CacheCorruptError(f"{data_where}: column 'doc_id' is {schema.field('doc_id').type}, not string; "
                                f"{_DAMAGED}")
    if not pa.types.is_integer(schema.field("step").type):
        raise CacheCorruptError(f"{data_where}: column 'step' is {schema.field('step').type}, not integer; {_DAMAGED}")
    emb_type = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type):
        raise CacheCorruptError(f"{data_where}: column 'embedding' is {emb_type}, not a fixed-length list; {_DAMAGED}")
    if emb_type.list_size != info["embedding_dim"]:
        raise CacheCorruptError(f"{info_where}: field 'embedding_dim' is {info['embedding_dim']} but {data_where} "
                                f"holds vectors of length {emb_type.list_size}; {_DAMAGED}")
    expected = STORAGE_DTYPES[info["dtype"]][1]
    if emb_type.value_type != expected:
        raise CacheCorruptError(f"{info_where}: field 'dtype' is {info['dtype']!r} but {data_where} stores "
                                f"{emb_type.value_type} values (expected {expected}); {_DAMAGED}")
    if table.num_rows != info["num_rows"]:
        raise CacheCorruptError(f"{data_where}: {table.num_rows} rows, {info_where} says {info['num_rows']} "
                                f"(field 'num_rows'); {_DAMAGED}")
    for name in ("doc_id", "embedding", "step"):
        column = table.column(name)
        nulls = column.null_count + (sum(c.flatten().null_count for c in column.chunks) if name == "embedding" else 0)
        if nulls:
            raise CacheCorruptError(f"{data_where}: column {name!r} has {nulls} missing values; {_DAMAGED}")


def _to_storage_numpy(emb: torch.Tensor, dtype: str) -> np.ndarray:
    torch_dtype, _ = STORAGE_DTYPES[dtype]
    t = emb.detach().to("cpu", torch_dtype).contiguous()
    return t.view(torch.uint16).numpy() if dtype == "bfloat16" else t.numpy()


def _arrow_table(doc_ids: Sequence[str], storage: np.ndarray, steps: np.ndarray, dtype: str) -> pa.Table:
    n, d = storage.shape
    values = pa.array(storage.reshape(-1), type=STORAGE_DTYPES[dtype][1])
    return pa.table(
        {
            "doc_id": pa.array(list(doc_ids), type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, d),
            "step": pa.array(steps, type=pa.int64()),
        }
    )


def _write_stream(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


CardRenderer = Callable[["StaleCache", str, Union[str, None]], str]
_card_renderer: CardRenderer | None = None


def register_card_renderer(renderer: CardRenderer | None) -> None:
    """Set the function that renders the dataset card :meth:`StaleCache.push_to_hub` publishes by default
    (``(cache, repo_id, token) -> markdown``). ``hf_corrector.hub`` registers its renderer when imported."""
    global _card_renderer
    _card_renderer = renderer


class StaleCache:
    """Cached target embeddings g'(y) for a corpus, with provenance.

    Args:
        doc_ids: one id per row, in corpus order.
        embeddings: an (N, d) tensor or array (any float dtype; stored in ``dtype``).
        steps: per-row step markers (default: all :data:`INITIAL_STEP`).
        provenance: encoder name, dimension, pooling, normalisation (see :meth:`RetrieverModel.provenance`).
        dtype: storage dtype, ``float32`` (default), ``float16`` or ``bfloat16``.
    """

    def __init__(
        self,
        doc_ids: Sequence[str],
        embeddings: torch.Tensor | np.ndarray,
        steps: Sequence[int] | np.ndarray | None = None,
        provenance: dict | None = None,
        dtype: str = "float32",
    ):
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"unknown cache dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
        emb = torch.as_tensor(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings
        if emb.ndim != 2:
            raise CacheMismatchError(f"cache embeddings must be 2-D (N, d), got shape {tuple(emb.shape)}")
        if len(doc_ids) != emb.shape[0]:
            raise CacheMismatchError(f"{len(doc_ids)} doc ids but {emb.shape[0]} embedding rows")
        self.dtype = dtype
        self.doc_ids = [str(d) for d in doc_ids]
        self._storage = emb.detach().to("cpu", STORAGE_DTYPES[dtype][0]).contiguous()
        self._writable = True
        self.steps = torch.full((len(self.doc_ids),), INITIAL_STEP, dtype=torch.long) if steps is None else (
            torch.as_tensor(np.asarray(steps), dtype=torch.long).clone()
        )
        self.provenance = dict(provenance or {})
        self.provenance.setdefault("embedding_dim", int(emb.shape[1]))
        self._row_of: dict[str, int] | None = None
        self.source: str | None = None  # the folder or repo id it was loaded from (for messages)
        check_finite(self._storage, "cache embeddings")

    # -- basic properties -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self._storage.shape[1])

    @property
    def nbytes(self) -> int:
        return self._storage.numel() * self._storage.element_size()

    def row_of(self, doc_id: str) -> int:
        """The row index of ``doc_id`` (KeyError names the id)."""
        if self._row_of is None:
            self._row_of = {d: i for i, d in enumerate(self.doc_ids)}
        try:
            return self._row_of[doc_id]
        except KeyError:
            raise KeyError(f"doc id {doc_id!r} is not in the cache") from None

    def matrix(self) -> torch.Tensor:
        """The (N, d) matrix in the storage dtype. A view of the Arrow buffer when loaded and not yet written to."""
        return self._storage

    def iter_chunks(self, chunk_size: int = 65536, dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start_row, chunk)`` with chunks converted to ``dtype`` (memory bounded)."""
        for start in range(0, len(self), chunk_size):
            yield start, self._storage[start : start + chunk_size].to(dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gather rows by index, as ``dtype``."""
        return self._storage[index.cpu()].to(dtype)

    def slice_rows(self, start: int, stop: int) -> StaleCache:
        """A cache holding only rows ``start:stop`` (a process's shard), with the same provenance.

        A view of the memory-mapped file when this cache is loaded and unwritten (memory: only the pages of the
        slice, once touched); a copy otherwise, so the full matrix can be freed. ``row_offset`` / ``total_rows``
        say where the slice sits in the whole cache.
        """
        start, stop = _check_row_range((start, stop), len(self))
        part = StaleCache.__new__(StaleCache)
        part.dtype = self.dtype
        part.doc_ids = self.doc_ids[start:stop]
        view = self._storage[start:stop]
        part._storage = view if not self._writable else view.clone()
        part._writable = self._writable
        part.steps = self.steps[start:stop].clone()
        part.provenance = dict(self.provenance)
        part.source = f"{self.source} (rows {start}:{stop})" if self.source else None
        part._row_of = None
        part.row_offset = getattr(self, "row_offset", 0) + start
        part.total_rows = getattr(self, "total_rows", len(self))
        return part

    # -- building ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        corpus: datasets.Dataset,
        retriever: RetrieverModel,
        batch_size: int = 64,
        dtype: str = "float32",
        shard_dir: str | os.PathLike | None = None,
        shard_size: int = 4096,
        show_progress_bar: bool = True,
        device: str | torch.device | None = None,
        max_length: int | None = None,
    ) -> StaleCache:
        """Encode every corpus row (columns ``doc_id``, ``text``) with ``retriever``'s target tower.

        Targets are truncated to ``max_length`` tokens (default: the retriever's ``target_max_length``). The
        provenance records the encoder settings and fingerprints of the target weights and of the corpus ids and
        texts (see :meth:`check_provenance`).

        With ``shard_dir`` each finished shard of ``shard_size`` rows is written there atomically; a build that was
        killed resumes from the shards already written. The shards belong to this corpus and these target weights
        (recorded in ``shard_dir/build_info.json``): shards of other weights, other texts or other settings raise
        :class:`CacheMismatchError` instead of being mixed in.
        """
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"unknown cache dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
        for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("max_length", max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"StaleCache.build: {name} must be a positive integer, got {value!r}")
        if len(corpus) == 0:
            raise CacheMismatchError("cannot build a cache for an empty corpus")
        doc_ids = [str(d) for d in corpus["doc_id"]]
        texts = list(corpus["text"])
        length = int(max_length or retriever.config.target_max_length)
        provenance = {
            **retriever.provenance(),
            "target_max_length": length,
            "target_prefix": retriever.config.target_prefix,
            "dtype": dtype,
            WEIGHTS_KEY: fingerprint_retriever(retriever),
            **fingerprint_corpus(doc_ids, texts),
        }

        def encode(chunk: list[str], progress: bool) -> torch.Tensor:
            return retriever.encode_targets(chunk, batch_size=batch_size, show_progress_bar=progress, device=device,
                                            max_length=length, desc="building the cache")

        if shard_dir is None:
            return cls(doc_ids, encode(texts, show_progress_bar), provenance=provenance, dtype=dtype)
        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftover_shards(shard_dir)
        build_info = {"format_version": FORMAT_VERSION, "num_rows": len(doc_ids), "shard_size": shard_size,
                      "provenance": {k: v for k, v in provenance.items() if k != "dtype"}}  # shards are float32
        _claim_shard_dir(shard_dir, json.loads(json.dumps(build_info)))
        parts = []
        starts = range(0, len(doc_ids), shard_size)
        done = 0
        for k, start in enumerate(tqdm(starts, desc="building the cache (shards)", disable=not show_progress_bar)):
            shard_file = shard_dir / f"shard-{k:05d}.npy"
            stop = min(start + shard_size, len(doc_ids))
            if shard_file.exists():
                part = torch.from_numpy(_load_shard(shard_file, (stop - start, retriever.embedding_dim)))
                done += 1
            else:
                part = encode(texts[start:stop], False)
                tmp = shard_file.with_name(f".{shard_file.name}.tmp-{_writer_tag()}.npy")
                np.save(tmp, part.numpy())
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.rename(tmp, shard_file)
            parts.append(part)
        if done:
            logger.info("resumed cache build: %d of %d shards were already written", done, len(starts))
        return cls(doc_ids, torch.cat(parts), provenance=provenance, dtype=dtype)

    # -- writing back -----------------------------------------------------------------------------------------------
    def update(self, rows: torch.Tensor | Sequence[int], embeddings: torch.Tensor, step: int) -> None:
        """Write fresh embeddings for ``rows`` and mark them with ``step``. Touches only those rows."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if embeddings.shape != (rows.numel(), self.dim):
            raise CacheMismatchError(f"update of {rows.numel()} rows needs shape ({rows.numel()}, {self.dim}), "
                                     f"got {tuple(embeddings.shape)}")
        check_finite(embeddings, f"embeddings written back at step {step}")
        if not self._writable:  # copy-on-write: leave the memory-mapped file alone
            self._storage = self._storage.clone()
            self._writable = True
        self._storage[rows] = embeddings.detach().to("cpu", self._storage.dtype)
        self.steps[rows] = int(step)

    def replace_all(self, embeddings: torch.Tensor, step: int) -> None:
        """Replace every row (a full refresh) and mark all rows with ``step``."""
        if tuple(embeddings.shape) != (len(self), self.dim):
            raise CacheMismatchError(f"refresh needs shape ({len(self)}, {self.dim}), got {tuple(embeddings.shape)}")
        check_finite(embeddings, f"refreshed cache at step {step}")
        self._storage = embeddings.detach().to("cpu", STORAGE_DTYPES[self.dtype][0]).contiguous()
        self._writable = True
        self.steps.fill_(int(step))

    # -- datasets / disk / Hub ----------------------------------------------------------------------------------------
    def _storage_numpy(self) -> np.ndarray:
        t = self._storage
        return t.view(torch.uint16).numpy() if self.dtype == "bfloat16" else t.numpy()

    @property
    def dataset(self) -> datasets.Dataset:
        """A ``datasets.Dataset`` snapshot (zero-copy over the current matrix) with a fixed-length embedding column."""
        table = _arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
        fingerprint = hashlib.sha1(f"{id(self)}-{uuid.uuid4().hex}".encode()).hexdigest()[:16]
        return datasets.Dataset(table, fingerprint=fingerprint)

    def info(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "num_rows": len(self),
            "embedding_dim": self.dim,
            "dtype": self.dtype,
            "provenance": self.provenance,
            "steps": {"min": int(self.steps.min()) if len(self) else None, "max": int(self.steps.max()) if len(self) else None,
                      "initial_rows": int((self.steps == INITIAL_STEP).sum())},
        }

    def save(self, path: str | os.PathLike, card: str | None = None) -> Path:
        """Save atomically to the folder ``path`` (a crash leaves the previous folder, or none, never a torn one).

        ``path`` must not exist, be empty, or be a cache folder (only ``cache.arrow``, ``cache_info.json`` and
        ``README.md``); anything else (a training ``output_dir``, a file) raises :class:`UnsafeOverwriteError` and
        nothing is touched. ``card``: a dataset card written as ``README.md``. Temporaries of killed saves of the
        same ``path`` are removed first (:func:`remove_leftovers`).
        """
        given, path = Path(path), Path(os.path.abspath(path))
        _check_save_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        tmp = path.with_name(f".{path.name}.tmp-{_writer_tag()}")
        tmp.mkdir()
        try:
            table = _arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
            _write_stream(table, tmp / CACHE_FILE)
            info = {**self.info(), "sha256": _sha256(tmp / CACHE_FILE)}
            files = {INFO_FILE: json.dumps(info, indent=2)}
            if card is not None:
                files[CARD_FILE] = card
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
                with open(tmp / name, "rb+") as fh:
                    os.fsync(fh.fileno())
            _check_save_target(path)  # again, just before the swap: the folder may have gained files meanwhile
            _install_dir(tmp, path)
        except BaseException:
            if tmp.exists():
                _remove_cache_dir(tmp)
            raise
        return given

    @classmethod
    def load(cls, path: str | os.PathLike, verify: str = "checksum", rows: tuple[int, int] | None = None,
             **hub_kwargs) -> StaleCache:
        """Load a saved cache folder (memory-mapped, zero-copy), or a Hub dataset repo id.

        ``rows=(start, stop)`` loads only those rows (a process's shard, see :mod:`hf_corrector.cache.sharding`):
        only their ids are read and only their pages are ever touched, so memory is that of the slice
        (:meth:`slice_rows`). The checksum, when verified, still covers the whole file.

        ``cache_info.json`` (field types, format version, dtype name) and the Arrow schema (columns, vector length,
        value type, row count) are always checked, which costs nothing; a mismatch raises
        :class:`CacheCorruptError` naming the file and field. ``verify``: ``"checksum"`` (also SHA-256 and no
        NaN/inf; reads the whole file), ``"rows"`` (zero-copy and instant: pages are read when first touched) or
        ``"none"`` (the same as ``"rows"``; kept for compatibility). Any other value raises :class:`ConfigError`.
        Temporaries of killed saves of the same folder are removed (:func:`remove_leftovers`). A path that looks local
        (see :func:`hf_corrector.models.hub_files.looks_local`, e.g. ``"out/stale_cache"`` while ``out/`` exists) and
        does not exist raises ``FileNotFoundError("no such folder: ...")`` at once, without a Hub lookup.
        """
        if verify not in VERIFY_MODES:
            raise ConfigError(f"StaleCache.load: verify={verify!r} is not one of {list(VERIFY_MODES)} ('checksum': "
                              f"SHA-256, row count and no NaN/inf; 'rows' / 'none': row count and schema only)")
        from ..models.hub_files import check_local_folder, looks_local

        path_obj = Path(path).expanduser()
        if not path_obj.exists():
            if looks_local(path):  # "out/stale_cache" with out/ present, "./c", "/abs/c", "a/b/c", a Path
                check_local_folder(path, "stale cache")  # FileNotFoundError("no such folder: ..."), no Hub lookup
            cache = cls.from_hub(str(path), verify=verify, **hub_kwargs)
            return cache if rows is None else cache.slice_rows(*rows)
        from .sharded_store import is_sharded, load_sharded

        if is_sharded(path_obj):  # one shard per process plus a manifest (sharded_store.py)
            return load_sharded(path_obj, verify=verify, rows=rows)
        remove_leftovers(path_obj)
        info_file, data_file = path_obj / INFO_FILE, path_obj / CACHE_FILE
        if not info_file.is_file() or not data_file.is_file():
            raise CacheCorruptError(f"{path_obj} is not a complete cache folder (needs {CACHE_FILE} and {INFO_FILE})")
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # ValueError covers JSONDecodeError and UnicodeDecodeError
            raise CacheCorruptError(f"{info_file}: not valid JSON ({err}); {_DAMAGED}") from None
        info = validate_info(info, str(info_file), checksum=verify == "checksum")
        if verify == "checksum" and _sha256(data_file) != info["sha256"]:
            raise CacheCorruptError(f"{data_file}: checksum does not match {info_file}; {_DAMAGED}")
        try:  # memory-mapped: the same zero-copy read that datasets.Dataset.from_file does, without its hashing
            with pa.memory_map(str(data_file), "r") as source:
                table = pa.ipc.open_stream(source).read_all()
            table.validate(full=True)  # offsets and UTF-8 of the ids; the float values are not touched
        except (pa.ArrowException, OSError, ValueError) as err:
            raise CacheCorruptError(f"{data_file}: cannot be read as Arrow ({err}); {_DAMAGED}") from None
        _validate_table(table, info, str(data_file), str(info_file))
        if rows is not None:
            start, stop = _check_row_range(rows, table.num_rows)
            table = table.slice(start, stop - start)  # zero-copy; ids and steps of the slice only
            cache = cls._from_arrow(table, {**info, "num_rows": stop - start}, check=verify == "checksum",
                                    source=f"{path_obj} (rows {start}:{stop})")
            cache.row_offset, cache.total_rows = start, int(info["num_rows"])
            return cache
        return cls._from_arrow(table, info, check=verify == "checksum", source=str(path_obj))

    @classmethod
    def _from_arrow(cls, data: datasets.Dataset | pa.Table, info: dict, check: bool = True,
                    source: str | None = None) -> StaleCache:
        """A cache over a validated table (see :func:`validate_info` and :func:`_validate_table`)."""
        dtype = info["dtype"]
        if isinstance(data, datasets.Dataset):
            data = data.data.table if hasattr(data.data, "table") else data.data
        table = data
        column = table.column("embedding")
        d = int(info["embedding_dim"])
        # flatten() honours each chunk's offset and length (a view, no copy)
        chunks = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, d) for c in column.chunks]
        storage = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty((0, d))
        if storage.shape != (table.num_rows, d):
            raise CacheCorruptError(f"{source or 'cache'}: embedding values of shape {storage.shape}, expected "
                                    f"({table.num_rows}, {d}); {_DAMAGED}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only mapped buffer; we copy before writing
            tensor = torch.from_numpy(storage)
        if dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        cache = cls.__new__(cls)
        cache.dtype = dtype
        cache.doc_ids = table.column("doc_id").to_pylist()
        cache._storage = tensor
        cache._writable = len(chunks) != 1 or storage.flags.writeable
        cache.steps = torch.from_numpy(table.column("step").to_numpy().astype(np.int64))
        cache.provenance = dict(info.get("provenance", {}))
        cache.source = source
        cache._row_of = None
        if check:
            check_finite(tensor, "loaded cache embeddings")
        return cache

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload stale cache", card: str | CardRenderer | None = None) -> str:
        """Publish as a dataset repo: the Arrow table as parquet, ``cache_info.json`` and a dataset card.

        ``card``: the card's text, or a function ``(cache, repo_id, token) -> text`` called after the table is pushed.
        Default: the renderer ``hf_corrector.hub`` registers (:func:`register_card_renderer`).
        """
        from huggingface_hub import HfApi

        self.dataset.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)
        api = HfApi(token=token)
        api.upload_file(path_or_fileobj=json.dumps(self.info(), indent=2).encode(), path_in_repo=INFO_FILE,
                        repo_id=repo_id, repo_type="dataset", commit_message="Add cache provenance")
        card = _card_renderer if card is None else card
        if card is None:
            logger.warning("published %s without a dataset card: no card renderer is registered (import "
                           "hf_corrector.hub, or pass card=...)", repo_id)
            return repo_id
        text = card if isinstance(card, str) else card(self, repo_id, token)
        api.upload_file(path_or_fileobj=text.encode(), path_in_repo=CARD_FILE, repo_id=repo_id,
                        repo_type="dataset", commit_message="Add cache card")
        return repo_id

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None, token: str | None = None,
                 verify: str = "checksum") -> StaleCache:
        """Load a cache published with :meth:`push_to_hub` (``cache_info.json`` and the schema are validated;
        ``verify="checksum"`` also checks for NaN/inf)."""
        from huggingface_hub import hf_hub_download

        if verify not in VERIFY_MODES:
            raise ConfigError(f"StaleCache.from_hub: verify={verify!r} is not one of {list(VERIFY_MODES)}")
        where = f"{repo_id}/{INFO_FILE}"
        try:
            info = json.loads(Path(hf_hub_download(repo_id, INFO_FILE, repo_type="dataset", revision=revision,
                                                   token=token)).read_text(encoding="utf-8"))
        except ValueError as err:
            raise CacheCorruptError(f"{where}: not valid JSON ({err}); {_DAMAGED}") from None
        info = validate_info(info, where, checksum=False)  # parquet on the Hub is re-encoded: no byte checksum
        ds = datasets.load_dataset(repo_id, split="train", revision=revision, token=token)
        table = ds.data.table if hasattr(ds.data, "table") else ds.data
        _validate_table(table, info, f"{repo_id} (dataset rows)", where)
        return cls._from_arrow(table, info, check=verify == "checksum", source=repo_id)

    # -- checks -----------------------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"the stale cache at {self.source}" if getattr(self, "source", None) else "the stale cache"

    def check_corpus(self, doc_ids: Sequence[str]) -> None:
        """Raise :class:`CacheMismatchError` unless the cache rows are exactly ``doc_ids`` in order."""
        if len(doc_ids) != len(self):
            raise CacheMismatchError(f"cache has {len(self)} rows but the corpus has {len(doc_ids)} documents")
        for i, (a, b) in enumerate(zip(self.doc_ids, doc_ids)):
            if a != str(b):
                raise CacheMismatchError(f"cache row {i} is doc id {a!r} but corpus row {i} is {b!r}")

    def _check_encoding_settings(self, retriever: RetrieverModel) -> None:
        """Dimension, pooling and normalisation must agree (always; no cache of another kind can be corrected)."""
        prov = self.provenance
        if self.dim != retriever.embedding_dim:
            raise CacheMismatchError(f"cache dimension {self.dim} != retriever dimension {retriever.embedding_dim} "
                                     f"(cache encoder {prov.get('encoder')!r})")
        for key in ("pooling", "normalize"):
            mine, theirs = prov.get(key), retriever.provenance()[key]
            if mine is not None and mine != theirs:
                raise CacheMismatchError(f"cache was built with {key}={mine!r}, the retriever uses {key}={theirs!r}")

    def check_model(self, retriever: RetrieverModel, strict_encoder: bool = False) -> None:
        """Compare provenance with a retriever: dimension, pooling and normalisation must agree.

        With ``strict_encoder`` the encoder names must agree too (otherwise a different name only logs a warning,
        since fine-tuned checkpoints are expected to read a cache written by their base model). This does not compare
        weights; :meth:`check_provenance` does.
        """
        self._check_encoding_settings(retriever)
        prov = self.provenance
        if prov.get("encoder") and prov.get("encoder") != retriever.provenance()["encoder"]:
            msg = f"cache encoder {prov.get('encoder')!r} differs from retriever {retriever.provenance()['encoder']!r}"
            if strict_encoder:
                raise CacheMismatchError(msg)
            logger.warning(msg)

    def check_provenance(
        self,
        retriever: RetrieverModel | None = None,
        doc_ids: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
        allow_other_weights: bool = False,
        max_length: int | None = None,
    ) -> None:
        """Raise :class:`CacheMismatchError` unless this cache belongs to this corpus and this target encoder.

        * ``doc_ids``: the rows must be exactly these ids, in order (:meth:`check_corpus`).
        * ``texts``: the corpus texts in row order must be the ones the cache was built over. Never allowed to differ.
        * ``retriever``: dimension, pooling and normalisation must agree (never allowed to differ); the target
          tower's weights, the target max length (``max_length``, default the retriever's ``target_max_length``)
          and the target prefix must be the ones that built the cache, and no row may have been rewritten during
          training (``steps``), unless ``allow_other_weights=True`` says on purpose that this is the stale cache to
          correct (then the differences are logged). On resume from a checkpoint, whose cache was written by
          earlier weights by design, check without ``retriever`` (ids and texts only).

        A cache saved without fingerprints (before hf_corrector recorded them) cannot be verified: a warning is
        logged and only the checks its provenance allows are made.
        """
        if doc_ids is not None:
            self.check_corpus(doc_ids)
        if texts is not None:
            self._check_texts(texts)
        if retriever is not None:
            self._check_encoder(retriever, allow_other_weights, max_length)

    def _check_texts(self, texts: Sequence[str]) -> None:
        where = self._where()
        if len(texts) != len(self):
            raise CacheMismatchError(f"{where} has {len(self)} rows but {len(texts)} corpus texts were given")
        recorded = self.provenance.get(TEXTS_KEY)
        if not (isinstance(recorded, str) and recorded.startswith(f"{SCHEME}:")):
            logger.warning("%s records no fingerprint of its corpus texts (saved by an older hf_corrector): cannot "
                           "verify that it was built over these texts; rebuild it with StaleCache.build to record "
                           "one", where)
            return
        actual = fingerprint_texts(texts)
        if actual != recorded:
            raise CacheMismatchError(
                f"{where} was built over other corpus texts: the texts of its {len(self)} rows differ from the corpus "
                f"given (texts fingerprint: cache {short(recorded)}, corpus {short(actual)}). A cache of other texts "
                f"is never used, not even as the stale cache to correct: rebuild it with "
                f"StaleCache.build(corpus, retriever), or pass no cache and let the trainer build one")

    def _check_encoder(self, retriever: RetrieverModel, allow_other_weights: bool, max_length: int | None) -> None:
        where = self._where()
        self._check_encoding_settings(retriever)
        prov = self.provenance
        differences = []
        recorded = prov.get(WEIGHTS_KEY)
        verifiable = isinstance(recorded, str) and recorded.startswith(f"{SCHEME}:")
        if verifiable:
            actual = fingerprint_retriever(retriever)
            if actual != recorded:
                differences.append(f"target weights {short(recorded)} (cache, encoder {prov.get('encoder')!r}) vs "
                                   f"{short(actual)} (retriever, encoder {retriever.provenance()['encoder']!r})")
        rewritten = self.steps != INITIAL_STEP
        if bool(rewritten.any()):  # write-back / refresh: those rows come from later weights than the recorded ones
            written = self.steps[rewritten]
            differences.append(f"{int(rewritten.sum())} of {len(self)} rows were rewritten during training (steps "
                               f"{int(written.min())}..{int(written.max())}) by later weights")
        length = max_length or retriever.config.target_max_length
        if prov.get("target_max_length") is not None and length is not None and prov["target_max_length"] != length:
            differences.append(f"target max length {prov['target_max_length']} (cache) vs {length} (retriever)")
        if "target_prefix" in prov and prov["target_prefix"] != retriever.config.target_prefix:
            differences.append(f"target prefix {prov['target_prefix']!r} (cache) vs "
                               f"{retriever.config.target_prefix!r} (retriever)")
        if not verifiable:
            logger.warning("%s records no fingerprint of the weights that encoded it (saved by an older "
                           "hf_corrector): cannot verify that it belongs to this retriever (cache encoder %r, "
                           "retriever %r); rebuild it with StaleCache.build to record one", where,
                           prov.get("encoder"), retriever.provenance()["encoder"])
        if not differences:
            return
        if allow_other_weights:
            logger.info("%s was encoded differently from this retriever, used on purpose as the stale cache to "
                        "correct: %s", where, "; ".join(differences))
            return
        raise CacheMismatchError(
            f"{where} was encoded by another target encoder than this retriever's: {'; '.join(differences)}. If "
            f"this is on purpose (it is the stale cache the corrector should learn to correct), say so with "
            f"check_provenance(..., allow_other_weights=True) (the trainer's cache_from_other_weights=True); "
            f"otherwise rebuild the cache with StaleCache.build(corpus, retriever)")


def _check_row_range(rows: Sequence[int], num_rows: int) -> tuple[int, int]:
    try:
        start, stop = (int(r) for r in rows)
    except (TypeError, ValueError):
        raise ConfigError(f"rows must be a (start, stop) pair of integers, got {rows!r}") from None
    if not 0 <= start <= stop <= num_rows:
        raise ConfigError(f"rows ({start}, {stop}) are outside the cache's {num_rows} rows")
    return start, stop


def _load_shard(shard_file: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        part = np.load(shard_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CacheCorruptError(f"{shard_file}: cannot be read as a shard ({err}); delete it and build again "
                                f"(only the missing shards are encoded)") from None
    if part.shape != shape or part.dtype != np.float32:
        raise CacheCorruptError(f"{shard_file}: shape {part.shape} {part.dtype}, expected {shape} float32; delete it "
                                f"and build again (only the missing shards are encoded)")
    return part


def _claim_shard_dir(shard_dir: Path, build_info: dict) -> None:
    """Record ``build_info`` in a new shard folder, or check that the shards already there belong to this build."""
    info_file = shard_dir / BUILD_INFO_FILE
    fix = (f"Shards are reused only by the same corpus, weights and settings: delete {shard_dir} or pass a new "
           f"shard_dir")
    if not info_file.exists():
        orphans = sorted(p.name for p in shard_dir.glob("shard-*.npy"))
        if orphans:
            raise CacheMismatchError(f"{shard_dir} holds {len(orphans)} shard file(s) ({_names(orphans)}) but no "
                                     f"{BUILD_INFO_FILE}, so nothing tells which weights and corpus wrote them. {fix}")
        tmp = shard_dir / f".{BUILD_INFO_FILE}.tmp-{_writer_tag()}"
        tmp.write_text(json.dumps(build_info, indent=2))
        os.rename(tmp, info_file)
        return
    try:
        previous = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{info_file}: not valid JSON ({err}). {fix}") from None
    if previous == build_info:
        return
    old = previous.get("provenance", {}) if isinstance(previous, dict) else {}
    new = build_info["provenance"]
    if not isinstance(old, dict) or WEIGHTS_KEY not in old:
        reason = "were written by an older hf_corrector that recorded no weight or text fingerprints"
    elif old.get(TEXTS_KEY) != new[TEXTS_KEY] or old.get("doc_ids_fingerprint") != new["doc_ids_fingerprint"]:
        what = "corpus texts" if old.get("doc_ids_fingerprint") == new["doc_ids_fingerprint"] else "corpus (doc ids)"
        reason = (f"were encoded over another {what} (texts {short(old.get(TEXTS_KEY))}, ids "
                  f"{short(old.get('doc_ids_fingerprint'))}; this corpus: texts {short(new[TEXTS_KEY])}, ids "
                  f"{short(new['doc_ids_fingerprint'])})")
    elif old.get(WEIGHTS_KEY) != new[WEIGHTS_KEY]:
        reason = (f"were encoded by other weights ({short(old.get(WEIGHTS_KEY))}) than this retriever's target tower "
                  f"({short(new[WEIGHTS_KEY])})")
    else:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changed += [k for k in ("num_rows", "shard_size", "format_version") if previous.get(k) != build_info.get(k)]
        reason = "were written with other settings (" + ", ".join(
            f"{k}: {_preview(old.get(k, previous.get(k)), 40)} -> {_preview(new.get(k, build_info.get(k)), 40)}"
            for k in changed) + ")"
    raise CacheMismatchError(f"the shards in {shard_dir} {reason}. {fix}")


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`CacheMismatchError` naming the first non-finite row of ``tensor``."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(-1, 1)
    for start in range(0, rows.shape[0], 65536):  # chunked: no (N, d) boolean temporary
        chunk = rows[start : start + 65536]
        if bool(torch.isfinite(chunk.float().sum())):  # fast path: NaN and inf propagate through the sum
            continue
        bad = ~torch.isfinite(chunk).all(dim=1)
        if bad.any():
            row = start + int(bad.nonzero()[0])
            raise CacheMismatchError(f"{what}: NaN or inf in row {row}")
