"""Load Tevatron-format training data into :class:`~hf_corrector.data.format.RetrievalData`.

Two layouts are read:

* the passage layout (``Tevatron/wikipedia-nq``, ``Tevatron/msmarco-passage``): each row has ``query_id``,
  ``query``, ``positive_passages`` and ``negative_passages``, lists of ``{"docid", "title", "text"}``. The
  corpus is every passage seen (deduplicated by ``docid``; one docid with two different texts is an error),
  plus the rows of ``corpus=`` when one is given;
* the id layout (newer Tevatron): each row has ``query_id``, ``query`` or ``query_text``,
  ``positive_document_ids`` and ``negative_document_ids``, and the texts come from a separate corpus
  (``corpus=``, rows with ``docid``, ``text`` and optional ``title``, e.g. ``Tevatron/msmarco-passage-corpus``).

The input (and ``corpus=``) may be a :class:`datasets.Dataset` / ``DatasetDict``, a list of dicts, a local
``.jsonl`` / ``.json`` / ``.parquet`` file, a local folder (data files or a ``save_to_disk`` folder) or a Hub
repository id, loaded with ``datasets.load_dataset(repo, split=split)``. A malformed row raises
:class:`~hf_corrector.errors.DataFormatError` naming the file and line (or row index), the query id and the
field.

Example:
    >>> from hf_corrector.data.tevatron import load_tevatron
    >>> rows = [{"query_id": "1", "query": "who wrote hamlet",
    ...          "positive_passages": [{"docid": "7", "title": "Hamlet", "text": "A play by Shakespeare."}],
    ...          "negative_passages": [{"docid": "9", "title": "Macbeth", "text": "Another play."}]}]
    >>> data = load_tevatron(rows)
    >>> data.num_queries, data.num_docs, data.queries[0]["negative_ids"]
    (1, 2, ['9'])
    >>> data.corpus[0]["text"]
    'Hamlet A play by Shakespeare.'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import datasets

from ..errors import ConfigError, DataFormatError
from .beir import _as_id, _json_type, join_title, to_dataset
from .format import CORPUS_FEATURES, QUERY_FEATURES, RetrievalData
from .rows import RowSource, open_rows, row_columns

logger = logging.getLogger(__name__)

PASSAGE_COLUMNS = ("positive_passages", "negative_passages")
ID_COLUMNS = ("positive_document_ids", "negative_document_ids")
QUERY_TEXT_COLUMNS = ("query", "query_text")
CORPUS_ID_COLUMNS = ("docid", "doc_id", "_id", "id")
CORPUS_TEXT_COLUMNS = ("text", "contents", "document_text")


def iter_tevatron_rows(dataset_or_path: Any, split: str = "train") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(location, row)`` for every raw row of a Tevatron dataset (any input :func:`load_tevatron` takes).

    A row that is not a mapping raises :class:`DataFormatError` naming its location.
    """
    for where, row in open_rows(dataset_or_path, split=split):
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{where}: expected an object/dict row, got {_json_type(row)}")
        yield where, row


# --------------------------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------------------------


def _as_text(value: Any, where: str, what: str, required: bool = True) -> str:
    if value is None:
        if required:
            raise DataFormatError(f"{where}: {what} is missing or null")
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: {what} must be a string, got {_json_type(value)}")
    return value


def _as_list(value: Any, where: str, what: str, required: bool) -> list[Any]:
    if value is None:
        if required:
            raise DataFormatError(f"{where}: field {what!r} is missing or null")
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise DataFormatError(f"{where}: field {what!r} must be a list, got {_json_type(value)}")
    return list(value)


