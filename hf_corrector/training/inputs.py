"""The trainer's inputs, indexed once: the corpus (ids -> rows), the training examples and the held-out queries.

Example:
    >>> inputs = index_inputs(load_beir("scifact", split="train"), None)  # doctest: +SKIP
    >>> len(inputs.doc_ids), inputs.train_examples.column_names[:2]  # doctest: +SKIP
    (5183, ['example_id', 'query_id'])
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from ..data.format import RetrievalData
from ..data.open_qa import OpenQAData, is_open_qa
from ..errors import CacheMismatchError, ConfigError
from ..utils.arrow_column import ArrowColumn, RowIndex
from .collator import prepare_train_examples
from .reader_step import prepare_open_qa_examples


@dataclass
class TrainingInputs:
    """``corpus`` (doc_id, text), ``doc_ids`` in row order and ``doc_index`` (id -> row), both over the corpus's
    Arrow column (:mod:`~hf_corrector.utils.arrow_column`), ``train_examples`` (one
    per query-positive pair, see :func:`prepare_train_examples`) and ``eval_queries``."""

    corpus: datasets.Dataset
    doc_ids: ArrowColumn
    doc_index: RowIndex
    train_examples: datasets.Dataset | None
    eval_queries: datasets.Dataset | None

    @property
    def has_given_negatives(self) -> bool:
        return self.train_examples is not None and any(len(r) for r in self.train_examples["negative_rows"])


def index_inputs(train_dataset: RetrievalData | datasets.Dataset | None,
                 eval_dataset: RetrievalData | datasets.Dataset | None,
                 corpus: datasets.Dataset | None = None) -> TrainingInputs:
    """Index the trainer's datasets (the corpus comes from ``train_dataset`` when it is :class:`RetrievalData`)."""
    if isinstance(train_dataset, (RetrievalData, OpenQAData)):
        corpus = train_dataset.corpus if corpus is None else corpus
        train_queries = train_dataset.queries
    else:
        train_queries = train_dataset
    if corpus is None:
        raise ConfigError("pass corpus= (doc_id, text) or a RetrievalData train_dataset")
    if len(corpus) == 0:
        raise CacheMismatchError("the corpus is empty")
    doc_ids = ArrowColumn.from_dataset(corpus, "doc_id")  # read in place: no list of N ids in each process
    doc_index = RowIndex(doc_ids)
    duplicate = doc_index.duplicate()
    if duplicate is not None:
        raise CacheMismatchError(f"duplicate doc ids in the corpus: {duplicate!r} is in rows "
                                 f"{[i for i, d in enumerate(doc_ids) if d == duplicate][:2]}")
    if train_queries is None:
        examples = None
    elif is_open_qa(train_queries):  # questions with answers, no positives: reader-supervised training
        examples = prepare_open_qa_examples(train_queries)
    else:
        examples = prepare_train_examples(train_queries, doc_index)
    eval_queries = eval_dataset.queries if isinstance(eval_dataset, (RetrievalData, OpenQAData)) else eval_dataset
    return TrainingInputs(corpus, doc_ids, doc_index, examples, eval_queries)
