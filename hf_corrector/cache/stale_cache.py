"""The stale cache: target embeddings g'(y) written by an older encoder, kept in a ``datasets`` Arrow column.

This module holds the tensor store (rows, step markers, write-backs, views); the rest of the cache package has one
job per module: :mod:`~hf_corrector.cache.schema` (what a saved cache is made of, and its checks),
:mod:`~hf_corrector.cache.folder` (a cache folder on disk), :mod:`~hf_corrector.cache.build` (encoding a corpus,
resumable), :mod:`~hf_corrector.cache.provenance_checks` (does a cache belong to this corpus and encoder),
:mod:`~hf_corrector.cache.hub_io` (a dataset repo in one commit) and :mod:`~hf_corrector.cache.sharded_store`
(one shard per process). Crash-safe writes are :mod:`hf_corrector.atomic_io`.

Storage and views
    On disk a cache is one Arrow IPC stream file written as a single record batch (``cache.arrow``) plus
    ``cache_info.json`` (provenance, row count, dimension, dtype, SHA-256). Loading memory-maps the file and
    :meth:`StaleCache.matrix` returns an (N, d) tensor that *views* the Arrow buffer: no copy, no load time. The
    first write-back makes one private, writable copy (copy-on-write); later write-backs only touch their rows. A
    ``datasets.Dataset`` snapshot (:attr:`StaleCache.dataset`) is built zero-copy on demand for saving and the Hub.

Crash safety and no data loss
    :meth:`save` writes into a hidden sibling folder and swaps it into place; it never removes what a cache save did
    not write (:class:`UnsafeOverwriteError`), and temporaries of killed saves are removed once their writer is gone
    (:func:`remove_leftovers`). :meth:`load` validates ``cache_info.json`` and the Arrow schema
    (:class:`CacheCorruptError` names the file and field) and, by default, the checksum. :meth:`build` can write
    shards as they complete and resumes from them after a crash.

Provenance
    :meth:`build` records fingerprints of the target tower's weights and of the corpus (ids and texts, see
    :mod:`hf_corrector.cache.provenance`); :meth:`check_provenance` refuses a cache of other texts, and one of other
    weights unless that is said on purpose (``allow_other_weights=True``: the stale cache a corrector corrects).

Example:
    >>> cache = StaleCache.build(corpus, retriever)  # doctest: +SKIP
    >>> cache.matrix().shape  # doctest: +SKIP
    torch.Size([5183, 384])
    >>> cache.save("scifact-cache"); StaleCache.load("scifact-cache")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..errors import CacheCorruptError, CacheMismatchError
from .build import encode_corpus
from .card import render_cache_card
from .folder import read_folder, remove_leftovers, write_folder
from .hub_io import push_tables, read_hub
from .ids import normalize_ids
from .input_checks import check_provenance_dim, check_real, check_steps, check_update_rows
from .provenance_checks import ProvenanceChecks
from .schema import (DAMAGED, FORMAT_VERSION, INITIAL_STEP, STORAGE_DTYPES, arrow_table, check_dtype, check_row_range,
                     check_verify)

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)

CardRenderer = Callable[["StaleCache", str, Union[str, None]], str]


class StaleCache(ProvenanceChecks):
    """Cached target embeddings g'(y) for a corpus, with provenance.

    Args:
        doc_ids: one id per row, in corpus order.
        embeddings: an (N, d) tensor or array (any float dtype; stored in ``dtype``). A tensor already in the storage
            dtype on the CPU is kept as it is (no copy); a read-only array (a memory-mapped file) is viewed, and the
            first write-back copies it.
        steps: per-row step markers (default: all :data:`INITIAL_STEP`).
        provenance: encoder name, dimension, pooling, normalisation (see :meth:`RetrieverModel.provenance`).
        dtype: storage dtype, ``float32`` (default), ``float16`` or ``bfloat16`` (an array of raw ``uint16`` bits is
            read as ``bfloat16``).
        source: the folder or repo id it was loaded from (for messages).
        row_offset / total_rows: where these rows sit in a larger cache (a process's shard); default: the whole.
        check_values: refuse NaN / inf rows (default); ``False`` keeps a memory-mapped load instant.
    """

    def __init__(
        self,
        doc_ids: Sequence[str],
        embeddings: torch.Tensor | np.ndarray,
        steps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        provenance: dict | None = None,
        dtype: str = "float32",
        *,
        source: str | None = None,
        row_offset: int = 0,
        total_rows: int | None = None,
        check_values: bool = True,
    ):
        check_dtype(dtype)
        where = f"StaleCache({source})" if source else "StaleCache"
        ids = normalize_ids(doc_ids, where)  # as the data loaders do; distinct; a plain string refused
        emb, read_only = _as_tensor(embeddings, dtype)
        check_real(emb, where)
        if emb.ndim != 2:
            raise CacheMismatchError(f"cache embeddings must be 2-D (N, d), got shape {tuple(emb.shape)}")
        if len(ids) != emb.shape[0]:
            raise CacheMismatchError(f"{len(ids)} doc ids but {emb.shape[0]} embedding rows")
        check_provenance_dim(provenance, int(emb.shape[1]), where)
        self.dtype = dtype
        self.doc_ids = ids
        storage = emb.detach().to("cpu", STORAGE_DTYPES[dtype][0]).contiguous()
        self._writable = not (read_only and storage.data_ptr() == emb.data_ptr())  # still the read-only buffer
        self._storage = storage
        self.steps = torch.full((len(self.doc_ids),), INITIAL_STEP, dtype=torch.long) if steps is None else (
            check_steps(steps, len(ids), where)
        )
        self.provenance = dict(provenance or {})
        self.provenance.setdefault("embedding_dim", int(emb.shape[1]))
        self._row_of: dict[str, int] | None = None
        self.source = source
        self.row_offset = int(row_offset)
        self.total_rows = len(self.doc_ids) if total_rows is None else int(total_rows)
        if check_values:
            check_finite(self._storage, "cache embeddings" if source is None else "loaded cache embeddings")

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
        start, stop = check_row_range((start, stop), len(self))
        view = self._storage[start:stop]
        part = StaleCache(self.doc_ids[start:stop], view if not self._writable else view.clone(),
                          steps=self.steps[start:stop], provenance=self.provenance, dtype=self.dtype,
                          source=f"{self.source} (rows {start}:{stop})" if self.source else None,
                          row_offset=self.row_offset + start, total_rows=self.total_rows, check_values=False)
        part._writable = self._writable
        return part

    # -- building ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: datasets.Dataset, retriever: RetrieverModel, batch_size: int = 64, dtype: str = "float32",
              shard_dir: str | os.PathLike | None = None, shard_size: int = 4096, show_progress_bar: bool = True,
              device: str | torch.device | None = None, max_length: int | None = None) -> StaleCache:
        """Encode every corpus row (columns ``doc_id``, ``text``) with ``retriever``'s target tower.

        Targets are truncated to ``max_length`` tokens (default: the retriever's ``target_max_length``). The
        provenance records the encoder settings and fingerprints of the target weights and of the corpus ids and
        texts (see :meth:`check_provenance`). With ``shard_dir`` each finished shard of ``shard_size`` rows is
        written there atomically and a killed build resumes from them; shards of other weights, texts or settings
        raise :class:`CacheMismatchError` instead of being mixed in (:mod:`hf_corrector.cache.build`).
        """
        doc_ids, embeddings, provenance = encode_corpus(
            corpus, retriever, batch_size=batch_size, dtype=dtype, shard_dir=shard_dir, shard_size=shard_size,
            show_progress_bar=show_progress_bar, device=device, max_length=max_length)
        return cls(doc_ids, embeddings, provenance=provenance, dtype=dtype)

    # -- writing back -----------------------------------------------------------------------------------------------
    def update(self, rows: torch.Tensor | Sequence[int], embeddings: torch.Tensor, step: int) -> None:
        """Write fresh embeddings for ``rows`` and mark them with ``step``. Touches only those rows."""
        rows = check_update_rows(rows, len(self))  # integers in range, each once
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
        table = arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
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
        table = arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
        write_folder(path, table, self.info(), card)
        return Path(path)

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
        check_verify(verify, "StaleCache.load")
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
        table, info = read_folder(path_obj, verify)
        if rows is None:
            return cls._from_arrow(table, info, check=verify == "checksum", source=str(path_obj))
        start, stop = check_row_range(rows, table.num_rows)
        table = table.slice(start, stop - start)  # zero-copy; ids and steps of the slice only
        return cls._from_arrow(table, {**info, "num_rows": stop - start}, check=verify == "checksum",
                               source=f"{path_obj} (rows {start}:{stop})", row_offset=start,
                               total_rows=int(info["num_rows"]))

    @classmethod
    def _from_arrow(cls, table: pa.Table, info: dict, check: bool = True, source: str | None = None,
                    **placement: int) -> StaleCache:
        """A cache over a validated table (see :func:`~hf_corrector.cache.schema.validate_info` and
        :func:`~hf_corrector.cache.schema.validate_table`); zero-copy over a memory-mapped single-chunk column."""
        column = table.column("embedding")
        d = int(info["embedding_dim"])
        # flatten() honours each chunk's offset and length (a view, no copy)
        chunks = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, d) for c in column.chunks]
        storage = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty((0, d))
        if storage.shape != (table.num_rows, d):
            raise CacheCorruptError(f"{source or 'cache'}: embedding values of shape {storage.shape}, expected "
                                    f"({table.num_rows}, {d}); {DAMAGED}")
        return cls(table.column("doc_id").to_pylist(), storage, steps=table.column("step").to_numpy(),
                   provenance=info.get("provenance", {}), dtype=info["dtype"], source=source, check_values=check,
                   **placement)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload stale cache", card: str | CardRenderer | None = None) -> str:
        """Publish as a dataset repo in one commit: the rows as parquet, ``cache_info.json`` and a dataset card.

        ``card``: the card's text, or a function ``(cache, repo_id, token) -> text``. Default: the card of
        :func:`hf_corrector.cache.card.render_cache_card` (provenance, rows, step statistics, how to load it).
        """
        if card is None:
            text = render_cache_card(self, repo_id, token, keep_existing_metadata=False)
        else:
            text = card if isinstance(card, str) else card(self, repo_id, token)
        table = arrow_table(self.doc_ids, self._storage_numpy(), self.steps.numpy(), self.dtype)
        return push_tables(repo_id, [table], self.info(), text, private=private, token=token,
                           layout_metadata=not isinstance(card, str), commit_message=commit_message)

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None, token: str | None = None,
                 verify: str = "checksum") -> StaleCache:
        """Load a cache published with :meth:`push_to_hub` (``cache_info.json`` and the schema are validated;
        ``verify="checksum"`` also checks for NaN/inf)."""
        check_verify(verify, "StaleCache.from_hub")
        table, info = read_hub(repo_id, revision=revision, token=token)
        return cls._from_arrow(table, info, check=verify == "checksum", source=repo_id)


def _as_tensor(embeddings: torch.Tensor | np.ndarray, dtype: str) -> tuple[torch.Tensor, bool]:
    """``embeddings`` as a tensor sharing its memory, and whether that memory is read-only (a mapped file)."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings, False
    array = np.asarray(embeddings)
    read_only = not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only mapped buffer; copied before any write
        tensor = torch.from_numpy(array)
    if dtype == "bfloat16" and tensor.dtype == torch.uint16:  # Arrow has no bfloat16: raw bits
        tensor = tensor.view(torch.bfloat16)
    return tensor, read_only


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


__all__ = ["INITIAL_STEP", "FORMAT_VERSION", "StaleCache", "check_finite", "remove_leftovers"]
