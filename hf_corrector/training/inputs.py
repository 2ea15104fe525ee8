"""The trainer's inputs, indexed once: the corpus (ids -> rows), the training examples and the held-out queries.

Example:
    >>> inputs = index_inputs(load_beir("scifact", split="train"), None)  # doctest: +SKIP
    >>> len(inputs.doc_ids), inputs.train_examples.column_names[:2]  # doctest: +SKIP
    (5183, ['example_id', 'query_id'])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from ..data.format import RetrievalData
from ..data.open_qa import OpenQAData, is_open_qa
from ..errors import CacheMismatchError, ConfigError
from ..utils.arrow_column import ArrowColumn, RowIndex
from .collator import prepare_train_examples
from .reader_step import prepare_open_qa_examples

logger = logging.getLogger(__name__)


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
        _check_queries(train_queries, "train_dataset")  # a raw sentence-transformers dataset: name its loader first
        raise ConfigError("pass corpus= (doc_id, text) or a RetrievalData train_dataset")
    if isinstance(corpus, (datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ConfigError(f"corpus must be a datasets.Dataset with the columns {list(CORPUS_COLUMNS)}, got "
                          f"{type(corpus).__name__}: " + ("pass one split, e.g. corpus=dataset['corpus']"
                          if isinstance(corpus, dict) else "an IterableDataset has no rows to index; load it without "
                          "streaming=True (a memory-mapped Dataset reads the texts in place)"))
    _check_columns(corpus, "corpus", CORPUS_COLUMNS,
                   "load it with hf_corrector.data.load_beir / load_tevatron, or rename its columns")
    if "title" in corpus.column_names:
        logger.warning("the corpus has a 'title' column: the trainer encodes its 'text' column only (load_beir and "
                       "load_tevatron join title and text into 'text'); to encode the titles, join them first, e.g. "
                       "corpus.map(lambda row: {'text': (row['title'] + ' ' + row['text']).strip()})")
    if len(corpus) == 0:
        raise CacheMismatchError("the corpus is empty")
    doc_ids = ArrowColumn.from_dataset(corpus, "doc_id")  # read in place: no list of N ids in each process
    doc_index = RowIndex(doc_ids)
    duplicate = doc_index.duplicate()
    if duplicate is not None:
        raise CacheMismatchError(f"duplicate doc ids in the corpus: {duplicate!r} is in rows "
                                 f"{[i for i, d in enumerate(doc_ids) if d == duplicate][:2]}")
    _check_queries(train_queries, "train_dataset")
    if train_queries is None:
        examples = None
    elif is_open_qa(train_queries):  # questions with answers, no positives: reader-supervised training
        examples = prepare_open_qa_examples(train_queries)
    else:
        examples = prepare_train_examples(train_queries, doc_index)
    eval_queries = eval_dataset.queries if isinstance(eval_dataset, (RetrievalData, OpenQAData)) else eval_dataset
    _check_queries(eval_queries, "eval_dataset")
    return TrainingInputs(corpus, doc_ids, doc_index, examples, eval_queries)


QUERY_COLUMNS = ("query_id", "query", "positive_ids")
CORPUS_COLUMNS = ("doc_id", "text")
_LOAD_PAIRS = ("hf_corrector.data.load_pairs: `data = load_pairs(dataset)` turns (anchor, positive[, negatives]) "
               "rows into a RetrievalData whose corpus is their positive and negative texts; pass "
               "`train_dataset=data`")

_LOAD_PAIRS_EVAL = ("hf_corrector.data.load_pairs, and evaluate its queries over a corpus that holds their passages "
                    "(load_pairs gives ids made from the texts, so they match a corpus loaded by load_pairs too)")


def _check_queries(queries, role: str) -> None:
    """Refuse, before any work, a query table the trainer cannot read: a DatasetDict (which split?), a raw
    sentence-transformers dataset (anchor / positive / negative texts, no ids: name the loader to call) or a
    table missing ``query_id`` / ``query`` / ``positive_ids``. Reader-supervised questions (``answers``) pass."""
    if queries is None or is_open_qa(queries):
        return
    if role == "eval_dataset" and isinstance(queries, dict):  # several eval sets, evaluated per name (as Trainer)
        for name, one in queries.items():
            _check_queries(one.queries if isinstance(one, (RetrievalData, OpenQAData)) else one,
                           f"eval_dataset[{name!r}]")
        return
    if isinstance(queries, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ConfigError(f"{role} is a {type(queries).__name__} with the splits {list(queries)}: pass one split "
                          f"(e.g. {role}=dataset['train']), a RetrievalData, or sentence-transformers data through "
                          + _LOAD_PAIRS)
    if not isinstance(queries, datasets.Dataset):
        raise ConfigError(f"{role} must be a RetrievalData or a datasets.Dataset of queries with the columns "
                          f"{list(QUERY_COLUMNS)}, got {type(queries).__name__}; lists and dicts of rows load with "
                          "hf_corrector.data.load_retrieval_data, sentence-transformers rows with " + _LOAD_PAIRS)
    if "query_id" not in queries.column_names and _looks_like_sentence_transformers(queries):
        raise ConfigError(f"{role} looks like sentence-transformers training data (columns "
                          f"{queries.column_names}, texts and no ids); the trainer needs queries with doc ids into "
                          "a corpus. Convert it with " + (_LOAD_PAIRS if role == "train_dataset" else _LOAD_PAIRS_EVAL))
    _check_columns(queries, role, QUERY_COLUMNS, "load it with hf_corrector.data.load_beir / load_tevatron / "
                   "load_pairs, or pass a RetrievalData")
    for column in ("positive_ids", "negative_ids"):
        feature = queries.features.get(column)
        if feature is not None and not isinstance(feature, (list, datasets.Sequence, datasets.LargeList,
                                                            getattr(datasets, "List", datasets.Sequence))):
            raise ConfigError(f"{role}: the column {column!r} holds {feature}, not lists of doc ids (a single "
                              "id string would be read character by character): give each row a "
                              f"list ({column}=[id, ...]), e.g. dataset.map(lambda row: {{{column!r}: [row[{column!r}]]}}))")
    seen: dict = {}
    for row, qid in enumerate(queries["query_id"]):
        if qid in seen:
            raise ConfigError(f"{role}: query_id {qid!r} appears in rows {seen[qid]} and {row}; the trainer takes one "
                              "row per query (in training the other row's positives would be mined as negatives, in "
                              "evaluation one row's qrels would replace the other's): merge the rows, every positive "
                              "of the query in one positive_ids list")
        seen[qid] = row


def _check_columns(table, role: str, needed: tuple[str, ...], what_to_do: str) -> None:
    columns = getattr(table, "column_names", None)
    if columns is None:
        raise ConfigError(f"{role} must be a datasets.Dataset with the columns {list(needed)}, "
                          f"got {type(table).__name__}")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ConfigError(f"{role} lacks the column(s) {missing} (it has {columns}); {what_to_do}")


def _looks_like_sentence_transformers(table: datasets.Dataset) -> bool:
    """At least two string columns (anchor, positive, negatives...) and none of the trainer's id columns."""
    strings = [name for name, feature in table.features.items()
               if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
               or isinstance(getattr(feature, "feature", None), datasets.Value)
               and feature.feature.dtype in ("string", "large_string")]
    return len(strings) >= 2 and "positive_ids" not in table.column_names
