"""The initial cache build of one process: encode only its rows ``start:stop`` of the corpus (issue 21).

With ``cache_sharding="sharded"`` over W processes each process builds the ~N/W rows it owns, so no process encodes or
holds the whole cache: :func:`build_rows` returns a :class:`StaleCache` of those rows (``row_offset`` /
``total_rows`` set, the provenance that of the whole cache: weights, corpus ids and texts fingerprints), filled chunk
by chunk into a matrix of the storage dtype (no float32 copy of the whole part).

With ``shard_dir`` (the trainer's ``cache_build_dir``) each finished chunk is written there atomically, as
:meth:`StaleCache.build` does, so a killed build resumes from the chunks already written, also with another number
of processes: chunks follow one global grid of ``shard_size`` rows; a whole grid chunk is ``shard-KKKKK.npy`` (the
name :meth:`StaleCache.build` uses, so one-process and per-process builds reuse each other's chunks), the piece of a
grid chunk cut by a process boundary is ``shard-KKKKK-rows-A-B.npy``. The folder's ``build_info.json`` ties the
chunks to this corpus, these weights and settings.

Example:
    >>> part = build_rows(corpus, retriever, rows=(0, 500_000), dtype="float16")  # doctest: +SKIP
    >>> part.row_offset, len(part), part.total_rows  # doctest: +SKIP
    (0, 500000, 1000000)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CacheMismatchError, ConfigError
from .provenance import WEIGHTS_KEY, fingerprint_corpus, fingerprint_retriever
from .stale_cache import (FORMAT_VERSION, STORAGE_DTYPES, StaleCache, _claim_shard_dir, _load_shard,
                          _remove_leftover_shards, _writer_tag)

logger = logging.getLogger(__name__)


def chunk_file(shard_dir: Path, start: int, stop: int, shard_size: int, num_rows: int) -> Path:
    """The file of rows ``start:stop`` (inside one grid chunk of ``shard_size`` rows)."""
    k = start // shard_size
    whole = start == k * shard_size and stop == min((k + 1) * shard_size, num_rows)
    return shard_dir / (f"shard-{k:05d}.npy" if whole else f"shard-{k:05d}-rows-{start}-{stop}.npy")


def chunks(start: int, stop: int, shard_size: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` cut at the global grid of ``shard_size`` rows."""
    cuts = [start] + list(range((start // shard_size + 1) * shard_size, stop, shard_size)) + [stop]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]


def build_rows(corpus: Any, retriever: Any, rows: tuple[int, int] | None = None, batch_size: int = 64,
               dtype: str = "float32", shard_dir: str | os.PathLike | None = None, shard_size: int = 4096,
               show_progress_bar: bool = True, device: str | torch.device | None = None,
               max_length: int | None = None, accelerator: Any = None) -> StaleCache:
    """Encode corpus rows ``rows = (start, stop)`` (default: all) with ``retriever``'s target tower (see the module
    docstring). ``accelerator``: with ``shard_dir``, the main process claims the folder first (no race between the
    processes over ``build_info.json``)."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"unknown cache dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"build_rows: shard_size must be a positive integer, got {shard_size!r}")
    if len(corpus) == 0:
        raise CacheMismatchError("cannot build a cache for an empty corpus")
    doc_ids = [str(d) for d in corpus["doc_id"]]
    texts = list(corpus["text"])
    num_rows = len(doc_ids)
    start, stop = (0, num_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start <= stop <= num_rows:
        raise ConfigError(f"rows ({start}, {stop}) are outside the corpus's {num_rows} rows")
    length = int(max_length or retriever.config.target_max_length)
    provenance = {**retriever.provenance(), "target_max_length": length, "target_prefix": retriever.config.target_prefix,
                  "dtype": dtype, WEIGHTS_KEY: fingerprint_retriever(retriever), **fingerprint_corpus(doc_ids, texts)}
    folder = None
    if shard_dir is not None:
        folder = Path(shard_dir)
        folder.mkdir(parents=True, exist_ok=True)
        build_info = {"format_version": FORMAT_VERSION, "num_rows": num_rows, "shard_size": shard_size,
                      "provenance": {k: v for k, v in provenance.items() if k != "dtype"}}  # chunks are float32
        first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
        with first:
            _remove_leftover_shards(folder)
            _claim_shard_dir(folder, json.loads(json.dumps(build_info)))
    out = torch.empty(stop - start, retriever.embedding_dim, dtype=STORAGE_DTYPES[dtype][0])
    reused = 0
    pieces = chunks(start, stop, shard_size)
    for a, b in tqdm(pieces, desc=f"building the cache (rows {start}:{stop})", disable=not show_progress_bar):
        path = chunk_file(folder, a, b, shard_size, num_rows) if folder is not None else None
        if path is not None and path.exists():
            part = torch.from_numpy(_load_shard(path, (b - a, retriever.embedding_dim)))
            reused += 1
        else:
            part = retriever.encode_targets(texts[a:b], batch_size=batch_size, show_progress_bar=False, device=device,
                                            max_length=length, desc="building the cache")
            if path is not None:
                _write_chunk(path, part)
        out[a - start : b - start] = part
    if reused:
        logger.info("resumed cache build: %d of %d chunks of rows %d:%d were already written", reused, len(pieces),
                    start, stop)
    cache = StaleCache(doc_ids[start:stop], out, provenance=provenance, dtype=dtype)
    if rows is not None:
        cache.row_offset, cache.total_rows = start, num_rows
    return cache


def _write_chunk(path: Path, part: torch.Tensor) -> None:
    """``np.save`` into a temporary named by this writer, fsync, rename: a chunk file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{_writer_tag()}.npy")
    np.save(tmp, part.numpy())
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.rename(tmp, path)


__all__ = ["build_rows", "chunk_file", "chunks"]
