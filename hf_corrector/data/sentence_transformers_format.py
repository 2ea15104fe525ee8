"""Load sentence-transformers style pair / triplet data into :class:`~hf_corrector.data.format.RetrievalData`.

sentence-transformers reads training columns by position: the first is the anchor (query), the second the
positive, any further columns are negatives. Columns named ``anchor``, ``positive``, ``negative`` and
``negative_1``, ``negative_2``, ... are recognised by name. A negative column may also hold a list of texts per row
(several hard negatives). Named columns can also be given explicitly.

Labels: a ``label`` / ``labels`` column of 0 / 1 (``mine_hard_negatives(output_format="labeled-pair")``, or
``"labeled-list"``: a list of texts and a list of labels per row) marks each second-column text a positive (1) or a
negative (0) of its anchor. A ``score`` column beside pairs with no negative column cannot say which text is a
positive (``labeled-pair`` with ``output_scores=True``, or similarity data) and is refused; ``scores`` beside
negative columns (``triplet`` / ``n-tuple`` with ``output_scores=True``) are ignored with a warning.

Texts have no ids in this format, so ids are made from the text: ``doc_id = sha1(text)[:16]`` for every unique
positive / negative text (the corpus), ``query_id = sha1(anchor)[:16]``. Rows with the same anchor merge into
one query with all their positives (and negatives).

Example:
    >>> from hf_corrector.data.sentence_transformers_format import load_pairs
    >>> rows = {"anchor": ["what is a cat", "what is a cat", "why is the sky blue"],
    ...         "positive": ["A cat is a small animal.", "Cats purr.", "Rayleigh scattering."]}
    >>> data = load_pairs(rows)
    >>> data.num_queries, data.num_docs, len(data.queries[0]["positive_ids"])
    (2, 3, 2)
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from ..errors import ConfigError, DataFormatError
from .beir import _json_type, to_dataset
from .format import CORPUS_FEATURES, QUERY_FEATURES, RetrievalData
from .rows import open_rows, row_columns

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "labels", "score", "scores")
_NEGATIVE_N = re.compile(r"^negative_(\d+)$")


def text_id(text: str) -> str:
    """The stable id of a text: the first 16 hex digits of its UTF-8 SHA-1."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def detect_columns(
    columns: Sequence[str],
    anchor_column: str | None = None,
    positive_column: str | None = None,
    negative_columns: Sequence[str] | str | None = None,
) -> tuple[str, str, list[str]]:
    """Pick ``(anchor, positive, negatives)`` among ``columns`` (see the module docstring).

    Raises:
        ConfigError: a named column is missing, or fewer than two text columns.
    """
    columns = list(columns)
    if isinstance(negative_columns, str):
        negative_columns = [negative_columns]
    for given in [anchor_column, positive_column, *(negative_columns or [])]:
        if given is not None and given not in columns:
            raise ConfigError(f"column {given!r} is not in the data; columns: {columns}")
    ignored = [c for c in columns if c.lower() in LABEL_COLUMNS and c not in (anchor_column, positive_column)]
    free = [c for c in columns if c not in ignored]  # load_pairs reads the labels and warns about the rest
    if anchor_column is None:
        taken = {positive_column, *(negative_columns or [])}
        anchor_column = "anchor" if "anchor" in free else next((c for c in free if c not in taken), None)
    if anchor_column is None:
        raise ConfigError(f"no anchor column among {columns}")
    free = [c for c in free if c != anchor_column]
    if positive_column is None:
        positive_column = (
            "positive" if "positive" in free else next((c for c in free if c not in (negative_columns or [])), None)
        )
    if positive_column is None:
        raise ConfigError(f"pairs data needs at least two text columns (anchor, positive); got {columns}")
    if positive_column == anchor_column:
        raise ConfigError(f"the anchor and positive columns are the same ({anchor_column!r})")
    free = [c for c in free if c != positive_column]
    if negative_columns is None:
        named = [c for c in free if c == "negative" or _NEGATIVE_N.match(c)]
        if named:
            negative_columns = sorted(
                named, key=lambda c: -1 if c == "negative" else int(_NEGATIVE_N.match(c).group(1))
            )
            rest = [c for c in free if c not in negative_columns]
            if rest:
                logger.warning("ignoring column(s) %s next to the named negative columns", rest)
        else:
            negative_columns = free
    negatives = list(negative_columns)
    clash = {anchor_column, positive_column} & set(negatives)
    if clash:
        raise ConfigError(f"column(s) {sorted(clash)} are used both as negatives and as anchor / positive")
    return anchor_column, positive_column, negatives


