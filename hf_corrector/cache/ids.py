"""The one id normalisation of the package: corpus ids, query ids, qrels ids (every data loader) and the doc ids of a
:class:`~hf_corrector.cache.stale_cache.StaleCache`. It lives in the cache layer so that the cache (below the data
loaders) and the loaders share it; :mod:`hf_corrector.data.format` re-exports :func:`normalize_id`.

An id is a string or an integer (a Python ``int`` or a numpy integer; not a bool, not a float: ``1.0`` and ``1``
would be different ids), with surrounding whitespace stripped (as a qrels TSV reads it), non-empty, and storable
(no control character such as tab or newline, no lone surrogate: they cannot be written to a qrels file or to Arrow).

Example:
    >>> normalize_id(" 12 ", "corpus row 0"), normalize_id(7, "row 1")
    ('12', '7')
    >>> normalize_ids(["a", 2], "cache")
    ['a', '2']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataFormatError

_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates
# The characters Python's str.isspace() (so str.strip()) counts that are not control characters (those are refused
# anyway); tests/test_data_cache_habits.py checks this list against Python.
_SPACES = "\\x20\\x85\\xa0\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
# An id the vectorised check must hand to normalize_id: empty, a control character, or whitespace at either end.
_SUSPECT = f"^$|[\\x00-\\x1f\\x7f]|^[{_SPACES}]|[{_SPACES}]$"
FLOAT_HINT = " (a float id such as 1.0 would not match the id 1: convert the column to int or str)"


def json_type(value: Any) -> str:
    """How JSON would name ``value``'s type: ``null``, ``a boolean``, ``a number``, ``a string``, ``an array``."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def normalize_id(value: Any, where: str, what: str = "id", *, json_names: bool = False,
                 error: type[Exception] = DataFormatError) -> str:
    """``value`` as a normalised id string (see the module docstring); raises ``error`` naming ``where``.

    ``json_names``: name a wrong type as JSON does (``got a number``), for values read from JSON files; otherwise
    as Python does (``got NoneType None``). A float is refused with the same hint either way.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if isinstance(value, np.integer):  # numpy integers are ids exactly as Python ints
            value = int(value)
        else:
            hint = FLOAT_HINT if isinstance(value, (float, np.floating)) else ""
            got = json_type(value) if json_names else f"{type(value).__name__} {value!r}"
            raise error(f"{where}: {what} must be a string or an integer, got {got}{hint}")
    text = str(value).strip()
    if not text:
        raise error(f"{where}: {what} is empty")
    bad = _UNSTORABLE.search(text)
    if bad:
        raise error(f"{where}: {what} {text!r} holds the character {bad.group()!r} (U+{ord(bad.group()):04X}), "
                    f"which an id cannot store (qrels files, Arrow); rename the id")
    return text


def normalize_ids(ids: Iterable[Any], where: str, what: str = "doc id",
                  error: type[Exception] = ConfigError) -> list[str]:
    """A list of ids, each normalised by :func:`normalize_id`, all distinct; raises ``error`` naming ``where``, the
    id and its rows. A plain string is refused (iterating ``"abc"`` would give the ids ``a``, ``b``, ``c``).

    Vectorised for millions of ids: when every id is already a normalised string (a saved cache, a loaded corpus),
    one Arrow conversion, one regular-expression pass and one ``set`` decide it, and the list is returned as is.
    """
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise error(f"{where}: the {what}s must be a list of ids, one per row, got {type(ids).__name__} "
                    f"{ids!r:.60}; write [{ids!r:.40}] for a single id")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise error(f"{where}: the {what}s must be a 1-D list of ids, got an array of shape {ids.shape}")
    out = list(ids)
    if not _all_normalised(out):
        out = [normalize_id(d, f"{where}: row {i}", what, error=error) for i, d in enumerate(out)]
    if len(set(out)) != len(out):
        first: dict[str, int] = {}
        for row, doc_id in enumerate(out):
            if doc_id in first:
                raise error(f"{where}: doc id {doc_id!r} twice (rows {first[doc_id]} and {row}): give each row its "
                            f"own id")
            first[doc_id] = row
    return out


def _all_normalised(ids: list[Any]) -> bool:
    """True when every id is a ``str`` that :func:`normalize_id` would return unchanged (vectorised)."""
    if not ids:
        return True
    if set(map(type, ids)) != {str}:  # ints, numpy integers or strings, bytes, None...: the slow path decides
        return False
    try:
        array = pa.array(ids, type=pa.string())  # refuses anything but str (and None): those take the slow path
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        return False
    if array.null_count:
        return False
    return not pc.any(pc.match_substring_regex(array, _SUSPECT)).as_py()


__all__ = ["FLOAT_HINT", "json_type", "normalize_id", "normalize_ids"]
