"""Top-k search of the served vectors through their faiss index, always returning ``k`` rows per query.

An approximate index (``ivf``, ``hnsw``) can return fewer than ``k`` rows for a query (faiss pads with row -1 and
score -FLT_MAX) when ``k`` is close to the corpus size or the probed IVF lists hold fewer rows. Those queries are
searched exactly over the vectors instead, so every query gets ``k`` real rows and scores, best first; a warning
says how many were. An empty index returns no rows.

Example:
    >>> import torch, faiss
    >>> from hf_corrector import StaleCache
    >>> vectors = StaleCache(["a", "b", "c"], torch.eye(3))
    >>> flat = faiss.IndexFlatIP(3); flat.add(torch.eye(3).numpy())
    >>> scores, rows = search_rows(flat, vectors, torch.eye(3)[:1], k=2)
    >>> rows.tolist()
    [[0, 1]]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..negatives.topk import select_negatives

logger = logging.getLogger(__name__)


def search_rows(index: Any, vectors: Any, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B, k'), rows (B, k')) with ``k' = min(k, len(vectors))``; rows the faiss ``index`` could not fill
    are searched exactly over ``vectors`` (a :class:`~hf_corrector.StaleCache`)."""
    k = min(int(k), len(vectors))
    b = int(queries.shape[0])
    if k == 0 or b == 0:
        return torch.zeros(b, k), torch.zeros(b, k, dtype=torch.long)
    scores, rows = index.search(np.ascontiguousarray(queries.numpy()), k)
    scores, rows = torch.from_numpy(scores).float(), torch.from_numpy(rows.astype(np.int64))
    short = (rows < 0).any(dim=1)
    if bool(short.any()):
        which = short.nonzero().flatten()
        logger.warning("the faiss index returned fewer than k=%d rows for %d of %d queries (k close to the %d rows, "
                       "or the probed lists hold fewer): those queries were searched exactly", k, which.numel(), b,
                       len(vectors))
        exact_scores, exact_rows = exact_top_k(vectors, queries[which], k)
        scores[which], rows[which] = exact_scores, exact_rows
    return scores, rows


def exact_top_k(vectors: Any, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-``k`` (scores, rows) of ``queries`` over ``vectors``: the streaming top-k of negative
    selection (:func:`hf_corrector.negatives.topk.select_negatives`), chunk by chunk."""
    matrix = vectors.matrix()
    exact = select_negatives(queries, lambda start, stop: matrix[start:stop].float(), k, num_rows=len(vectors))
    return exact.scores, exact.indices


__all__ = ["exact_top_k", "search_rows"]
