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
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ..cache.ids import normalize_id
from ..errors import DataFormatError

logger = logging.getLogger(__name__)

_NEGATIVE_DICT = ("a dict is read as qrels only for positive_ids; give negative_ids as a list of ids")


def id_list(value: Any, where: str, what: str) -> list:
    """``value`` as a list of ids: a list, tuple or 1-D numpy array (numpy integers are ids as Python ints are). A
    string or an integer alone (``positive_ids="12"``) is refused, since iterating it would read ``"12"`` as the ids
    ``"1"`` and ``"2"``; so is a dict (see :func:`qrels_positives`). Raises :class:`DataFormatError` naming
    ``where``."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        raise DataFormatError(f"{where}: {what} is a dict; {_NEGATIVE_DICT}")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise DataFormatError(f"{where}: {what} must be a list of ids, got an array of shape {value.shape}")
    if isinstance(value, (str, bytes, int, np.integer)) or not isinstance(value, Iterable):
        raise DataFormatError(f"{where}: {what} must be a list of ids, got {type(value).__name__} {value!r}; "
                              f"write [{value!r}] for a single id")
    return list(value)


def qrels_positives(value: Mapping, where: str) -> list:
    """The positives of a BEIR-style qrels dict ``{doc_id: score}``: the ids with ``score > 0``, in the dict's order
    (as :func:`~hf_corrector.data.beir.load_beir` reads a qrels file). A score that is not a finite number raises
    :class:`DataFormatError` naming ``where`` and the id."""
    positives = []
    for doc_id, score in value.items():
        if isinstance(score, (bool, np.bool_)) or not isinstance(score, (int, float, np.integer, np.floating)) \
                or not math.isfinite(score):
            raise DataFormatError(f"{where}: positive_ids is read as qrels {{doc_id: score}}, and the score of "
                                  f"doc id {doc_id!r} is {score!r}, not a finite number; give a number (> 0 for a "
                                  f"positive) or a list of positive ids")
        if score > 0:
            positives.append(doc_id)
    return positives


def _ids(value: Any, where: str, what: str, query_id: str) -> list[str]:
    """The normalised ids of one query's ``positive_ids`` / ``negative_ids``, repeats removed (first kept) with a
    warning naming the query: a repeated positive would be trained on twice."""
    raw = qrels_positives(value, where) if what == "positive_ids" and isinstance(value, Mapping) else \
        id_list(value, where, what)
    ids = [normalize_id(p, where, what.replace("_ids", " id")) for p in raw]
    if len(set(ids)) == len(ids):
        return ids
    unique = list(dict.fromkeys(ids))
    logger.warning("%s: query %r names %d repeated %s (after id normalisation), dropped: %s", where, query_id,
                   len(ids) - len(unique), what, sorted({i for i in ids if ids.count(i) > 1}))
    return unique


def _text(row: Mapping, key: str, where: str) -> Any:
    """``row[key]`` when it is a string (or null / missing text, which :meth:`RetrievalData.validate` names)."""
    value = row[key]
    if value is not None and not isinstance(value, str):
        raise DataFormatError(f"{where}: {key} must be a string, got {type(value).__name__} {value!r:.60}; "
                              f"convert it to text (the file loaders refuse it too)")
    return value


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
        """Build from plain dicts (``negative_ids`` optional), validating ids.

        Ids are normalised as every loader does (:func:`normalize_id`: strings or integers, numpy integers
        included; a float is refused). ``positive_ids`` / ``negative_ids`` are lists of ids (a list, a tuple, a 1-D
        numpy array); ``positive_ids`` may also be a BEIR-style qrels dict ``{doc_id: score}``, read as
        :func:`load_beir` reads a qrels file: the positives are the ids with ``score > 0`` (in the dict's order; a
        score of 0 or below is not a positive). Ids repeated within one query's list (also after normalisation:
        ``[1, "1", " 1"]``) are kept once, with a warning naming the query. ``query`` and ``text`` must be strings:
        any other value raises :class:`DataFormatError` naming the row, as the file loaders do.
        """
        q_rows = []
        for i, q in enumerate(queries):
            where = f"{name}: query row {i}"
            qid = normalize_id(q["query_id"], where, "query_id")
            q_rows.append({"query_id": qid, "query": _text(q, "query", where),
                           "positive_ids": _ids(q["positive_ids"], where, "positive_ids", qid),
                           "negative_ids": _ids(q.get("negative_ids"), where, "negative_ids", qid)})
        c_rows = [{"doc_id": normalize_id(d["doc_id"], f"{name}: corpus row {i}", "doc_id"),
                   "text": _text(d, "text", f"{name}: corpus row {i}")}
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
