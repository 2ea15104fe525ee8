"""Drive the library's real samplers from plain tensors: a cache matrix, a target-encoding function and query
vectors, without text or a text encoder.

The library's :class:`~hf_corrector.cache.manager.CacheManager` is used as it is: its "texts" are the row numbers
as strings, and its ``encode_targets`` maps them back to rows and calls a tensor function. Queries are likewise
named by their index (``encode_queries`` for ANCE-Tele's pools). This is the only place that knows the trick, so
when the sampler context changes only this file moves.

Example:
    >>> import torch
    >>> manager = tensor_cache_manager(torch.eye(3), lambda rows: torch.eye(3)[rows])
    >>> manager.rows(torch.tensor([2])).tolist()
    [[0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..cache.manager import CacheManager
from ..cache.stale_cache import StaleCache
from ..negatives.base import NegativeSampler, SamplerContext, TrainingExamples

RowEncoder = Callable[[torch.Tensor], torch.Tensor]


def tensor_cache_manager(matrix: torch.Tensor, encode_rows: RowEncoder, write_back: bool = False) -> CacheManager:
    """A real :class:`CacheManager` over ``matrix`` (N, d) whose re-encodings call ``encode_rows(rows) -> (n, d)``
    (the current target encoder applied to targets ``rows``)."""
    n = matrix.shape[0]
    texts = [str(i) for i in range(n)]

    def encode_targets(batch: Sequence[str], **_: object) -> torch.Tensor:
        return encode_rows(torch.as_tensor([int(t) for t in batch], dtype=torch.long)).float().cpu()

    cache = StaleCache(texts, matrix.detach().float().cpu())
    return CacheManager(cache, texts, encode_targets, write_back=write_back)


def tensor_context(manager: CacheManager, encode_queries: RowEncoder | None = None, seed: int = 0,
                   positives: Sequence[int] | None = None, chunk_size: int = 65536) -> SamplerContext:
    """The :class:`SamplerContext` a sampler is set up with (its cache: ``manager.reader()``).
    ``encode_queries(idx) -> (n, d)`` encodes queries by index; ``positives`` (one row per query, in index order)
    become the training examples (ANCE-Tele needs them)."""

    def by_text(texts: list[str]) -> torch.Tensor:
        if encode_queries is None:
            raise ValueError("this sampler encodes queries: pass encode_queries to tensor_context")
        return encode_queries(torch.as_tensor([int(t) for t in texts], dtype=torch.long)).float()

    examples = None
    if positives is not None:
        m = len(positives)
        examples = TrainingExamples(list(range(m)), [str(i) for i in range(m)], [str(i) for i in range(m)],
                                    [int(p) for p in positives], [[int(p)] for p in positives])
    return SamplerContext(cache=manager.reader(), encode_queries=by_text, seed=seed, chunk_size=chunk_size,
                          examples=examples)


def setup_sampler(sampler: NegativeSampler, manager: CacheManager, **context: object) -> NegativeSampler:
    """``sampler.setup(tensor_context(manager, **context))``; returns the sampler."""
    sampler.setup(tensor_context(manager, **context))  # type: ignore[arg-type]
    return sampler
