"""What a saved stale cache is made of: file names, storage dtypes, the Arrow table, and the checks of
``cache_info.json`` and of the table against it.

Columns: ``doc_id`` (string), ``embedding`` (fixed-length list of the storage dtype, length d) and ``step`` (the
training step whose encoder wrote the row; :data:`INITIAL_STEP` marks the initial encoding).

Example:
    >>> validate_info({"format_version": 1, "num_rows": 2, "embedding_dim": 4, "dtype": "float16"}, "x",
    ...               checksum=False)["dtype"]
    'float16'
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..errors import CacheCorruptError, ConfigError
from .provenance import SCHEME, TEXTS_KEY, WEIGHTS_KEY

INITIAL_STEP = -1
CACHE_FILE = "cache.arrow"
INFO_FILE = "cache_info.json"
CARD_FILE = "README.md"
#: the only files a cache save writes; a folder holding anything else is never replaced
CACHE_FOLDER_FILES = frozenset({CACHE_FILE, INFO_FILE, CARD_FILE})
BUILD_INFO_FILE = "build_info.json"
FORMAT_VERSION = 1
VERIFY_MODES = ("checksum", "rows", "none")
STORAGE_DTYPES = {"float32": (torch.float32, pa.float32()), "float16": (torch.float16, pa.float16()),
                  "bfloat16": (torch.bfloat16, pa.uint16())}  # Arrow has no bfloat16: raw bits in uint16

DAMAGED = "the cache is damaged: rebuild it (StaleCache.build) or restore a copy"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(rf"^{re.escape(SCHEME)}:[0-9a-f]{{64}}$")


def check_dtype(dtype: Any) -> str:
    """The storage dtype name, or :class:`ConfigError` listing the choices."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"unknown cache dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    return dtype


def check_verify(verify: Any, where: str) -> str:
    if verify not in VERIFY_MODES:
        raise ConfigError(f"{where}: verify={verify!r} is not one of {list(VERIFY_MODES)} ('checksum': SHA-256, row "
                          f"count and no NaN/inf; 'rows' / 'none': row count and schema only)")
    return verify


def check_row_range(rows: Sequence[int], num_rows: int) -> tuple[int, int]:
    try:
        start, stop = (int(r) for r in rows)
    except (TypeError, ValueError):
        raise ConfigError(f"rows must be a (start, stop) pair of integers, got {rows!r}") from None
    if not 0 <= start <= stop <= num_rows:
        raise ConfigError(f"rows ({start}, {stop}) are outside the cache's {num_rows} rows")
    return start, stop