class CorpusStore:
    """Doc id -> text with conflict detection; remembers where each doc was first seen."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.first_seen: list[str] = []
        self.repeats = 0

    def add(self, doc_id: str, text: str, where: str) -> None:
        i = self.index.get(doc_id)
        if i is None:
            self.index[doc_id] = len(self.ids)
            self.ids.append(doc_id)
            self.texts.append(text)
            self.first_seen.append(where)
            return
        if self.texts[i] != text:
            raise DataFormatError(
                f"{where}: docid {doc_id!r} has a different text than at {self.first_seen[i]} "
                f"({_clip(text)!r} vs {_clip(self.texts[i])!r})"
            )
        self.repeats += 1

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.index

    def dataset(self, label: str) -> datasets.Dataset:
        return to_dataset({"doc_id": self.ids, "text": self.texts}, CORPUS_FEATURES, label)


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def read_corpus_rows(source: RowSource, store: CorpusStore, title_sep: str) -> None:
    id_col = next((c for c in CORPUS_ID_COLUMNS if source.columns and c in source.columns), "docid")
    text_col = next((c for c in CORPUS_TEXT_COLUMNS if source.columns and c in source.columns), "text")
    wanted = [id_col, text_col, "title"]
    before = store.repeats
    for where, row in source.iter(wanted):
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{where}: expected an object/dict corpus row, got {_json_type(row)}")
        if id_col not in row:
            raise DataFormatError(f"{where}: missing field {id_col!r} in the corpus row")
        doc_id = _as_id(row[id_col], where, f"field {id_col!r}")
        here = f"{where} (docid {doc_id!r})"
        if text_col not in row:
            raise DataFormatError(f"{here}: missing field {text_col!r}")
        text = join_title(
            _as_text(row.get("title"), here, "field 'title'", required=False),
            _as_text(row[text_col], here, f"field {text_col!r}"),
            title_sep,
        )
        if not text:
            raise DataFormatError(f"{here}: empty text (and title)")
        store.add(doc_id, text, where)
    if store.repeats > before:
        logger.warning(
            "%s: %d repeated corpus row(s) with identical text merged", source.label, store.repeats - before
        )
    if not store.ids:
        raise DataFormatError(f"{source.label}: the corpus is empty")


# --------------------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------------------


def load_tevatron(
    dataset_or_path: Any,
    corpus: Any = None,
    split: str = "train",
    validate: bool = True,
    title_sep: str = " ",
    corpus_split: str = "train",
    name: str | None = None,
) -> RetrievalData:
    """Load Tevatron training rows (passage layout or id layout) as :class:`RetrievalData`.

    Args:
        dataset_or_path: a Dataset / DatasetDict, a list of dicts, a local file or folder, or a Hub repo id.
        corpus: the corpus for the id layout (required there; optional for the passage layout, whose passages
            are added to it): same kinds of input, rows with ``docid``, ``text`` and optional ``title``.
        split: the split of ``dataset_or_path`` to read (Hub ids, DatasetDicts, folders).
        validate: run :meth:`RetrievalData.validate` on the result.
        title_sep: put between a passage's title and its text.
        corpus_split: the split of ``corpus`` to read (Tevatron corpora have one split, ``train``).
        name: the name of the result (default: the input's label).

    Raises:
        DataFormatError: a malformed row (naming its location, query id and field), a docid with two texts,
            an unknown doc id, an empty query set or corpus.
        ConfigError: id-layout rows without ``corpus=``.
    """
    rows = open_rows(dataset_or_path, split=split)
    columns = row_columns(rows, "the query set is empty (no rows)")
    if "positive_passages" in columns:
        layout = "passages"
    elif "positive_document_ids" in columns:
        layout = "ids"
    else:
        raise DataFormatError(
            f"{rows.label}: not Tevatron data: expected a 'positive_passages' or 'positive_document_ids' column, "
            f"got columns {columns}"
        )
    if layout == "ids" and corpus is None:
        raise ConfigError(
            f"{rows.label}: rows name documents by id ('positive_document_ids'); pass the corpus with corpus=... "
            "(e.g. 'Tevatron/msmarco-passage-corpus')"
        )

    store = CorpusStore()
    corpus_label = None
    if corpus is not None:
        corpus_rows = open_rows(corpus, split=corpus_split, label="corpus")
        corpus_label = corpus_rows.label
        read_corpus_rows(corpus_rows, store, title_sep)
    given_docs = len(store.ids)

    q_ids: list[str] = []
    q_texts: list[str] = []
    q_pos: list[list[str]] = []
    q_neg: list[list[str]] = []
    q_seen: dict[str, str] = {}
    dup_pos = dup_neg = neg_also_pos = 0
    query_col = next((c for c in QUERY_TEXT_COLUMNS if c in columns), "query")
    pos_col, neg_col = PASSAGE_COLUMNS if layout == "passages" else ID_COLUMNS
    wanted = ["query_id", query_col, pos_col, neg_col]

    for where, row in rows.iter(wanted):
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{where}: expected an object/dict row, got {_json_type(row)}")
        if "query_id" not in row:
            raise DataFormatError(f"{where}: missing field 'query_id'")
        qid = _as_id(row["query_id"], where, "field 'query_id'")
        here = f"{where} (query_id {qid!r})"
        if qid in q_seen:
            raise DataFormatError(f"{here}: duplicate query id (first at {q_seen[qid]})")
        q_seen[qid] = where
        qcol = query_col if query_col in row else next((c for c in QUERY_TEXT_COLUMNS if c in row), query_col)
        if qcol not in row:
            raise DataFormatError(f"{here}: missing field {query_col!r}")
        query = _as_text(row[qcol], here, f"field {qcol!r}").strip()
        if not query:
            raise DataFormatError(f"{here}: field {qcol!r} is empty")
        if pos_col not in row:
            raise DataFormatError(f"{here}: missing field {pos_col!r}")
        raw_pos = _as_list(row[pos_col], here, pos_col, required=True)
        raw_neg = _as_list(row.get(neg_col), here, neg_col, required=False)
        if layout == "passages":
            pos = [_passage(p, f"{here} {pos_col}[{k}]", store, title_sep) for k, p in enumerate(raw_pos)]
            neg = [_passage(p, f"{here} {neg_col}[{k}]", store, title_sep) for k, p in enumerate(raw_neg)]
        else:
            pos = [_known_id(d, f"{here} {pos_col}[{k}]", store, corpus_label) for k, d in enumerate(raw_pos)]
            neg = [_known_id(d, f"{here} {neg_col}[{k}]", store, corpus_label) for k, d in enumerate(raw_neg)]
        if not pos:
            raise DataFormatError(f"{here}: field {pos_col!r} is empty (a query needs a positive document)")
        upos = list(dict.fromkeys(pos))
        dup_pos += len(pos) - len(upos)
        uneg = list(dict.fromkeys(neg))
        dup_neg += len(neg) - len(uneg)
        pos_set = set(upos)
        kept_neg = [d for d in uneg if d not in pos_set]
        neg_also_pos += len(uneg) - len(kept_neg)
        q_ids.append(qid)
        q_texts.append(query)
        q_pos.append(upos)
        q_neg.append(kept_neg)

    label = rows.label
    if not q_ids:
        raise DataFormatError(f"{label}: the query set is empty (no rows)")
    if dup_pos:
        logger.info("%s: merged %d repeated positive doc id(s) within rows", label, dup_pos)
    if dup_neg:
        logger.info("%s: merged %d repeated negative doc id(s) within rows", label, dup_neg)
    if neg_also_pos:
        logger.warning("%s: dropped %d negative(s) that are also positives of the same query", label, neg_also_pos)
    if layout == "passages" and store.repeats:
        logger.info("%s: %d passage occurrence(s) repeat an already-seen docid (same text)", label, store.repeats)

    qds = to_dataset(
        {"query_id": q_ids, "query": q_texts, "positive_ids": q_pos, "negative_ids": q_neg}, QUERY_FEATURES, label
    )
    data = RetrievalData(queries=qds, corpus=store.dataset(label), name=name or label)
    if validate:
        data.validate()
    logger.info(
        "loaded Tevatron %s (%s layout): %d queries, %d docs (%d from corpus=)",
        label,
        layout,
        len(qds),
        len(store.ids),
        given_docs,
    )
    return data


def _passage(value: Any, where: str, store: CorpusStore, title_sep: str) -> str:
    if not isinstance(value, Mapping):
        raise DataFormatError(
            f"{where}: a passage must be an object with 'docid', 'title', 'text', got {_json_type(value)}"
        )
    if "docid" not in value:
        raise DataFormatError(f"{where}: missing field 'docid'")
    doc_id = _as_id(value["docid"], where, "field 'docid'")
    here = f"{where} (docid {doc_id!r})"
    if "text" not in value:
        raise DataFormatError(f"{here}: missing field 'text'")
    text = join_title(
        _as_text(value.get("title"), here, "field 'title'", required=False),
        _as_text(value["text"], here, "field 'text'"),
        title_sep,
    )
    if not text:
        raise DataFormatError(f"{here}: empty text (and title)")
    store.add(doc_id, text, where)
    return doc_id


def _known_id(value: Any, where: str, store: CorpusStore, corpus_label: str | None) -> str:
    doc_id = _as_id(value, where, "doc id")
    if doc_id not in store:
        raise DataFormatError(f"{where}: doc id {doc_id!r} is not in the corpus ({corpus_label})")
    return doc_id


__all__ = ["CorpusStore", "iter_tevatron_rows", "load_tevatron", "read_corpus_rows"]
