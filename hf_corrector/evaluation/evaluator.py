"""Retrieval evaluation fed precomputed embeddings (like sentence-transformers' evaluators).

Example:
    >>> evaluator = RetrievalEvaluator(test.queries, doc_ids)  # doctest: +SKIP
    >>> evaluator(query_embeddings, {"fresh": corpus_embeddings})  # doctest: +SKIP
    {'eval_ndcg@10': 0.61, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import datasets
import torch

from .metrics import DEFAULT_METRICS, retrieval_metrics


class RetrievalEvaluator:
    """Metrics of ``queries`` (``query_id``, ``positive_ids``) searched exactly over a corpus of ``doc_ids``.

    Calling it with query embeddings and one or more corpus representations (``fresh``, ``stale``, ``corrected``;
    a mapping or a function of the name, so each is computed only when needed) returns
    ``{prefix}_{infix}{metric}``, the infix empty for ``fresh`` and ``"{kind}_"`` otherwise.
    """

    def __init__(self, queries: datasets.Dataset, doc_ids: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS):
        self.query_ids = list(queries["query_id"])
        self.qrels = {qid: {d: 1 for d in pos} for qid, pos in zip(self.query_ids, queries["positive_ids"])}
        self.doc_ids = list(doc_ids)
        self.metrics = tuple(metrics)

    def __call__(self, query_embeddings: torch.Tensor,
                 corpus: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor], kinds: Sequence[str] | None = None,
                 prefix: str = "eval") -> dict[str, float]:
        kinds = list(kinds if kinds is not None else corpus)  # type: ignore[arg-type]
        get = corpus if callable(corpus) else corpus.__getitem__
        out: dict[str, float] = {}
        for kind in kinds:
            values = retrieval_metrics(query_embeddings, get(kind), self.query_ids, self.doc_ids, self.qrels,
                                       self.metrics)
            infix = "" if kind == "fresh" else f"{kind}_"
            out.update({f"{prefix}_{infix}{name}": round(v, 5) for name, v in values.items()})
        return out
