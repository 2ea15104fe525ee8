"""The narrow context a sampler works in: a row reader over the cache, the collectives and a few facts.

A sampler (and its score transform) never sees the trainer or the cache manager's internals. It gets a
:class:`SamplerContext` whose ``cache`` satisfies the small :class:`CacheReader` protocol:

* facts: ``len(cache)`` / ``num_rows`` (rows of the whole cache), ``dim``, ``sharded`` (the one definition: the
  rows are split over more than one process), ``local_rows`` (this process's ``(start, stop)``) and ``write_back``;
* reading: ``rows(index)`` (float32 rows by global number; a collective when sharded), ``read_chunk(start, stop)``
  and ``local(index)`` (this process's rows only, no collective), ``local_matrix()`` (this process's rows as one
  matrix, in the storage dtype);
* ``collectives`` (rank, world, gathers), ``encode_rows(rows, count_as, desc)`` (fresh, counted encodings) and
  ``add_listener(obj)`` (``on_cache_refreshed`` / ``on_targets`` events).

:class:`~hf_corrector.cache.manager.CacheManager` satisfies it, and ``CacheManager.reader()`` hands out a view
that exposes nothing else.

Example:
    >>> ctx = SamplerContext(manager.reader(), encode_queries, seed=0)  # doctest: +SKIP
    >>> ctx.cache.sharded, len(ctx.cache), ctx.cache.dim  # doctest: +SKIP
    (False, 5183, 384)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..cache.sharding import Collectives


@runtime_checkable
class CacheReader(Protocol):
    """What a sampler may read of the cache (see the module docstring)."""

    num_rows: int
    sharded: bool
    local_rows: tuple[int, int]
    write_back: bool
    collectives: Collectives

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def rows(self, index: torch.Tensor) -> torch.Tensor: ...

    def read_chunk(self, start: int, stop: int) -> torch.Tensor: ...

    @property
    def device(self) -> torch.device:
        """Where :meth:`read_chunk` rows live (``cache_device``)."""

    def local(self, index: torch.Tensor) -> torch.Tensor: ...

    def local_matrix(self) -> torch.Tensor: ...

    def encode_rows(self, rows: torch.Tensor | Sequence[int], count_as: str, desc: str = ...) -> torch.Tensor: ...

    def add_listener(self, listener: Any) -> None: ...


@dataclass
class TrainingExamples:
    """What a sampler may know about the training examples (one per query-positive pair), in dataset order."""

    example_ids: list[int]
    query_ids: list[str]
    queries: list[str]
    positive_row: list[int]
    positive_rows: list[list[int]]

    @classmethod
    def from_dataset(cls, examples: Any) -> TrainingExamples:
        return cls([int(e) for e in examples["example_id"]], [str(q) for q in examples["query_id"]],
                   list(examples["query"]), [int(r) for r in examples["positive_row"]],
                   [[int(r) for r in rows] for rows in examples["positive_rows"]])


@dataclass
class SamplerContext:
    """The narrow view of training a sampler gets in :meth:`NegativeSampler.setup`.

    Attributes:
        cache: a :class:`CacheReader` (rows, chunks, facts, collectives, counted encoding, events).
        encode_queries: ``encode_queries(texts) -> (n, d)`` with the current query encoder (eval mode).
        seed: the run's seed (noise and draws are keyed by ``(seed, step, key)``).
        chunk_size: cache rows scored at once.
        device: where scoring runs.
        examples: the training examples (None when there are none).
    """

    cache: CacheReader
    encode_queries: Callable[[list[str]], torch.Tensor]
    seed: int = 0
    chunk_size: int = 65536
    device: torch.device | str = "cpu"
    examples: TrainingExamples | None = None
