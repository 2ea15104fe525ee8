"""Load a BEIR-format folder into :class:`~hf_corrector.data.format.RetrievalData`.

A BEIR folder holds

* ``corpus.jsonl``: one JSON object a line with ``_id``, ``text`` and an optional ``title``;
* ``queries.jsonl``: one JSON object a line with ``_id`` and ``text``;
* ``qrels/<split>.tsv``: a header ``query-id<TAB>corpus-id<TAB>score`` and one judgement a line.

A document's text is ``title + title_sep + text`` (stripped; just ``text`` when there is no title). Judgements
with ``score > 0`` are positives; ``score <= 0`` rows are ignored (their number is logged). Only the queries
that the split's qrels name (with at least one positive) are returned; the corpus is the whole ``corpus.jsonl``.

Every problem in the files raises :class:`~hf_corrector.errors.DataFormatError` naming the file and the line.

Example:
    >>> from hf_corrector.data.beir import load_beir
    >>> data = load_beir("../shared/data/scifact", split="train")  # doctest: +SKIP
    >>> data.num_docs, data.num_queries  # doctest: +SKIP
    (5183, 809)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from ..cache.ids import json_type as _json_type
from ..cache.ids import normalize_id
from ..errors import DataFormatError
from .format import CORPUS_FEATURES, QUERY_FEATURES, RetrievalData

logger = logging.getLogger(__name__)

_QRELS_HEADER_FIRST = {"query-id", "query_id", "queryid", "qid", "query"}


def iter_jsonl(path: str | os.PathLike[str], label: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

    The file is read as bytes and decoded line by line, so a bad byte, a line that is not JSON, or a JSON value
    that is not an object raises :class:`DataFormatError` naming ``label`` (default: the path) and the line.
    Blank lines are skipped and counted in a log message.
    """
    label = label or str(path)
    for lineno, line in iter_text_lines(path, label):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
            raise DataFormatError(f"{label}:{lineno}: not valid JSON ({reason})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{label}:{lineno}: expected a JSON object, got {_json_type(obj)}")
        if "\\ud" in line or "\\uD" in line:
            _check_no_surrogates(obj, label, lineno)
        yield lineno, obj