def preview(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int_field(info: dict, key: str, where: str, minimum: int) -> int:
    if key not in info:
        raise CacheCorruptError(f"{where}: field {key!r} is missing; {DAMAGED}")
    value = info[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CacheCorruptError(f"{where}: field {key!r} must be an integer, got {type(value).__name__} "
                                f"{preview(value)}; {DAMAGED}")
    if value < minimum:
        raise CacheCorruptError(f"{where}: field {key!r} must be >= {minimum}, got {value}; {DAMAGED}")
    return value


def validate_info(info: Any, where: str, checksum: bool = True) -> dict:
    """Check the fields of a ``cache_info.json`` (types, ranges, dtype name, format version); returns it.

    Raises :class:`CacheCorruptError` naming ``where`` and the field. ``checksum``: ``sha256`` must be present.
    """
    if not isinstance(info, dict):
        raise CacheCorruptError(f"{where}: expected a JSON object, got {type(info).__name__}; {DAMAGED}")
    version = _int_field(info, "format_version", where, 1)
    if version > FORMAT_VERSION:
        raise CacheCorruptError(f"{where}: field 'format_version' is {version}, but this hf_corrector reads version "
                                f"{FORMAT_VERSION}; upgrade hf_corrector to load this cache")
    _int_field(info, "num_rows", where, 0)
    _int_field(info, "embedding_dim", where, 1)
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in STORAGE_DTYPES:
        raise CacheCorruptError(f"{where}: field 'dtype' is {preview(dtype)}, not one of {sorted(STORAGE_DTYPES)}; "
                                f"{DAMAGED}")
    if checksum and not (isinstance(info.get("sha256"), str) and _SHA256.match(info["sha256"])):
        raise CacheCorruptError(f"{where}: field 'sha256' is {preview(info.get('sha256'))}, not a SHA-256 hex "
                                f"digest; {DAMAGED} (or load with verify='rows' to skip the checksum)")
    provenance = info.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CacheCorruptError(f"{where}: field 'provenance' must be an object, got {type(provenance).__name__}; "
                                f"{DAMAGED}")
    for key in (WEIGHTS_KEY, TEXTS_KEY, "doc_ids_fingerprint"):
        # absent or null: saved before fingerprints existed ("cannot verify"); anything else must be well formed
        if provenance.get(key) is not None and not (isinstance(provenance[key], str)
                                                    and _FINGERPRINT.match(provenance[key])):
            raise CacheCorruptError(f"{where}: field 'provenance.{key}' is {preview(provenance[key])}, not a "
                                    f"fingerprint ('{SCHEME}:' and 64 hex digits); {DAMAGED}")
    return info


def validate_table(table: pa.Table, info: dict, data_where: str, info_where: str) -> None:
    """The Arrow table must have the columns, types, row count and vector length that ``info`` promises."""
    missing = [c for c in ("doc_id", "embedding", "step") if c not in table.column_names]
    if missing:
        raise CacheCorruptError(f"{data_where}: column(s) {missing} missing (has {table.column_names}); {DAMAGED}")
    schema = table.schema
    if not (pa.types.is_string(schema.field("doc_id").type) or pa.types.is_large_string(schema.field("doc_id").type)):
        raise CacheCorruptError(f"{data_where}: column 'doc_id' is {schema.field('doc_id').type}, not string; "
                                f"{DAMAGED}")
    if not pa.types.is_integer(schema.field("step").type):
        raise CacheCorruptError(f"{data_where}: column 'step' is {schema.field('step').type}, not integer; {DAMAGED}")
    emb_type = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type):
        raise CacheCorruptError(f"{data_where}: column 'embedding' is {emb_type}, not a fixed-length list; {DAMAGED}")
    if emb_type.list_size != info["embedding_dim"]:
        raise CacheCorruptError(f"{info_where}: field 'embedding_dim' is {info['embedding_dim']} but {data_where} "
                                f"holds vectors of length {emb_type.list_size}; {DAMAGED}")
    expected = STORAGE_DTYPES[info["dtype"]][1]
    if emb_type.value_type != expected:
        raise CacheCorruptError(f"{info_where}: field 'dtype' is {info['dtype']!r} but {data_where} stores "
                                f"{emb_type.value_type} values (expected {expected}); {DAMAGED}")
    if table.num_rows != info["num_rows"]:
        raise CacheCorruptError(f"{data_where}: {table.num_rows} rows, {info_where} says {info['num_rows']} "
                                f"(field 'num_rows'); {DAMAGED}")
    for name in ("doc_id", "embedding", "step"):
        column = table.column(name)
        nulls = column.null_count + (sum(c.flatten().null_count for c in column.chunks) if name == "embedding" else 0)
        if nulls:
            raise CacheCorruptError(f"{data_where}: column {name!r} has {nulls} missing values; {DAMAGED}")


def to_storage_numpy(emb: torch.Tensor, dtype: str) -> np.ndarray:
    torch_dtype, _ = STORAGE_DTYPES[dtype]
    t = emb.detach().to("cpu", torch_dtype).contiguous()
    return t.view(torch.uint16).numpy() if dtype == "bfloat16" else t.numpy()


def arrow_table(doc_ids: Sequence[str], storage: np.ndarray, steps: np.ndarray, dtype: str) -> pa.Table:
    n, d = storage.shape
    values = pa.array(storage.reshape(-1), type=STORAGE_DTYPES[dtype][1])
    return pa.table(
        {
            "doc_id": pa.array(list(doc_ids), type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, d),
            "step": pa.array(steps, type=pa.int64()),
        }
    )


def looks_like_cache_info(path: Path) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "format_version" in info and "num_rows" in info


__all__ = ["BUILD_INFO_FILE", "CACHE_FILE", "CACHE_FOLDER_FILES", "CARD_FILE", "DAMAGED", "FORMAT_VERSION", "INFO_FILE",
           "INITIAL_STEP", "STORAGE_DTYPES", "VERIFY_MODES", "arrow_table", "check_dtype", "check_row_range",
           "check_verify", "looks_like_cache_info", "preview", "to_storage_numpy", "validate_info", "validate_table"]
