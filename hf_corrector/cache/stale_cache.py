"""The stale cache: target embeddings g'(y) written by an older encoder, kept in a ``datasets`` Arrow column.

Columns: ``doc_id`` (string), ``embedding`` (fixed-length list of the storage dtype, length d) and ``step`` (the
training step whose encoder wrote the row; :data:`INITIAL_STEP` marks the initial encoding).

Storage and views
    On disk a cache is one Arrow IPC stream file written as a single record batch (``cache.arrow``) plus
    ``cache_info.json`` (provenance, row count, dimension, dtype, SHA-256). Loading memory-maps the file and
    :meth:`StaleCache.matrix` returns an (N, d) tensor that *views* the Arrow buffer: no copy, no load time. The
    first write-back makes one private, writable copy (copy-on-write); later write-backs only touch their rows. A
    ``datasets.Dataset`` snapshot (:attr:`StaleCache.dataset`) is built zero-copy on demand for saving and the Hub.

Crash safety
    :meth:`save` writes into a temporary sibling folder, fsyncs, and renames it into place; :meth:`load` verifies
    the row count (and, by default, the checksum). :meth:`build` can write shards as they complete and resumes from
    them after a crash.

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
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ..errors import CacheCorruptError, CacheMismatchError, ConfigError

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)

INITIAL_STEP = -1
CACHE_FILE = "cache.arrow"
INFO_FILE = "cache_info.json"
FORMAT_VERSION = 1
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
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
    ) -> StaleCache:
        """Encode every corpus row (columns ``doc_id``, ``text``) with ``retriever``'s target tower.

        With ``shard_dir`` each finished shard of ``shard_size`` rows is written there atomically; a build that was
        killed resumes from the shards already written. The shards belong to this corpus and encoder (recorded in
        ``shard_dir/build_info.json``; a mismatch raises instead of mixing encoders).
        """
        if len(corpus) == 0:
            raise CacheMismatchError("cannot build a cache for an empty corpus")
        doc_ids = list(corpus["doc_id"])
        texts = list(corpus["text"])
        provenance = {**retriever.provenance(), "dtype": dtype}
        if shard_dir is None:
            emb = retriever.encode_targets(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, device=device)
            return cls(doc_ids, emb, provenance=provenance, dtype=dtype)
        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        build_info = {"provenance": provenance, "num_rows": len(doc_ids), "shard_size": shard_size,
                      "ids_sha256": hashlib.sha256("\n".join(doc_ids).encode()).hexdigest()}
        info_file = shard_dir / "build_info.json"
        if info_file.exists():
            previous = json.loads(info_file.read_text())
            if previous != json.loads(json.dumps(build_info)):
                raise CacheMismatchError(f"{shard_dir} holds shards of another build ({previous}); use a new folder")
        else:
            info_file.write_text(json.dumps(build_info, indent=2))
        parts = []
        starts = range(0, len(doc_ids), shard_size)
        done = 0
        for k, start in enumerate(tqdm(starts, desc="build cache (shards)", disable=not show_progress_bar)):
            shard_file = shard_dir / f"shard-{k:05d}.npy"
            stop = min(start + shard_size, len(doc_ids))
            if shard_file.exists():
                part = torch.from_numpy(np.load(shard_file))
                if part.shape[0] != stop - start:
                    raise CacheCorruptError(f"{shard_file}: {part.shape[0]} rows, expected {stop - start}")
                done += 1
            else:
                part = retriever.encode_targets(texts[start:stop], batch_size=batch_size, show_progress_bar=False,
                                                device=device)
                tmp = shard_file.with_name(f".{shard_file.name}.tmp-{uuid.uuid4().hex[:8]}.npy")
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

    def save(self, path: str | os.PathLike) -> Path:
        """Save atomically to the folder ``path`` (a crash leaves the previous folder, or none, never a torn one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            table = _arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
            _write_stream(table, tmp / CACHE_FILE)
            info = {**self.info(), "sha256": _sha256(tmp / CACHE_FILE)}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
            with open(tmp / INFO_FILE, "rb+") as fh:
                os.fsync(fh.fileno())
            atomic_replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, verify: str = "checksum", **hub_kwargs) -> StaleCache:
        """Load a saved cache folder (memory-mapped, zero-copy), or a Hub dataset repo id.

        ``verify``: ``"checksum"`` (row count, SHA-256 and no NaN/inf; reads the whole file), ``"rows"`` (row count
        only: zero-copy and instant, pages are read when first touched) or ``"none"``.
        """
        path_obj = Path(path)
        if not path_obj.exists():
            text = str(path)
            if isinstance(path, os.PathLike) or path_obj.is_absolute() or text.startswith(".") or text.count("/") > 1:
                raise CacheCorruptError(f"no saved cache at {path_obj} (the folder does not exist)")
            return cls.from_hub(text, **hub_kwargs)
        info_file, data_file = path_obj / INFO_FILE, path_obj / CACHE_FILE
        if not info_file.is_file() or not data_file.is_file():
            raise CacheCorruptError(f"{path_obj} is not a complete cache folder (needs {CACHE_FILE} and {INFO_FILE})")
        try:
            info = json.loads(info_file.read_text())
        except json.JSONDecodeError as err:
            raise CacheCorruptError(f"{info_file}: not valid JSON ({err})") from None
        if verify == "checksum" and _sha256(data_file) != info.get("sha256"):
            raise CacheCorruptError(f"{data_file}: checksum does not match {info_file}")
        try:  # memory-mapped: the same zero-copy read that datasets.Dataset.from_file does, without its hashing
            with pa.memory_map(str(data_file), "r") as source:
                table = pa.ipc.open_stream(source).read_all()
        except (pa.ArrowInvalid, OSError, ValueError) as err:
            raise CacheCorruptError(f"{data_file}: cannot be read as Arrow ({err})") from None
        if verify != "none" and table.num_rows != info.get("num_rows"):
            raise CacheCorruptError(f"{data_file}: {table.num_rows} rows, {info_file} says {info.get('num_rows')}")
        return cls._from_arrow(table, info, check=verify == "checksum")

    @classmethod
    def _from_arrow(cls, data: datasets.Dataset | pa.Table, info: dict, check: bool = True) -> StaleCache:
        dtype = info.get("dtype", "float32")
        if isinstance(data, datasets.Dataset):
            data = data.data.table if hasattr(data.data, "table") else data.data
        table = data
        column = table.column("embedding")
        d = int(info.get("embedding_dim") or column.type.list_size)
        chunks = [c.values.to_numpy(zero_copy_only=False).reshape(-1, d) for c in column.chunks]
        storage = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty((0, d))
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
        cache._row_of = None
        if check:
            check_finite(tensor, "loaded cache embeddings")
        return cache

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload stale cache") -> str:
        """Publish as a dataset repo: the Arrow table as parquet, ``cache_info.json`` and a dataset card."""
        from huggingface_hub import HfApi

        from ..hub.cards import render_cache_card

        self.dataset.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)
        api = HfApi(token=token)
        api.upload_file(path_or_fileobj=json.dumps(self.info(), indent=2).encode(), path_in_repo=INFO_FILE,
                        repo_id=repo_id, repo_type="dataset", commit_message="Add cache provenance")
        card = render_cache_card(self, repo_id)
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset", commit_message="Add cache card")
        return repo_id

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None, token: str | None = None) -> StaleCache:
        """Load a cache published with :meth:`push_to_hub`."""
        from huggingface_hub import hf_hub_download

        info = json.loads(Path(hf_hub_download(repo_id, INFO_FILE, repo_type="dataset", revision=revision,
                                               token=token)).read_text())
        ds = datasets.load_dataset(repo_id, split="train", revision=revision, token=token)
        if len(ds) != info["num_rows"]:
            raise CacheCorruptError(f"{repo_id}: {len(ds)} rows, cache_info.json says {info['num_rows']}")
        return cls._from_arrow(ds, info)

    # -- checks -----------------------------------------------------------------------------------------------------
    def check_corpus(self, doc_ids: Sequence[str]) -> None:
        """Raise :class:`CacheMismatchError` unless the cache rows are exactly ``doc_ids`` in order."""
        if len(doc_ids) != len(self):
            raise CacheMismatchError(f"cache has {len(self)} rows but the corpus has {len(doc_ids)} documents")
        for i, (a, b) in enumerate(zip(self.doc_ids, doc_ids)):
            if a != str(b):
                raise CacheMismatchError(f"cache row {i} is doc id {a!r} but corpus row {i} is {b!r}")

    def check_model(self, retriever: RetrieverModel, strict_encoder: bool = False) -> None:
        """Compare provenance with a retriever: dimension, pooling and normalisation must agree.

        With ``strict_encoder`` the encoder names must agree too (otherwise a different name only logs a warning,
        since fine-tuned checkpoints are expected to read a cache written by their base model).
        """
        prov = self.provenance
        if self.dim != retriever.embedding_dim:
            raise CacheMismatchError(f"cache dimension {self.dim} != retriever dimension {retriever.embedding_dim} "
                                     f"(cache encoder {prov.get('encoder')!r})")
        for key in ("pooling", "normalize"):
            mine, theirs = prov.get(key), retriever.provenance()[key]
            if mine is not None and mine != theirs:
                raise CacheMismatchError(f"cache was built with {key}={mine!r}, the retriever uses {key}={theirs!r}")
        if prov.get("encoder") and prov.get("encoder") != retriever.provenance()["encoder"]:
            msg = f"cache encoder {prov.get('encoder')!r} differs from retriever {retriever.provenance()['encoder']!r}"
            if strict_encoder:
                raise CacheMismatchError(msg)
            logger.warning(msg)


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