def iter_text_lines(path: str | os.PathLike[str], label: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each non-blank line of a UTF-8 text file (a leading BOM is dropped).

    The file is read as bytes and decoded line by line, so a bad byte raises :class:`DataFormatError` naming
    ``label`` (default: the path), the line and the byte offset. Blank lines are skipped and counted in a log message.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv"
        >>> _ = p.write_bytes(b"a\\tb\\n\\nc\\n")
        >>> list(iter_text_lines(p))
        [(1, 'a\\tb\\n'), (3, 'c\\n')]
    """
    label = label or str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise DataFormatError(f"{label}: cannot open the file ({err.strerror or err})") from None
    blank = 0
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 4]
                raise DataFormatError(
                    f"{label}:{lineno}: not valid UTF-8 (byte offset {err.start} in the line: {bad!r})"
                ) from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line.strip():
                blank += 1
                continue
            yield lineno, line
    if blank:
        logger.info("%s: skipped %d blank line(s)", label, blank)


def _check_no_surrogates(value: Any, label: str, lineno: int) -> None:
    """JSON may escape lone UTF-16 surrogates (``"\\ud800"``), which are not valid text; reject them."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataFormatError(f"{label}:{lineno}: a string holds an unpaired UTF-16 surrogate escape") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_no_surrogates(k, label, lineno)
            _check_no_surrogates(v, label, lineno)
    elif isinstance(value, list):
        for v in value:
            _check_no_surrogates(v, label, lineno)


def _id_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    """A string (or integer) id from ``obj[key]``, as str; raises naming ``where`` otherwise."""
    if key not in obj:
        raise DataFormatError(f"{where}: missing field {key!r}")
    return _as_id(obj[key], where, f"field {key!r}")


def _as_id(value: Any, where: str, what: str) -> str:
    """``value`` as an id string, by the one normalisation of every loader and the cache
    (:func:`~hf_corrector.cache.ids.normalize_id`; a wrong type named as JSON names it); raises naming ``where``."""
    return normalize_id(value, where, what, json_names=True)


def _text_field(obj: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    """A string field; a missing or null optional field reads as ``""``."""
    if key not in obj or obj[key] is None:
        if required:
            raise DataFormatError(
                f"{where}: missing field {key!r}" if key not in obj else f"{where}: field {key!r} is null"
            )
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {_json_type(value)}")
    return value


def to_dataset(columns: dict[str, list[Any]], features: datasets.Features, label: str) -> datasets.Dataset:
    """Build a Dataset straight from Python lists through Arrow (much faster than ``Dataset.from_dict`` with
    features); a value Arrow cannot store (text with an unpaired surrogate) raises :class:`DataFormatError`
    naming the row's id and the column."""
    try:
        table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    except (pa.ArrowException, UnicodeError, TypeError, ValueError) as err:
        raise DataFormatError(f"{label}: {_locate_unstorable(columns)} ({type(err).__name__})") from None
    return datasets.Dataset(table)


def _locate_unstorable(columns: dict[str, list[Any]]) -> str:
    id_column = next((c for c in ("query_id", "doc_id") if c in columns), None)
    for name, values in columns.items():
        for i, value in enumerate(values):
            for item in value if isinstance(value, list) else [value]:
                if not _is_storable_text(item):
                    who = f"{id_column} {columns[id_column][i]!r}" if id_column and name != id_column else f"row {i}"
                    return f"{who}: column {name!r} holds a value that is not valid text"
    return "a value cannot be stored"


def _is_storable_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def join_title(title: str, text: str, title_sep: str = " ") -> str:
    """``title + title_sep + text`` stripped, or just ``text`` stripped when the title is blank."""
    title = title.strip()
    text = text.strip()
    if title and text:
        return f"{title}{title_sep}{text}".strip()
    return title or text


def _read_corpus(path: Path, title_sep: str) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    label = str(path)
    for lineno, obj in iter_jsonl(path, label):
        where = f"{label}:{lineno}"
        doc_id = _id_field(obj, "_id", where)
        text = _text_field(obj, "text", where)
        title = _text_field(obj, "title", where, required=False)
        if doc_id in seen:
            raise DataFormatError(f"{where}: duplicate doc id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        full = join_title(title, text, title_sep)
        if not full:
            raise DataFormatError(f"{where}: empty text (and title) for doc id {doc_id!r}")
        ids.append(doc_id)
        texts.append(full)
    if not ids:
        raise DataFormatError(f"{label}: the corpus is empty (no JSON lines)")
    return ids, texts


def _read_queries(path: Path) -> dict[str, tuple[str, int]]:
    """Query id -> (text, line), in file order."""
    label = str(path)
    queries: dict[str, tuple[str, int]] = {}
    for lineno, obj in iter_jsonl(path, label):
        where = f"{label}:{lineno}"
        qid = _id_field(obj, "_id", where)
        text = _text_field(obj, "text", where)
        if qid in queries:
            raise DataFormatError(f"{where}: duplicate query id {qid!r} (first on line {queries[qid][1]})")
        if not text.strip():
            raise DataFormatError(f"{where}: empty text for query id {qid!r}")
        queries[qid] = (text.strip(), lineno)
    if not queries:
        raise DataFormatError(f"{label}: the query set is empty (no JSON lines)")
    return queries


def _read_qrels(
    path: Path, queries: Mapping[str, Any], doc_ids: set[str], queries_label: str, corpus_label: str
) -> dict[str, list[str]]:
    """Query id -> positive doc ids (file order, deduplicated) from a qrels TSV file."""
    label = str(path)
    positives: dict[str, list[str]] = {}
    pos_sets: dict[str, set[str]] = {}
    judged: set[str] = set()
    non_positive = duplicates = rows = 0
    first = True
    for lineno, line in iter_text_lines(path, label):
        body = line.rstrip("\r\n")
        cols = body.split("\t") if "\t" in body else body.split()
        cols = [c.strip() for c in cols]
        if first:
            first = False
            if len(cols) == 3 and cols[0].lower() in _QRELS_HEADER_FIRST and not _is_number(cols[2]):
                continue  # the header line
        if len(cols) != 3:
            raise DataFormatError(
                f"{label}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}"
            )
        qid, did, score_text = cols
        if not qid or not did:
            raise DataFormatError(f"{label}:{lineno}: empty {'query' if not qid else 'corpus'} id")
        qid, did = _as_id(qid, f"{label}:{lineno}", "query id"), _as_id(did, f"{label}:{lineno}", "corpus id")
        try:
            score = float(score_text)
        except ValueError:
            raise DataFormatError(f"{label}:{lineno}: score {score_text!r} is not a number") from None
        if not math.isfinite(score):
            raise DataFormatError(f"{label}:{lineno}: score {score_text!r} is not a finite number")
        if qid not in queries:
            raise DataFormatError(f"{label}:{lineno}: query id {qid!r} is not in {queries_label}")
        if did not in doc_ids:
            raise DataFormatError(f"{label}:{lineno}: corpus id {did!r} is not in {corpus_label}")
        rows += 1
        judged.add(qid)
        if score <= 0:
            non_positive += 1
            continue
        seen = pos_sets.setdefault(qid, set())
        if did in seen:
            duplicates += 1
            continue
        seen.add(did)
        positives.setdefault(qid, []).append(did)
    if non_positive:
        logger.info("%s: ignored %d judgement(s) with score <= 0", label, non_positive)
    if duplicates:
        logger.warning("%s: ignored %d repeated positive judgement(s)", label, duplicates)
    no_positive = len(judged) - len(positives)
    if no_positive:
        logger.info("%s: dropped %d query(ies) judged only with score <= 0", label, no_positive)
    if not positives:
        raise DataFormatError(
            f"{label}: the query set is empty (no judgement with score > 0 among {rows} judgement line(s))"
        )
    return positives


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def available_splits(path: str | os.PathLike[str]) -> list[str]:
    """The split names of a BEIR folder (the ``qrels/*.tsv`` file stems), sorted."""
    qrels = Path(path) / "qrels"
    if not qrels.is_dir():
        return []
    return sorted(p.stem for p in qrels.glob("*.tsv") if p.is_file())


def is_beir_folder(path: Any) -> bool:
    """True if ``path`` is a local folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        p = Path(path)
        return (
            p.is_dir()
            and (p / "corpus.jsonl").is_file()
            and (p / "queries.jsonl").is_file()
            and (p / "qrels").is_dir()
        )
    except (OSError, ValueError):
        return False


def load_beir(
    path: str | os.PathLike[str], split: str = "train", title_sep: str = " ", validate: bool = True
) -> RetrievalData:
    """Load the ``split`` of the BEIR folder at ``path``.

    Args:
        path: folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: the qrels file to use (``qrels/<split>.tsv``).
        title_sep: put between a document's title and its text.
        validate: run :meth:`RetrievalData.validate` on the result (the loader already checks ids as it reads).

    Raises:
        DataFormatError: naming the file and line of the first problem, or the missing file / split.
    """
    root = Path(path)
    if not root.exists():
        raise DataFormatError(f"{root}: no such BEIR folder")
    if not root.is_dir():
        raise DataFormatError(
            f"{root}: is not a folder (a BEIR dataset is a folder with corpus.jsonl, queries.jsonl, qrels/)"
        )
    corpus_path = root / "corpus.jsonl"
    queries_path = root / "queries.jsonl"
    qrels_dir = root / "qrels"
    for needed in (corpus_path, queries_path):
        if not needed.is_file():
            raise DataFormatError(f"{needed}: missing file (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/)")
    if not qrels_dir.is_dir():
        raise DataFormatError(f"{qrels_dir}: missing folder (a BEIR folder needs qrels/<split>.tsv)")
    qrels_path = qrels_dir / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(root)
        raise DataFormatError(
            f"{qrels_path}: missing file: no split {split!r}; available splits: "
            f"{', '.join(repr(s) for s in splits) if splits else 'none (qrels/ has no .tsv file)'}"
        )

    doc_ids, doc_texts = _read_corpus(corpus_path, title_sep)
    queries = _read_queries(queries_path)
    positives = _read_qrels(qrels_path, queries, set(doc_ids), str(queries_path), str(corpus_path))

    q_ids = [qid for qid in queries if qid in positives]
    name = f"{root.name or root}:{split}"
    corpus = to_dataset({"doc_id": doc_ids, "text": doc_texts}, CORPUS_FEATURES, name)
    qds = to_dataset(
        {
            "query_id": q_ids,
            "query": [queries[q][0] for q in q_ids],
            "positive_ids": [positives[q] for q in q_ids],
            "negative_ids": [[] for _ in q_ids],
        },
        QUERY_FEATURES,
        name,
    )
    data = RetrievalData(queries=qds, corpus=corpus, name=name)
    if validate:
        data.validate()
    logger.info(
        "loaded BEIR %s split %r: %d queries, %d docs, %d positive judgements",
        root,
        split,
        len(qds),
        len(corpus),
        sum(len(positives[q]) for q in q_ids),
    )
    return data


__all__ = ["available_splits", "is_beir_folder", "iter_jsonl", "join_title", "load_beir", "to_dataset"]
