"""Checks of what a user passes to the served index, made at the entry before any work (each a :class:`ConfigError`
naming the argument).

Example:
    >>> check_budget(0.05)
    0.05
    >>> check_positive_int(0, "k")
    Traceback (most recent call last):
    ...
    hf_corrector.errors.ConfigError: k must be a positive integer, got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int, or :class:`ConfigError` (bools, floats, strings and values < 1 are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_budget(value: Any, name: str = "reencode_budget") -> float:
    """A re-encoding budget: a finite real number in [0, 1] (a fraction of the corpus, not a row count)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a fraction of the corpus in [0, 1] (a number), got "
                          f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        hint = " (a fraction of the corpus: 0.05 re-encodes 5% of the rows)" if value > 1 and math.isfinite(value) else ""
        raise ConfigError(f"{name} must be a fraction of the corpus in [0, 1], got {value!r}{hint}")
    return value


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_query_texts(queries: Any, name: str = "queries") -> list[str]:
    """A list of query strings (a single string is one query); anything else names the offending item."""
    if isinstance(queries, str):
        return [queries]
    if isinstance(queries, (bytes, bytearray)):  # its iteration gives ints
        raise ConfigError(f"{name} is {type(queries).__name__}, not a string: decode it first "
                          f"({name}.decode('utf-8'))")
    if isinstance(queries, np.ndarray) and queries.dtype.kind in "UO" and queries.ndim == 1:
        queries = queries.tolist()  # an array of strings (a pandas column's .values)
    if isinstance(queries, (Mapping, AbstractSet)) or hasattr(queries, "columns"):
        # iterating a dict or a DataFrame gives its keys or column names, a set an arbitrary order: never the queries
        raise ConfigError(f"{name} must be a string or a list of strings, got a {type(queries).__name__} (its "
                          f"iteration gives keys, column names or an arbitrary order); pass a list, for example "
                          f"list(d.values()), df['query'].tolist() or sorted(s)")
    if not isinstance(queries, Sequence):
        try:
            queries = list(queries)
        except TypeError:
            raise ConfigError(f"{name} must be a string, a list of strings or a (B, d) embedding tensor, got "
                              f"{type(queries).__name__}") from None
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ConfigError(f"{name}[{i}] is {type(q).__name__} {q!r}, not a string (pass query texts, or all "
                              f"queries as one (B, d) embedding tensor)")
    return list(queries)


def check_query_embeddings(queries: torch.Tensor | np.ndarray, dim: int, name: str = "queries") -> torch.Tensor:
    """A (B, ``dim``) real floating-point tensor without NaN or inf (a numpy array is converted)."""
    if isinstance(queries, np.ndarray):
        if queries.dtype.kind not in "f":
            raise ConfigError(f"{name} must hold floating-point embeddings, got a numpy array of dtype {queries.dtype}")
        queries = torch.from_numpy(np.ascontiguousarray(queries))
    if not queries.is_floating_point():
        raise ConfigError(f"{name} must hold floating-point embeddings, got dtype {queries.dtype} (token ids? pass "
                          f"the query texts instead)")
    if queries.ndim != 2 or queries.shape[1] != dim:
        hint = " (one query: queries.unsqueeze(0))" if queries.ndim == 1 and queries.shape[0] == dim else ""
        raise ConfigError(f"{name} must be (B, {dim}) embeddings, got shape {tuple(queries.shape)}{hint}")
    given = queries.detach().cpu()
    bad = ~torch.isfinite(given).all(dim=1)
    if bool(bad.any()):
        raise ConfigError(f"{name} row {int(bad.nonzero()[0])} holds NaN or inf")
    q = given.float()
    bad = ~torch.isfinite(q).all(dim=1)
    if bool(bad.any()):
        raise ConfigError(f"{name} row {int(bad.nonzero()[0])} holds values beyond the float32 range (about 3.4e38) "
                          f"that the faiss index searches with; scale the queries")
    return q


__all__ = ["check_bool", "check_budget", "check_choice", "check_positive_int", "check_query_embeddings",
           "check_query_texts"]
