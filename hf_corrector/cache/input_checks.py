"""Checks of what a caller hands a :class:`~hf_corrector.cache.stale_cache.StaleCache` (construction and write-back):
vectorised, so that a cache of millions of rows and a write-back every step cost no more than a few tensor passes.
Each raises :class:`~hf_corrector.errors.ConfigError` naming the argument, the row and what to pass instead.

Example:
    >>> check_update_rows([3, 0], num_rows=5)
    tensor([3, 0])
    >>> check_update_rows([-1], num_rows=5)
    Traceback (most recent call last):
    ...
    hf_corrector.errors.ConfigError: StaleCache.update: rows[0] is -1, outside the cache's rows 0..4; pass row indices in range(5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


def check_real(embeddings: torch.Tensor, where: str) -> None:
    """Refuse complex (and boolean) embeddings: storing them would drop the imaginary part silently."""
    if embeddings.is_complex() or embeddings.dtype == torch.bool:
        raise ConfigError(f"{where}: embeddings of dtype {embeddings.dtype} cannot be stored (a cache holds real "
                          f"numbers; casting would drop the imaginary part); pass a real float tensor or array")


def check_provenance_dim(provenance: Mapping | None, dim: int, where: str) -> None:
    """Refuse a ``provenance["embedding_dim"]`` other than the embeddings' dimension ``dim``."""
    if not provenance or "embedding_dim" not in provenance:
        return
    value = provenance["embedding_dim"]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) != dim:
        raise ConfigError(f"{where}: provenance['embedding_dim'] is {value!r} but the embeddings have {dim} "
                          f"columns; drop the key (it is filled in) or give the real dimension")


def check_steps(steps: Sequence[int] | np.ndarray | torch.Tensor, num_rows: int, where: str) -> torch.Tensor:
    """``steps`` as a new int64 tensor of ``num_rows`` step markers: a 1-D sequence of integers (integral floats
    are read as integers); NaN, inf, fractions, booleans and a wrong length are refused naming the row."""
    array = steps.detach().cpu().numpy() if isinstance(steps, torch.Tensor) else np.asarray(steps)
    if array.shape != (num_rows,):
        raise ConfigError(f"{where}: steps has shape {array.shape}, but the cache has {num_rows} rows; pass one "
                          f"integer step per row (or steps=None: all rows initial)")
    kind = array.dtype.kind
    if kind == "f" and num_rows:
        bad = ~np.isfinite(array)
        bad[~bad] = array[~bad] != np.round(array[~bad])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{where}: steps[{row}] is {array[row].item()!r}, not an integer; pass integer steps")
    elif kind not in "iuf":
        raise ConfigError(f"{where}: steps of dtype {array.dtype} are not integers; pass one integer step per row")
    if kind == "u" and num_rows and int(array.max()) > np.iinfo(np.int64).max:
        raise ConfigError(f"{where}: steps hold {int(array.max())}, beyond int64; pass smaller steps")
    return torch.as_tensor(array, dtype=torch.long).clone()


def check_update_rows(rows: Any, num_rows: int, where: str = "StaleCache.update") -> torch.Tensor:
    """``rows`` as a CPU int64 tensor of row indices for a write-back: integers (integral floats are read as
    integers), each in ``range(num_rows)`` (a negative index would write from the end) and each once (two writes of
    one row in one update are ambiguous)."""
    t = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows))
    if t.numel() == 0:
        return t.to("cpu", torch.long)
    if t.dtype == torch.bool or t.is_complex():
        raise ConfigError(f"{where}: rows of dtype {t.dtype} are not row indices; pass integer row indices")
    flat = t.reshape(-1)
    if t.is_floating_point():
        bad = ~torch.isfinite(flat) | (flat != flat.round())
        if bool(bad.any()):
            pos = int(bad.nonzero()[0])
            raise ConfigError(f"{where}: rows[{pos}] is {flat[pos].item()!r}, not an integer row index; pass "
                              f"integer row indices")
    t = t.to("cpu", torch.long)
    flat = t.reshape(-1)
    if int(flat.min()) < 0 or int(flat.max()) >= num_rows:
        pos = int(((flat < 0) | (flat >= num_rows)).nonzero()[0])
        raise ConfigError(f"{where}: rows[{pos}] is {int(flat[pos])}, outside the cache's rows 0..{num_rows - 1}; "
                          f"pass row indices in range({num_rows})")
    if flat.numel() > 1 and torch.unique(flat).numel() != flat.numel():
        first: dict[int, int] = {}
        for pos, row in enumerate(flat.tolist()):
            if row in first:
                raise ConfigError(f"{where}: row {row} is written twice in one update (rows[{first[row]}] and "
                                  f"rows[{pos}]), which is ambiguous; pass each row once")
            first[row] = pos
    return t


__all__ = ["check_provenance_dim", "check_real", "check_steps", "check_update_rows"]
