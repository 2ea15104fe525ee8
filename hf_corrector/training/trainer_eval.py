"""Evaluation and prediction of a :class:`~hf_corrector.CorrectorTrainer`: retrieval metrics over the whole corpus
(``evaluate``), ranked corpus rows (``predict``), with the callbacks ``transformers.Trainer`` fires for each
(``on_evaluate`` / ``on_predict``).

Queries are encoded as the training batches see them: the collator's ``query_prefix`` and ``query_max_length``
(a :class:`~hf_corrector.training.collator.CorrectorDataCollator` of your own included) and the evaluation batch
size (``eval_batch_size_encode``, which follows ``per_device_eval_batch_size`` when you set that one).

A mixin because these methods override ``Trainer``'s own; it reads the trainer attributes named in
:class:`EvaluationMixin`'s docstring.

Example:
    >>> trainer.evaluate(test)["eval_ndcg@10"]  # doctest: +SKIP
    >>> trainer.predict(test).predictions[:, 0]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import torch
from transformers.trainer_utils import PredictionOutput

from ..data.format import RetrievalData
from ..data.open_qa import OpenQAData
from ..errors import ConfigError
from ..evaluation.evaluator import CorpusEmbeddings, RetrievalEvaluator, documents_outside
from ..evaluation.metrics import exact_search


class EvaluationMixin:
    """``evaluate`` / ``predict`` of the trainer. Uses ``args``, ``state``, ``control``, ``callback_handler``,
    ``data_collator``, ``retriever``, ``cache_manager``, ``sampler``, ``reader_step``, ``doc_ids``, ``doc_index``,
    ``_eval_data``, ``log`` and ``total_reembedding_cost()`` of :class:`~hf_corrector.CorrectorTrainer`."""

    def encode_queries(self, texts: Sequence[str], show_progress_bar: bool | None = None) -> torch.Tensor:
        """Queries as the training batches see them (the collator's prefix and max length), at the eval batch size."""
        collator = self.data_collator
        length = getattr(collator, "query_max_length", None) or self.args.query_max_length
        return self.retriever.encode(list(texts), side="query", batch_size=self.args.eval_batch_size_encode,
                                     max_length=length, device=self.args.device, show_progress_bar=show_progress_bar,
                                     prefix=getattr(collator, "query_prefix", None))

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """nDCG@10, Recall@10/100 and MRR@10 of held-out queries over the whole corpus (a dict of datasets: each,
        prefixed ``{prefix}_{name}``). ``eval_corpus_embeddings`` picks the corpus representation(s): ``fresh``
        (re-encoded now; no infix), ``stale`` (the cache) and ``corrected`` (the transformed cache), side by side.
        Held-out positives outside the training corpus are searched too (``fresh``; taken from the evaluation
        data's corpus). Logs the metrics and fires ``on_evaluate``."""
        data = eval_dataset if eval_dataset is not None else self._eval_data
        if isinstance(data, str) and isinstance(self._eval_data, dict):  # Trainer's "name of one of the datasets"
            data, metric_key_prefix = self._eval_data[data], f"{metric_key_prefix}_{data}"
        if isinstance(data, dict):
            return {k: v for name, part in data.items() for k, v in
                    self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}").items()}
        metrics = self._metrics_of(data, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _metrics_of(self, data, metric_key_prefix: str) -> dict[str, float]:
        queries = data.queries if isinstance(data, (RetrievalData, OpenQAData)) else data
        if queries is None:
            raise ConfigError("evaluate() needs an eval_dataset (RetrievalData or a queries Dataset)")
        if self.reader_step is not None:  # answer recall@k and exact match (issue 20)
            metrics = self.reader_step.evaluate(queries, self.encode_queries, self.corpus_embeddings,
                                                self.args.eval_corpus_list, metric_key_prefix)
        else:
            extra = documents_outside(queries, self.doc_index, data.corpus if isinstance(data, RetrievalData) else None)
            metrics = self.retrieval_metrics(queries, self.args.eval_corpus_list, prefix=metric_key_prefix, extra=extra)
        metrics[f"{metric_key_prefix}_reembedding_cost"] = self.total_reembedding_cost()
        return metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Retrieval as ``Trainer.predict`` returns it: ``predictions`` (Q, 100) corpus rows ranked for each query
        (fresh embeddings) and ``metrics`` as :meth:`evaluate` computes them (``test_`` prefix). As
        ``Trainer.predict``: fires ``on_predict`` (not ``on_evaluate``) and logs nothing."""
        queries = test_dataset.queries if isinstance(test_dataset, RetrievalData) else test_dataset
        _, rows = exact_search(self.encode_queries(queries["query"]), self.corpus_embeddings("fresh"), 100)
        metrics = self._metrics_of(test_dataset, metric_key_prefix)
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return PredictionOutput(rows.numpy(), None, metrics)

    def corpus_embeddings(self, kind: str, extra: tuple[list[str], list[str]] = ([], []), local: bool = False,
                          as_stored: bool = False) -> torch.Tensor:
        """The corpus as ``fresh``, ``stale`` or ``corrected`` rows (see :class:`CorpusEmbeddings`; ``local``: a
        sharded cache's rows of this process only; ``as_stored``: stale rows in the storage dtype, for a search)."""
        return CorpusEmbeddings(self.cache_manager, self.sampler.transform.function, self.args.corrector_chunk_size,
                                local=local, as_stored=as_stored)(kind, self.state.global_step, extra)

    def retrieval_metrics(self, queries: datasets.Dataset, kinds: list[str], prefix: str = "eval",
                          extra: tuple[list[str], list[str]] = ([], [])) -> dict[str, float]:
        q = self.encode_queries(queries["query"])
        evaluator = RetrievalEvaluator(queries, self.doc_ids + extra[0])
        return evaluator(q, lambda kind: self.corpus_embeddings(kind, extra, local=True, as_stored=True), kinds, prefix=prefix)
