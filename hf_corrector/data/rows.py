"""Rows from any input, each with a location for error messages: a :class:`datasets.Dataset` / ``DatasetDict`` /
``IterableDataset``, a list of dicts, a dict of columns, a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.arrow``
file, a local folder (data files, or a ``save_to_disk`` folder) or a Hub dataset id.

What ``datasets`` reads, ``datasets`` reads: Hub ids go through ``datasets.load_dataset(repo, split=split)``,
``save_to_disk`` folders through ``datasets.load_from_disk``, Parquet / Arrow files through
``Dataset.from_parquet`` / ``Dataset.from_file``, and in-memory Datasets are read in batches with their schema.

JSON and JSON lines files, lists of dicts and dicts of columns are read here rather than through
``load_dataset("json")`` / ``Dataset.from_list`` / ``Dataset.from_dict``, because a malformed input must fail
naming its file and line (``train.jsonl:2: not valid JSON``, ``train.jsonl:2 (query_id '2') positive_passages[0]:
...``): ``datasets`` reports a broken line as an Arrow parse error without its line, builds a row index (not a
line) for field errors, rejects mixed int / string ids that the loaders accept (``Dataset.from_list([{"a": 1},
{"a": "x"}])`` raises ``ArrowInvalid``), and ``load_dataset`` writes a cached Arrow copy of every local file.

Example:
    >>> rows = open_rows([{"query_id": "1", "query": "q"}])
    >>> [where for where, _ in rows], row_columns(rows)
    (['rows row 0'], ['query_id', 'query'])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from ..errors import ConfigError, DataFormatError
from .beir import _json_type, iter_jsonl

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


@dataclass
class RowSource:
    """Rows to read, each with a location string for error messages (``"file.jsonl:3"``, ``"... row 3"``)."""

    label: str
    columns: list[str] | None
    _make_iter: Callable[[list[str] | None], Iterator[tuple[str, Any]]] = field(repr=False)
    dataset: datasets.Dataset | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._make_iter(None)

    def iter(self, columns: list[str] | None = None) -> Iterator[tuple[str, Any]]:
        """Iterate, reading only ``columns`` where the backing store allows it (a Dataset)."""
        return self._make_iter(columns)


def _dataset_source(ds: datasets.Dataset, label: str, batch_size: int = 1000) -> RowSource:
    def make(columns: list[str] | None) -> Iterator[tuple[str, Any]]:
        view = ds.with_format(None)
        cols = [c for c in (columns or view.column_names) if c in view.column_names]
        if cols != view.column_names:
            view = view.select_columns(cols)
        n = len(view)
        for start in range(0, n, batch_size):
            batch = view[start : start + batch_size]
            size = len(batch[cols[0]]) if cols else min(batch_size, n - start)
            for j in range(size):
                yield f"{label} row {start + j}", {c: batch[c][j] for c in cols}

    return RowSource(label=label, columns=list(ds.column_names), _make_iter=make, dataset=ds)


def _list_source(rows: list[tuple[str, Any]], label: str) -> RowSource:
    columns = list(rows[0][1].keys()) if rows and isinstance(rows[0][1], Mapping) else None
    return RowSource(label=label, columns=columns, _make_iter=lambda _cols: iter(rows))


def _iterable_dataset_source(ds: Any, label: str) -> RowSource:
    def make(_cols: list[str] | None) -> Iterator[tuple[str, Any]]:
        try:
            for i, row in enumerate(ds):
                yield f"{label} row {i}", row
        except (OSError, ValueError, TypeError, KeyError) as err:  # streaming read errors
            raise DataFormatError(
                f"{label}: could not read the streamed dataset ({type(err).__name__}: {err})"
            ) from err

    columns = getattr(ds, "column_names", None)
    return RowSource(label=label, columns=list(columns) if columns else None, _make_iter=make)


def _pick_split(dd: Mapping[str, Any], split: str, label: str) -> Any:
    if split not in dd:
        raise DataFormatError(f"{label}: no split {split!r}; available splits: {', '.join(map(repr, dd)) or 'none'}")
    return dd[split]


def _read_json_file(path: Path) -> list[tuple[str, Any]]:
    """A ``.json`` file: one JSON array of objects, or JSON lines."""
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataFormatError(f"{label}: cannot read the file ({err.strerror or err})") from None
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head != b"[":
        return [(f"{label}:{lineno}", obj) for lineno, obj in iter_jsonl(path, label)]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        raise DataFormatError(f"{label}:{lineno}: not valid UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{label}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:
        raise DataFormatError(f"{label}: not valid JSON ({type(err).__name__})") from None
    return [(f"{label}[{i}]", obj) for i, obj in enumerate(value)]


def _read_data_file(path: Path) -> RowSource:
    label = str(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _list_source([(f"{label}:{n}", obj) for n, obj in iter_jsonl(path, label)], label)
    if suffix == ".json":
        return _list_source(_read_json_file(path), label)
    try:
        if suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        elif suffix == ".arrow":
            ds = datasets.Dataset.from_file(str(path))
        else:
            raise DataFormatError(f"{label}: unsupported file type {suffix!r} (use {', '.join(DATA_SUFFIXES)})")
    except DataFormatError:
        raise
    except Exception as err:
        raise DataFormatError(f"{label}: could not read the file ({type(err).__name__}: {err})") from err
    return _dataset_source(ds, label)


def _concat_sources(sources: list[RowSource], label: str) -> RowSource:
    if len(sources) == 1:
        return sources[0]

    def make(cols: list[str] | None) -> Iterator[tuple[str, Any]]:
        for s in sources:
            yield from s.iter(cols)

    return RowSource(label=label, columns=sources[0].columns, _make_iter=make)


def _folder_source(root: Path, split: str) -> RowSource:
    label = str(root)
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as err:
            raise DataFormatError(f"{label}: could not load the saved dataset ({type(err).__name__}: {err})") from err
        return open_rows(loaded, split=split, label=label)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise DataFormatError(f"{label}: the folder holds no data file ({', '.join(DATA_SUFFIXES)})")

    def in_split(p: Path) -> bool:
        stem = p.name.split(".")[0].lower()
        parts = [q.lower() for q in p.relative_to(root).parts[:-1]]
        return (
            stem == split.lower()
            or stem.startswith((f"{split.lower()}-", f"{split.lower()}_"))
            or split.lower() in parts
        )

    chosen = [p for p in files if in_split(p)]
    if not chosen:
        if len(files) == 1:
            logger.info("%s: no file named for split %r; reading its only data file %s", label, split, files[0])
            chosen = files
        else:
            names = ", ".join(str(p.relative_to(root)) for p in files[:10])
            raise DataFormatError(f"{label}: no data file for split {split!r} among: {names}")
    return _concat_sources([_read_data_file(p) for p in chosen], label)


def open_rows(source: Any, split: str = "train", label: str | None = None) -> RowSource:
    """Wrap any supported input as a :class:`RowSource` (see the module docstring for the inputs)."""
    if isinstance(source, RowSource):
        return source
    if isinstance(source, datasets.Dataset):
        name = label or (f"dataset {source.info.dataset_name!r}" if source.info.dataset_name else "dataset")
        return _dataset_source(source, name)
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        name = label or "dataset"
        return open_rows(_pick_split(source, split, name), split=split, label=f"{name}[{split!r}]")
    if isinstance(source, datasets.IterableDataset):
        return _iterable_dataset_source(source, label or "streamed dataset")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.exists():
            if path.is_dir():
                return _folder_source(path, split)
            return _read_data_file(path)
        text = str(source)
        if isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or text.lower().endswith(DATA_SUFFIXES):
            raise DataFormatError(f"{text}: no such file or folder")
        return _hub_source(text, split)
    if isinstance(source, Mapping):
        return _columns_source(source, label or "dict of columns")
    if isinstance(source, Iterable):
        name = label or "rows"
        return _list_source([(f"{name} row {i}", row) for i, row in enumerate(source)], name)
    raise ConfigError(
        f"cannot read data from a {type(source).__name__}: pass a datasets.Dataset, a list of dicts, a local "
        "file or folder, or a Hub repository id"
    )


def _columns_source(columns: Mapping[str, Any], label: str) -> RowSource:
    names = list(columns)
    cols: dict[str, list[Any]] = {}
    for name in names:
        value = columns[name]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise DataFormatError(f"{label}: column {name!r} is not a list")
        cols[name] = list(value)
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise DataFormatError(f"{label}: columns have different lengths ({sorted(lengths)})")
    n = lengths.pop() if lengths else 0
    rows = [(f"{label} row {i}", {name: cols[name][i] for name in names}) for i in range(n)]
    src = _list_source(rows, label)
    src.columns = names
    return src


def _hub_source(repo: str, split: str) -> RowSource:
    label = f"{repo}[{split!r}]"
    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as err:
        raise DataFormatError(
            f"{repo}: not a local file or folder, and loading it from the Hugging Face Hub "
            f"(split {split!r}) failed: {type(err).__name__}: {err}"
        ) from err
    return open_rows(ds, split=split, label=label)


def row_columns(rows: RowSource, empty_message: str = "no rows") -> list[str]:
    """The column names of ``rows``: its schema's, or the keys of its first row for schema-less sources.

    Raises :class:`DataFormatError` (``"<label>: <empty_message>"``) when there is no row, or naming the first row
    when it is not an object.
    """
    if rows.columns is not None:
        return list(rows.columns)
    first = next(iter(rows), None)
    if first is None:
        raise DataFormatError(f"{rows.label}: {empty_message}")
    if not isinstance(first[1], Mapping):
        raise DataFormatError(f"{first[0]}: expected an object/dict row, got {_json_type(first[1])}")
    return list(first[1].keys())



__all__ = ["DATA_SUFFIXES", "RowSource", "open_rows", "row_columns"]
