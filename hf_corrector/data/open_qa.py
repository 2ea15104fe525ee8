"""Open-domain QA data for reader-supervised training: questions with answers, a corpus, and no positives.

An :class:`OpenQAData` holds ``queries`` (``query_id``, ``query``, ``answers``: list of str) and ``corpus``
(``doc_id``, ``text``). :func:`load_open_qa` reads

* NQ-open / TriviaQA-style rows (JSONL file, Dataset, list of dicts, Hub id): the question in ``question`` or
  ``query``, the answers in ``answers`` or ``answer`` (a string, a list, or TriviaQA's ``{"value", "aliases"}``),
  an optional id in ``id`` / ``query_id`` / ``question_id``; plus ``corpus=`` (a JSONL / Dataset of passages with
  ``docid`` / ``doc_id`` / ``_id`` / ``id``, ``text`` and an optional ``title``);
* Tevatron's NQ (``query_id``, ``query``, ``answers``, ``positive_passages``, ``negative_passages``): without
  ``corpus=``, the corpus is the passages of the rows; the passages' labels are not used.

The offline demo task built from the standard-library code-search set (``build_stdlib_open_qa``) lives with the
demo data in ``recipes/stdlib_codesearch.py``.

Example:
    >>> data = load_open_qa([{"question": "who wrote Hamlet", "answers": ["Shakespeare"]}],
    ...                     corpus=[{"docid": "d1", "text": "Hamlet is a play by Shakespeare."}])
    >>> data.queries[0]["answers"], data.num_docs
    (['Shakespeare'], 1)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from ..errors import DataFormatError
from .rows import open_rows
from .tevatron import CorpusStore, read_corpus_rows

OPEN_QA_FEATURES = datasets.Features({"query_id": datasets.Value("string"), "query": datasets.Value("string"),
                                      "answers": datasets.List(datasets.Value("string"))})
QUESTION_COLUMNS = ("question", "query")
ANSWER_COLUMNS = ("answers", "answer")
ID_COLUMNS = ("query_id", "id", "question_id", "qid")
PASSAGE_COLUMNS = ("positive_passages", "negative_passages")


@dataclass
class OpenQAData:
    """Questions with answers (no positives) and a corpus keyed by ``doc_id``."""

    queries: datasets.Dataset
    corpus: datasets.Dataset
    name: str = "open-qa"

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_docs(self) -> int:
        return len(self.corpus)

    def validate(self) -> None:
        """Raise :class:`DataFormatError` naming the first bad row."""
        if len(self.corpus) == 0:
            raise DataFormatError(f"{self.name}: the corpus is empty")
        if len(self.queries) == 0:
            raise DataFormatError(f"{self.name}: the question set is empty")
        ids = Counter(self.corpus["doc_id"])
        dup = next((d for d, n in ids.items() if n > 1), None)
        if dup is not None:
            raise DataFormatError(f"{self.name}: duplicate doc id {dup!r} in the corpus")
        seen: set[str] = set()
        for qid, answers in zip(self.queries["query_id"], self.queries["answers"]):
            if qid in seen:
                raise DataFormatError(f"{self.name}: duplicate query id {qid!r}")
            seen.add(qid)
            if not answers or not any(a.strip() for a in answers):
                raise DataFormatError(f"{self.name}: question {qid!r} has no answer")


def is_open_qa(queries: Any) -> bool:
    """Whether a queries Dataset is reader-supervised data (``answers`` and no ``positive_ids``)."""
    cols = getattr(queries, "column_names", None) or []
    return "answers" in cols and "positive_ids" not in cols


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        out = [value]
    elif isinstance(value, Mapping):  # TriviaQA: {"value": ..., "aliases": [...]}
        out = [value.get("value") or value.get("Value")] + list(value.get("aliases") or value.get("Aliases") or [])
    elif isinstance(value, (list, tuple)):
        out = list(value)
    else:
        raise DataFormatError(f"{where}: 'answers' must be a string, a list of strings or a TriviaQA answer object, "
                              f"got {type(value).__name__}")
    out = [str(a).strip() for a in out if a is not None and str(a).strip()]
    if not out:
        raise DataFormatError(f"{where}: the question has no non-empty answer")
    return list(dict.fromkeys(out))


def load_open_qa(questions: Any, corpus: Any = None, split: str = "train", name: str | None = None,
                 title_sep: str = " ") -> OpenQAData:
    """Read questions with answers and a corpus (see the module docstring); errors name the file and row."""
    rows = open_rows(questions, split=split, label=name)
    store = CorpusStore()
    if corpus is not None:
        read_corpus_rows(open_rows(corpus, split=split, label="corpus"), store, title_sep)
    q: dict[str, list] = {"query_id": [], "query": [], "answers": []}
    for i, (where, row) in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{where}: expected an object/dict row, got {type(row).__name__}")
        qcol = next((c for c in QUESTION_COLUMNS if c in row), None)
        acol = next((c for c in ANSWER_COLUMNS if c in row), None)
        if qcol is None or acol is None:
            raise DataFormatError(f"{where}: an open-QA row needs a question ({' or '.join(QUESTION_COLUMNS)}) and "
                                  f"answers ({' or '.join(ANSWER_COLUMNS)}); it has {sorted(row)}")
        text = row[qcol]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: empty question in field {qcol!r}")
        idcol = next((c for c in ID_COLUMNS if c in row), None)
        q["query_id"].append(str(row[idcol]) if idcol else str(i))
        q["query"].append(text)
        q["answers"].append(_answers(row[acol], where))
        if corpus is None:
            if not any(c in row for c in PASSAGE_COLUMNS):
                raise DataFormatError(f"{where}: no corpus: pass corpus= (passages with docid and text), or rows with "
                                      f"Tevatron's {' / '.join(PASSAGE_COLUMNS)}")
            for col in PASSAGE_COLUMNS:
                for j, p in enumerate(row.get(col) or []):
                    pid = p.get("docid", p.get("doc_id")) if isinstance(p, Mapping) else None
                    if pid is None or not str(p.get("text", "")).strip():
                        raise DataFormatError(f"{where}: {col}[{j}] needs 'docid' and 'text'")
                    title = p.get("title") or ""
                    store.add(str(pid), (title + title_sep if title else "") + p["text"], f"{where} {col}[{j}]")
    if not q["query"]:
        raise DataFormatError(f"{rows.label}: no questions")
    data = OpenQAData(datasets.Dataset.from_dict(q, features=OPEN_QA_FEATURES), store.dataset(rows.label),
                      name or rows.label)
    data.validate()
    return data