def load_pairs(
    dataset: Any,
    anchor_column: str | None = None,
    positive_column: str | None = None,
    negative_columns: Sequence[str] | str | None = None,
    split: str = "train",
    validate: bool = True,
    name: str | None = None,
) -> RetrievalData:
    """Load (anchor, positive[, negatives...]) rows as :class:`RetrievalData`.

    Args:
        dataset: a Dataset / DatasetDict, a dict of columns, a list of dicts, a local file or folder, or a Hub id.
        anchor_column, positive_column, negative_columns: column names (default: detected, see
            :func:`detect_columns`).
        split: the split to read (DatasetDicts, folders, Hub ids).
        validate: run :meth:`RetrievalData.validate` on the result.
        name: the result's name (default: the input's label).

    Raises:
        DataFormatError: an anchor or positive that is missing, not a string or empty (naming the row and
            column), or no rows.
        ConfigError: bad column names.
    """
    rows = open_rows(dataset, split=split, label="pairs" if isinstance(dataset, (list, tuple, Mapping)) else None)
    columns = row_columns(rows)
    anchor_col, pos_col, neg_cols = detect_columns(columns, anchor_column, positive_column, negative_columns)
    label_col = _label_column(columns, (anchor_col, pos_col, *neg_cols), neg_cols, rows.label)
    _check_feature_types(rows.dataset, [anchor_col, pos_col, *neg_cols], neg_cols + ([pos_col] if label_col else []),
                         rows.label)

    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    positives: dict[str, dict[str, None]] = {}
    negatives: dict[str, dict[str, None]] = {}
    skipped_neg = merged_rows = n_rows = 0

    def doc(text: str, where: str) -> str:
        did = _hash(text, where)
        old = docs.setdefault(did, text)
        if old != text:
            raise DataFormatError(f"{where}: two different texts share the hash id {did!r}")
        return did

    for where, row in rows.iter([anchor_col, pos_col, *neg_cols, *([label_col] if label_col else [])]):
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{where}: expected an object/dict row, got {_json_type(row)}")
        n_rows += 1
        anchor = _required_text(row, anchor_col, where)
        qid = _hash(anchor, f"{where} column {anchor_col!r}")
        old = queries.setdefault(qid, anchor)
        if old != anchor:
            raise DataFormatError(f"{where}: two different anchors share the hash id {qid!r}")
        if qid in positives:
            merged_rows += 1
        pos = positives.setdefault(qid, {})
        negs = negatives.setdefault(qid, {})
        for text, is_positive, at in _labeled_texts(row, pos_col, label_col, where):
            (pos if is_positive else negs)[doc(text, at)] = None
        for col in neg_cols:
            value = row.get(col)
            values = value if isinstance(value, list) else [value]  # a column may hold a list of negatives
            for k, item in enumerate(values):
                at = f"{where} column {col!r}" + (f"[{k}]" if isinstance(value, list) else "")
                if item is None or (isinstance(item, str) and not item.strip()):
                    skipped_neg += 1
                    continue
                if not isinstance(item, str):
                    raise DataFormatError(f"{at}: a negative must be a string, got {_json_type(item)}")
                negs[doc(item, at)] = None

    label = rows.label
    if not queries:
        raise DataFormatError(f"{label}: no rows")
    if skipped_neg:
        logger.warning("%s: skipped %d missing or empty negative value(s)", label, skipped_neg)
    if merged_rows:
        logger.info("%s: merged %d row(s) repeating an earlier anchor into its query", label, merged_rows)
    neg_lists: list[list[str]] = []
    dropped = 0
    for qid in queries:
        pos = positives[qid]
        kept = [d for d in negatives[qid] if d not in pos]
        dropped += len(negatives[qid]) - len(kept)
        neg_lists.append(kept)
    if dropped:
        logger.warning("%s: dropped %d negative(s) equal to a positive of the same anchor", label, dropped)

    qids = list(queries)
    qds = to_dataset(
        {
            "query_id": qids,
            "query": [queries[q] for q in qids],
            "positive_ids": [list(positives[q]) for q in qids],
            "negative_ids": neg_lists,
        },
        QUERY_FEATURES,
        label,
    )
    cds = to_dataset({"doc_id": list(docs), "text": list(docs.values())}, CORPUS_FEATURES, label)
    data = RetrievalData(queries=qds, corpus=cds, name=name or label)
    if validate:
        data.validate()
    logger.info(
        "loaded pairs %s (anchor=%r, positive=%r, negatives=%s): %d rows -> %d queries, %d unique docs",
        label,
        anchor_col,
        pos_col,
        neg_cols,
        n_rows,
        len(qds),
        len(cds),
    )
    return data


