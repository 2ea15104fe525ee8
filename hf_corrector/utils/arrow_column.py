"""A dataset column read in place (no Python list of N objects) and a compact value -> row index over it.

At 10^6 corpus rows, ``list(corpus["text"])`` and ``{doc_id: row}`` cost some 250 MB of Python objects in *every*
process, however the cache is sharded; these two keep the column in the dataset's Arrow memory and index it with
16 bytes a row (a sorted array of hashes and its permutation).

Example:
    >>> import datasets
    >>> ids = ArrowColumn.from_dataset(datasets.Dataset.from_dict({"doc_id": ["d2", "d0", "d1"]}), "doc_id")
    >>> ids[0], ids.take([2, 0]), len(ids)
    ('d2', ['d1', 'd2'], 3)
    >>> index = RowIndex(ids)
    >>> index["d1"], "d9" in index, index.get("d9")
    (2, False, None)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

_CHUNK = 65536  # values turned into Python objects at a time when iterating or hashing


class ArrowColumn(Sequence):
    """A read-only sequence over one Arrow column: ``col[i]``, ``col[a:b]`` (a list), ``col.take(rows)`` (a list),
    iteration in chunks. Values are what the dataset returns (``as_py``), so ids keep their type."""

    def __init__(self, values: pa.Array | pa.ChunkedArray):
        self.values = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset, column: str) -> ArrowColumn:
        """The column of ``dataset`` in row order (an indices mapping, from ``select`` or ``shuffle``, applied)."""
        table = dataset.with_format("arrow")[:] if len(dataset) else dataset.data.table.slice(0, 0)
        return cls(table.column(column))

    @classmethod
    def of(cls, values: Sequence[Any]) -> ArrowColumn:
        """``values`` as a column (itself when it already is one)."""
        return values if isinstance(values, ArrowColumn) else cls(pa.array(list(values)))

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return self.values.slice(start, max(stop - start, 0)).to_pylist()
            return self.take(range(start, stop, step))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of a column of {n}")
        return self.values[i % n].as_py()

    def take(self, rows: Sequence[int] | np.ndarray) -> list:
        """The values at ``rows`` (in that order) as a list."""
        if len(rows) == 0:
            return []
        return self.values.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def __iter__(self) -> Iterator:
        for start in range(0, len(self), _CHUNK):
            yield from self.values.slice(start, _CHUNK).to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ArrowColumn):
            return self.values.equals(other.values)
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  (mutable-sequence semantics: compared by value)

    def __add__(self, other: Sequence[Any]) -> ArrowColumn:
        """This column followed by ``other`` (the chunks are shared, not copied)."""
        if not len(other):
            return self
        extra = ArrowColumn.of(other).values
        if extra.type != self.values.type:
            extra = extra.cast(self.values.type)
        return ArrowColumn(pa.chunked_array(self.values.chunks + extra.chunks, type=self.values.type))

    def __repr__(self) -> str:
        return f"ArrowColumn({len(self)} values of {self.values.type})"


class RowIndex(Mapping):
    """``value -> row`` over an :class:`ArrowColumn` with 16 bytes a row: the rows sorted by the values' hash, a
    lookup is a binary search on the hash and a comparison with the stored value (so collisions are exact).
    Built once in ``O(N log N)``; hashes are this process's (never stored)."""

    def __init__(self, column: ArrowColumn):
        self.column = column
        hashes = np.empty(len(column), dtype=np.int64)
        for start in range(0, len(column), _CHUNK):
            chunk = column.values.slice(start, _CHUNK).to_pylist()
            hashes[start : start + len(chunk)] = [hash(v) for v in chunk]
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]

    def _rows_with_hash(self, value: Any) -> np.ndarray:
        h = hash(value)
        lo, hi = np.searchsorted(self._hashes, h, "left"), np.searchsorted(self._hashes, h, "right")
        return self._order[lo:hi]

    def get(self, value: Any, default: Any = None) -> Any:
        try:
            candidates = self._rows_with_hash(value)
        except TypeError:  # unhashable: not a stored value
            return default
        for row in candidates.tolist():
            if self.column[row] == value:
                return row
        return default

    def __getitem__(self, value: Any) -> int:
        row = self.get(value)
        if row is None:
            raise KeyError(value)
        return row

    def __contains__(self, value: object) -> bool:
        return self.get(value) is not None

    def __len__(self) -> int:
        return len(self.column)

    def __iter__(self) -> Iterator:
        return iter(self.column)

    def duplicate(self) -> Any | None:
        """A value stored in two rows, or None when every value is unique."""
        same = np.flatnonzero(self._hashes[1:] == self._hashes[:-1])
        for i in same.tolist():
            rows = self._order[[i, i + 1]].tolist()
            first = self.column[rows[0]]
            if any(self.column[r] == first for r in self._rows_with_hash(first).tolist() if r != rows[0]):
                return first
        return None
