"""The one internal training format every loader produces.

A :class:`RetrievalData` holds

* ``queries``: a :class:`datasets.Dataset` with columns ``query_id`` (str), ``query`` (str),
  ``positive_ids`` (list of str) and ``negative_ids`` (list of str, possibly empty: negatives given by the data);
* ``corpus``: a :class:`datasets.Dataset` with columns ``doc_id`` (str) and ``text`` (str), one row per target,
  doc ids unique.

Example:
    >>> data = RetrievalData.from_records(
    ...     queries=[{"query_id": "q1", "query": "what is a cat", "positive_ids": ["d1"]}],
    ...     corpus=[{"doc_id": "d1", "text": "A cat is an animal."}, {"doc_id": "d2", "text": "Dogs bark."}],
    ... )
    >>> data.num_queries, data.num_docs
    (1, 2)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from ..errors import DataFormatError

logger = logging.getLogger(__name__)

_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates


def normalize_id(value: Any, where: str, what: str = "id") -> str:
    """The one id normalisation of corpus ids, query ids and qrels (every loader): a string or an integer (not a
    bool, not a float: 1.0 and 1 would be different ids), surrounding whitespace stripped (as a qrels TSV reads it),
    non-empty, and storable (no control characters such as tab or newline, no lone surrogates: they cannot be written
    to a qrels file or to Arrow). Raises :class:`DataFormatError` naming ``where``.

    Example:
        >>> normalize_id(" 12 ", "corpus row 0"), normalize_id(7, "row 1")
        ('12', '7')
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        hint = " (a float id such as 1.0 would not match the id 1: convert the column to int or str)" \
            if isinstance(value, float) else ""
        raise DataFormatError(f"{where}: {what} must be a string or an integer, got {type(value).__name__} "
                              f"{value!r}{hint}")
    text = str(value).strip()
    if not text:
        raise DataFormatError(f"{where}: {what} is empty")
    bad = _UNSTORABLE.search(text)
    if bad:
        raise DataFormatError(f"{where}: {what} {text!r} holds the character {bad.group()!r} (U+{ord(bad.group()):04X}), "
                              f"which an id cannot store (qrels files, Arrow); rename the id")
    return text


def id_list(value: Any, where: str, what: str) -> list:
    """``value`` as a list of ids: a string or an integer alone (``positive_ids="12"``) is refused, since iterating
    it would read ``"12"`` as the ids ``"1"`` and ``"2"``. Raises :class:`DataFormatError` naming ``where``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, int)) or not isinstance(value, Iterable):
        raise DataFormatError(f"{where}: {what} must be a list of ids, got {type(value).__name__} {value!r}; "
                              f"write [{value!r}] for a single id")
    return list(value)


QUERY_FEATURES = datasets.Features(
    {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "positive_ids": datasets.List(datasets.Value("string")),
        "negative_ids": datasets.List(datasets.Value("string")),
    }
)
CORPUS_FEATURES = datasets.Features({"doc_id": datasets.Value("string"), "text": datasets.Value("string")})


@dataclass
class RetrievalData:
    """Queries with their positive doc ids, plus a corpus keyed by ``doc_id``."""

    queries: datasets.Dataset
    corpus: datasets.Dataset
    name: str = "custom"

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_docs(self) -> int:
        return len(self.corpus)

    @classmethod
    def from_records(
        cls,
        queries: Iterable[Mapping],
        corpus: Iterable[Mapping],
        name: str = "custom",
        validate: bool = True,
    ) -> RetrievalData:
        """Build from plain dicts (``negative_ids`` optional), validating ids."""
        q_rows = [
            {
                "query_id": normalize_id(q["query_id"], f"{name}: query row {i}", "query_id"),
                "query": q["query"],
                "positive_ids": [normalize_id(p, f"{name}: query row {i}", "positive id")
                                 for p in id_list(q["positive_ids"], f"{name}: query row {i}", "positive_ids")],
                "negative_ids": [normalize_id(n, f"{name}: query row {i}", "negative id")
                                 for n in id_list(q.get("negative_ids"), f"{name}: query row {i}", "negative_ids")],
            }
            for i, q in enumerate(queries)
        ]
        c_rows = [{"doc_id": normalize_id(d["doc_id"], f"{name}: corpus row {i}", "doc_id"), "text": d["text"]}
                  for i, d in enumerate(corpus)]
        qds = datasets.Dataset.from_list(q_rows, features=QUERY_FEATURES) if q_rows else _empty(QUERY_FEATURES)
        cds = datasets.Dataset.from_list(c_rows, features=CORPUS_FEATURES) if c_rows else _empty(CORPUS_FEATURES)
        data = cls(queries=qds, corpus=cds, name=name)
        if validate:
            data.validate()
        return data

    def doc_index(self) -> dict[str, int]:
        """Map ``doc_id`` to its row in ``corpus``."""
        return {d: i for i, d in enumerate(self.corpus["doc_id"][:])}

    def validate(self) -> None:
        """Raise :class:`DataFormatError` naming the first problem found."""
        if len(self.corpus) == 0:
            raise DataFormatError(f"{self.name}: the corpus is empty")
        if len(self.queries) == 0:
            raise DataFormatError(f"{self.name}: the query set is empty")
        seen: dict[str, int] = {}
        for i, (doc_id, text) in enumerate(zip(self.corpus["doc_id"][:], self.corpus["text"][:])):
            if doc_id in seen:
                raise DataFormatError(f"{self.name}: duplicate doc id {doc_id!r} (corpus rows {seen[doc_id]} and {i})")
            seen[doc_id] = i
            if not doc_id:
                raise DataFormatError(f"{self.name}: empty doc id in corpus row {i}")
            if text is None or not str(text).strip():
                raise DataFormatError(f"{self.name}: empty text for doc id {doc_id!r}")
        qseen: set[str] = set()
        for qid, text, pos, neg in zip(
            self.queries["query_id"][:],
            self.queries["query"][:],
            self.queries["positive_ids"][:],
            self.queries["negative_ids"][:],
        ):
            if qid in qseen:
                raise DataFormatError(f"{self.name}: duplicate query id {qid!r}")
            qseen.add(qid)
            if text is None or not str(text).strip():
                raise DataFormatError(f"{self.name}: empty text for query id {qid!r}")
            if not pos:
                raise DataFormatError(f"{self.name}: query {qid!r} has no positive document")
            for p in list(pos) + list(neg or []):
                if p not in seen:
                    raise DataFormatError(f"{self.name}: query {qid!r} names doc id {p!r}, which is not in the corpus")


def _empty(features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