def _label_column(columns: Sequence[str], texts: Sequence[str], negatives: Sequence[str], label: str) -> str | None:
    """The 0 / 1 label column, if any; refuse a ``score`` column that would be the only way to tell a pair's
    positive from a negative; warn about the label-like columns that are ignored."""
    spare = [c for c in columns if c.lower() in LABEL_COLUMNS and c not in texts]
    label_col = next((c for c in spare if c.lower() in ("label", "labels")), None)
    if label_col is None and not negatives and any(c.lower() == "score" for c in spare):
        raise DataFormatError(
            f"{label}: a {[c for c in spare if c.lower() == 'score'][0]!r} column beside (anchor, text) pairs cannot "
            "say which texts are positives (mine_hard_negatives(output_format='labeled-pair', output_scores=True) "
            "gives negatives their own rows): mine with output_format='triplet' or 'n-tuple', or 'labeled-pair' "
            "without output_scores (a 0 / 1 label), or drop the column if every pair is a positive")
    ignored = [c for c in spare if c != label_col]
    if ignored:
        logger.warning("ignoring non-text column(s) %s (pairs data uses anchor / positive / negative columns)",
                       ignored)
    return label_col


def _labeled_texts(row: Mapping[str, Any], column: str, label_col: str | None, where: str):
    """``(text, is_positive, location)`` for the second column: one positive, or with a label column each text
    (one, or a list for ``labeled-list``) a positive (label 1) or a negative (label 0)."""
    if label_col is None:
        yield _required_text(row, column, where), True, f"{where} column {column!r}"
        return
    texts, labels = row.get(column), row.get(label_col)
    listed = isinstance(texts, list)
    if listed != isinstance(labels, list) or (listed and len(texts) != len(labels)):
        raise DataFormatError(f"{where}: column {label_col!r} must hold one label per text of column {column!r}, "
                              f"got {_json_type(labels)} for {_json_type(texts)}")
    for k, (text, value) in enumerate(zip(texts, labels) if listed else [(texts, labels)]):
        at = f"{where} column {column!r}" + (f"[{k}]" if listed else "")
        if value is None or isinstance(value, str) or value not in (0, 1):
            raise DataFormatError(f"{at}: label {value!r} in column {label_col!r} is not 0 or 1 (a negative or a "
                                  "positive of the anchor)")
        yield _required_text({column: text}, column, at), bool(value), at


def _required_text(row: Mapping[str, Any], column: str, where: str) -> str:
    if column not in row or row[column] is None:
        raise DataFormatError(f"{where}: column {column!r} is missing or null")
    value = row[column]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: column {column!r} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise DataFormatError(f"{where}: column {column!r} is empty")
    return value


def _hash(text: str, where: str) -> str:
    try:
        return text_id(text)
    except UnicodeEncodeError:
        raise DataFormatError(f"{where}: the text holds an unpaired UTF-16 surrogate") from None


def _is_string_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _check_feature_types(ds: datasets.Dataset | None, columns: list[str], negatives: list[str], label: str) -> None:
    """With a Dataset, reject non-string text columns up front (naming the column and its type); a negative
    column may also hold lists of strings."""
    if ds is None:
        return
    for col in columns:
        feature = ds.features.get(col)
        if _is_string_feature(feature):
            continue
        if col in negatives and _is_string_feature(getattr(feature, "feature", None)):  # List(Value("string"))
            continue
        raise DataFormatError(f"{label}: column {col!r} must hold strings, its type is {feature}")


__all__ = ["detect_columns", "load_pairs", "text_id"]
