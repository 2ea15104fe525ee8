"""Retrieval evaluation fed precomputed embeddings (like sentence-transformers' evaluators).

Example:
    >>> evaluator = RetrievalEvaluator(test.queries, doc_ids)  # doctest: +SKIP
    >>> evaluator(query_embeddings, {"fresh": corpus_embeddings})  # doctest: +SKIP
    {'eval_ndcg@10': 0.61, ...}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..utils.arrow_column import ArrowColumn
from .metrics import DEFAULT_METRICS, retrieval_metrics

logger = logging.getLogger(__name__)


class RetrievalEvaluator:
    """Metrics of ``queries`` (``query_id``, ``positive_ids``) searched exactly over a corpus of ``doc_ids``.

    Calling it with query embeddings and one or more corpus representations (``fresh``, ``stale``, ``corrected``;
    a mapping or a function of the name, so each is computed only when needed) returns
    ``{prefix}_{infix}{metric}``, the infix empty for ``fresh`` and ``"{kind}_"`` otherwise.
    """

    def __init__(self, queries: datasets.Dataset, doc_ids: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS):
        self.query_ids = list(queries["query_id"])
        self.qrels = {qid: {d: 1 for d in pos} for qid, pos in zip(self.query_ids, queries["positive_ids"])}
        unjudged = [qid for qid, docs in self.qrels.items() if not docs]
        if unjudged:
            logger.warning("%d of %d evaluation queries have no positive_ids (e.g. %r): they are left out of every "
                           "metric's mean, as trec_eval and BEIR leave them out", len(unjudged), len(self.qrels),
                           unjudged[0])
        self.doc_ids = doc_ids if isinstance(doc_ids, ArrowColumn) else list(doc_ids)
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


def documents_outside(queries: datasets.Dataset, doc_index: Mapping[str, int], corpus: datasets.Dataset | None
                      ) -> tuple[list[str], list[str]]:
    """Held-out positives that are not in the training corpus, as (doc ids, texts) taken from ``corpus`` (the
    evaluation data's own corpus), so that evaluation searches them too instead of counting them as misses.

    Raises :class:`ConfigError` naming a query when such a positive has no text anywhere.
    """
    missing: dict[str, str] = {}
    for qid, positives in zip(queries["query_id"], queries["positive_ids"]):
        for doc in positives:
            if doc not in doc_index and doc not in missing:
                missing[doc] = qid
    if not missing:
        return [], []
    texts = {}
    if corpus is not None:
        wanted = set(missing)
        texts = {d: t for d, t in zip(corpus["doc_id"], corpus["text"]) if d in wanted}
    absent = [d for d in missing if d not in texts]
    if absent:
        raise ConfigError(f"query {missing[absent[0]]!r} of the evaluation data has the positive {absent[0]!r}, which "
                          f"is neither in the training corpus nor in the evaluation data's corpus ({len(absent)} such "
                          "documents): pass the evaluation data as RetrievalData with its corpus, or add the "
                          "documents to the training corpus")
    ids = list(missing)
    return ids, [texts[d] for d in ids]


class CorpusEmbeddings:
    """The corpus as evaluation sees it: ``fresh`` (re-encoded now), ``stale`` (the cache) or ``corrected`` (the
    score transform applied to the cache, chunk by chunk), followed by the fresh rows of ``extra`` documents
    (ids, texts) outside the training corpus.

    Args:
        cache_manager: the run's :class:`~hf_corrector.cache.manager.CacheManager`.
        transform: ``transform(step)`` -> the map of stale rows (None = identity), e.g. ``sampler.transform.function``.
        chunk_size: cache rows transformed at once.
        local: with a cache sharded across processes, return this process's rows only
            (:class:`~hf_corrector.evaluation.sharded.LocalCorpus`, searched by ``retrieval_metrics`` with the
            per-process top-k merged) instead of gathering the N x d corpus.
        as_stored: ``stale`` rows in the cache's storage dtype (no float32 copy of the corpus) for a search, which
            converts each chunk to float32 itself (:func:`~hf_corrector.negatives.topk.select_negatives`): the same
            scores bit for bit with half the memory of a float16 cache's copy.
    """

    def __init__(self, cache_manager: Any, transform: Callable[[int], Callable | None], chunk_size: int = 65536,
                 local: bool = False, as_stored: bool = False):
        self.cache_manager = cache_manager
        self.as_stored = as_stored
        self.transform = transform
        self.chunk_size = chunk_size
        self.local = local

    @torch.no_grad()
    def __call__(self, kind: str, step: int = 0, extra: tuple[list[str], list[str]] = ([], [])) -> torch.Tensor:
        manager = self.cache_manager
        if self.local and manager.sharded and not extra[0]:
            return self._local(kind, step)
        if kind == "fresh":
            corpus = manager.encode_corpus("encoding the corpus for evaluation")
            if not extra[0]:
                return corpus
            return torch.cat([corpus, manager.encode_targets(extra[1], desc="encoding evaluation documents")])
        if extra[0]:
            raise ConfigError(f"{len(extra[0])} held-out positives (e.g. {extra[0][0]!r}) are not in the training "
                              f"corpus, so the {kind} cache has no row for them: evaluate with "
                              "eval_corpus_embeddings='fresh', or add them to the training corpus")
        transform = self.transform(step) if kind == "corrected" else None
        if transform is None:
            stale = manager.gathered().matrix()  # a sharded cache: the shards gathered (a collective)
            return stale if self.as_stored else stale.float()
        cache = manager.gathered()
        chunks = tqdm(cache.iter_chunks(self.chunk_size), desc="correcting the cache",
                      total=-(-len(cache) // self.chunk_size), disable=len(cache) <= self.chunk_size)
        return torch.cat([transform(chunk).float().cpu() for _, chunk in chunks])

    def _local(self, kind: str, step: int):
        """This process's rows only: encoded (fresh), as cached (stale) or corrected chunk by chunk."""
        from .sharded import LocalCorpus

        manager = self.cache_manager
        lo, hi = manager.local_rows
        if kind == "fresh":
            rows = manager.encode_targets(manager.texts[lo:hi], show_progress_bar=manager.collectives.rank == 0,
                                          desc="encoding this process's rows for evaluation").float()
        else:
            transform = self.transform(step) if kind == "corrected" else None
            cache = manager.local_matrix()
            stale = cache if self.as_stored else cache.float()
            rows = stale if transform is None else torch.cat(
                [transform(cache[s : s + self.chunk_size]).float().cpu() for s in range(0, len(cache), self.chunk_size)]
                or [cache[:0].float()])
        return LocalCorpus(rows, lo, manager.num_rows, manager.collectives.all_gather)
