"""Retrieval metrics over a full corpus, computed with ``pytrec_eval`` (trec_eval's definitions).

Example:
    >>> import torch
    >>> q = torch.eye(2); docs = torch.eye(2)
    >>> m = retrieval_metrics(q, docs, ["q1", "q2"], ["d1", "d2"], {"q1": {"d1": 1}, "q2": {"d2": 1}})
    >>> round(m["ndcg@10"], 3), round(m["mrr@10"], 3)
    (1.0, 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytrec_eval
import torch

from ..negatives.topk import select_negatives

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def exact_search(queries: torch.Tensor, corpus: torch.Tensor, k: int, chunk_size: int = 65536,
                 query_batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact maximum-inner-product top-k (scores, indices), streaming over corpus chunks (the same streaming top-k
    as negative selection, :func:`hf_corrector.negatives.topk.select_negatives`)."""
    k = min(k, corpus.shape[0])
    all_scores, all_idx = [], []
    for qs in range(0, queries.shape[0], query_batch):
        selection = select_negatives(queries[qs : qs + query_batch], corpus, k, chunk_size=chunk_size)
        all_scores.append(selection.scores)
        all_idx.append(selection.indices)
    return torch.cat(all_scores), torch.cat(all_idx)


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of ``metrics`` (``ndcg@k``, ``recall@k``, ``mrr@k``, ``map``) over the queries of ``qrels``.

    Queries with no retrieved documents count as zero (trec_eval would drop them; we keep the denominator honest);
    queries with no relevant document are not judged (left out of the mean, as trec_eval and BEIR leave them out).
    Ids are compared as strings (pytrec_eval's keys): integer ids evaluate as their decimal text.
    """
    # our name -> (pytrec_eval measure to request, key of its result)
    trec = {"ndcg": ("ndcg_cut.{}", "ndcg_cut_{}"), "recall": ("recall.{}", "recall_{}"), "mrr": ("recip_rank", "recip_rank"),
            "map": ("map", "map")}
    wanted: dict[str, tuple[str, str]] = {}
    for name in metrics:
        kind, _, cut = name.partition("@")
        if kind not in trec:
            raise ValueError(f"unknown metric {name!r}; use ndcg@k, recall@k, mrr@k or map")
        measure, key = trec[kind]
        wanted[name] = (measure.format(cut), key.format(cut))
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    judged = sum(1 for docs in qrels.values() if any(r > 0 for r in docs.values()))
    run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    results: dict[str, float] = {}
    for name, (measure, key) in wanted.items():
        kind, _, cut = name.partition("@")
        this_run = run
        if kind == "mrr" and cut:  # MRR@k = reciprocal rank over the top-k only
            this_run = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[: int(cut)]) for q, docs in run.items()}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
        per_query = evaluator.evaluate({q: dict(d) for q, d in this_run.items() if q in qrels})
        total = sum(v[key] for v in per_query.values())
        results[name] = total / max(judged, 1)
    return results


def _values_at(values: Sequence[str], rows: list[int]) -> list[str]:
    take = getattr(values, "take", None)  # an ArrowColumn gathers in one call
    return take(rows) if callable(take) else [values[j] for j in rows]


def retrieval_metrics(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    depth: int = 100,
) -> dict[str, float]:
    """Exact search of every query over the whole corpus, then ``metrics`` from ``pytrec_eval``.

    ``corpus_embeddings``: the corpus rows, or this process's rows of a sharded corpus
    (:class:`~hf_corrector.evaluation.sharded.LocalCorpus`, every process calls it)."""
    needed = max([depth] + [int(m.split("@")[1]) for m in metrics if "@" in m])
    if isinstance(corpus_embeddings, torch.Tensor):
        scores, idx = exact_search(query_embeddings, corpus_embeddings, needed)
    else:  # this process's rows of a sharded corpus (evaluation/sharded.py): per-process top-k merged
        from .sharded import local_exact_search

        scores, idx = local_exact_search(query_embeddings, corpus_embeddings, needed)
    run = {
        qid: dict(zip(_values_at(doc_ids, irow.tolist()), srow.tolist()))
        for qid, srow, irow in zip(query_ids, scores, idx)
    }
    return evaluate_run(run, qrels, metrics)
