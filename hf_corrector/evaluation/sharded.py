"""Evaluation over a cache sharded across processes: each process holds, encodes and corrects only its rows, searches
them for every query, and the per-process top-k are merged (the merge negative selection uses,
:func:`~hf_corrector.negatives.topk.select_negatives_sharded`); no process ever holds the N x d corpus.

Example:
    >>> local = LocalCorpus(my_rows, start=lo, num_rows=n, all_gather=collectives.all_gather)  # doctest: +SKIP
    >>> scores, rows = local_exact_search(queries, local, k=100)  # the same on every process  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..negatives.topk import select_negatives_sharded


@dataclass
class LocalCorpus:
    """This process's corpus rows ``start : start + len(rows)`` of ``num_rows``, and the collective that meets the
    other processes (``all_gather``: a tensor -> one tensor per process)."""

    rows: torch.Tensor
    start: int
    num_rows: int
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]]

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the whole corpus (what a search over it returns indices into)."""
        return (self.num_rows, self.rows.shape[1])


def local_exact_search(queries: torch.Tensor, corpus: LocalCorpus, k: int, chunk_size: int = 65536,
                       query_batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (scores, global row indices) of every query over the whole sharded corpus; call it on every
    process with the same queries. Equal to :func:`~hf_corrector.evaluation.metrics.exact_search` over the gathered
    corpus (the chunks are aligned to global rows as there)."""
    k = min(k, corpus.num_rows)
    lo, hi = corpus.start, corpus.start + corpus.rows.shape[0]

    def get(start: int, stop: int) -> torch.Tensor:
        return corpus.rows[start - lo : stop - lo]

    scores, idx = [], []
    for qs in range(0, queries.shape[0], query_batch):
        sel = select_negatives_sharded(queries[qs : qs + query_batch], get, k, (lo, hi), corpus.num_rows,
                                       corpus.all_gather, chunk_size=chunk_size)
        scores.append(sel.scores)
        idx.append(sel.indices)
    return torch.cat(scores), torch.cat(idx)
