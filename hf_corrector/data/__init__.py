"""Data loaders: every supported format becomes one :class:`RetrievalData` (queries + corpus).

* :func:`load_beir`: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
* :func:`load_tevatron`: Tevatron rows (``positive_passages`` or ``positive_document_ids`` + ``corpus=``);
* :func:`load_pairs`: sentence-transformers columns (anchor, positive, negatives...);
* :func:`load_retrieval_data`: picks one of the first three from what ``source`` looks like.

Example:
    >>> from hf_corrector.data import load_retrieval_data
    >>> data = load_retrieval_data("../shared/data/scifact", split="test")  # doctest: +SKIP
    >>> data.num_queries, data.num_docs  # doctest: +SKIP
    (300, 5183)
    >>> load_retrieval_data({"anchor": ["a question"], "positive": ["an answer"]}).num_docs
    1
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from .beir import is_beir_folder, load_beir
from .format import RetrievalData
from .sentence_transformers_format import load_pairs
from .rows import open_rows
from .tevatron import iter_tevatron_rows, load_tevatron

logger = logging.getLogger(__name__)

_FORMATS = {
    "auto": "auto",
    "beir": "beir",
    "tevatron": "tevatron",
    "pairs": "pairs",
    "st": "pairs",
    "sentence-transformers": "pairs",
    "sentence_transformers": "pairs",
}
_TEVATRON_COLUMNS = ("positive_passages", "positive_document_ids")


def _looks_like_beir(source: Any) -> bool:
    """A local folder with any of BEIR's parts (so a half-BEIR folder gets BEIR's missing-file error)."""
    if is_beir_folder(source):
        return True
    if not isinstance(source, (str, os.PathLike)):
        return False
    try:
        p = Path(source)
        return p.is_dir() and any((p / part).exists() for part in ("corpus.jsonl", "queries.jsonl", "qrels"))
    except (OSError, ValueError):
        return False


def load_retrieval_data(
    source: Any, split: str = "train", corpus: Any = None, format: str = "auto", **kwargs: Any
) -> RetrievalData:
    """Load ``source`` in whichever supported format it is in.

    Args:
        source: a BEIR folder, Tevatron or sentence-transformers data (a Dataset / DatasetDict, a list of dicts,
            a dict of columns, a local file or folder, a Hub repo id), or a :class:`RetrievalData` (returned as is).
        split: the split to read.
        corpus: the corpus for Tevatron's id layout (see :func:`load_tevatron`).
        format: ``"auto"`` (detect), ``"beir"``, ``"tevatron"`` or ``"pairs"`` (``"sentence-transformers"``).
        **kwargs: passed to the chosen loader.

    Detection: a local folder with ``corpus.jsonl`` / ``queries.jsonl`` / ``qrels/`` is BEIR; data with a
    ``positive_passages`` or ``positive_document_ids`` column is Tevatron; anything else is read as
    sentence-transformers columns.
    """
    if not isinstance(format, str) or format.lower() not in _FORMATS:
        raise ConfigError(f"unknown data format {format!r}; use one of {sorted(_FORMATS)}")
    fmt = _FORMATS[format.lower()]
    if isinstance(source, RetrievalData):
        return source
    if fmt == "beir" or (fmt == "auto" and _looks_like_beir(source)):
        if corpus is not None:
            raise ConfigError("corpus= is not used with a BEIR folder (its corpus is corpus.jsonl)")
        if not isinstance(source, (str, os.PathLike)):
            raise ConfigError(f"a BEIR dataset is a local folder path, got a {type(source).__name__}")
        return load_beir(source, split=split, **kwargs)
    label = "pairs" if isinstance(source, (list, tuple, Mapping)) and fmt != "tevatron" else None
    rows = open_rows(source, split=split, label=label)
    if fmt == "auto":
        columns = rows.columns
        if columns is None:
            first = next(iter(rows), None)
            if first is None:
                raise DataFormatError(f"{rows.label}: no rows")
            columns = list(first[1].keys()) if isinstance(first[1], Mapping) else []
        fmt = "tevatron" if any(c in columns for c in _TEVATRON_COLUMNS) else "pairs"
        logger.info("%s: detected the %s format (columns %s)", rows.label, fmt, columns)
    if fmt == "tevatron":
        return load_tevatron(rows, corpus=corpus, split=split, **kwargs)
    if corpus is not None:
        raise ConfigError("corpus= is only used with Tevatron's id layout (positive_document_ids)")
    return load_pairs(rows, split=split, **kwargs)


__all__ = [
    "RetrievalData",
    "iter_tevatron_rows",
    "load_beir",
    "load_pairs",
    "load_retrieval_data",
    "load_tevatron",
]
