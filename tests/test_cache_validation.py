"""cache_info.json and cache.arrow are validated: a damaged or inconsistent cache raises CacheCorruptError naming the
file and field, a bad ``verify=`` raises ConfigError; never another exception, never a wrong-shaped matrix.

Issue 13: a changed dimension loaded a wrong-shaped matrix, malformed files crashed with numpy / pyarrow errors, and a
typo in ``verify=`` silently skipped the checksum.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_corrector import StaleCache
from hf_corrector.errors import CacheCorruptError, ConfigError

FIELDS = ["steps", "provenance", "sha256", "dtype", "embedding_dim", "num_rows", "format_version"]


def _cache(n: int = 6, d: int = 4, dtype: str = "float32") -> StaleCache:
    gen = torch.Generator().manual_seed(0)
    return StaleCache([f"doc-{i}" for i in range(n)], torch.randn(n, d, generator=gen), dtype=dtype,
                      steps=list(range(-1, n - 1)), provenance={"encoder": "tiny", "pooling": "mean"})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StaleCache]:
    folder = tmp_path_factory.mktemp("saved") / "cache"
    cache = _cache()
    cache.save(folder)
    return folder, cache


def _copy(saved_folder: Path, dest: Path) -> Path:
    shutil.copytree(saved_folder, dest)
    return dest


def _edit_info(folder: Path, **changes) -> None:
    info_file = folder / "cache_info.json"
    info = json.loads(info_file.read_text())
    info.update(changes)
    info_file.write_text(json.dumps(info))


def test_changed_dimension_is_refused_not_reshaped(saved, tmp_path: Path) -> None:
    folder = _copy(saved[0], tmp_path / "c")
    _edit_info(folder, embedding_dim=2)  # 6 x 4 values would reshape to a 12 x 2 matrix
    for verify in ("checksum", "rows", "none"):
        with pytest.raises(CacheCorruptError, match="cache_info.json: field 'embedding_dim' is 2 but .*length 4"):
            StaleCache.load(folder, verify=verify)


@pytest.mark.parametrize("field, value, match", [
    ("num_rows", "6", "field 'num_rows' must be an integer, got str"),
    ("num_rows", 7, "6 rows, .* says 7"),
    ("num_rows", True, "field 'num_rows' must be an integer, got bool"),
    ("embedding_dim", 0, "field 'embedding_dim' must be >= 1"),
    ("embedding_dim", 4.0, "field 'embedding_dim' must be an integer"),
    ("dtype", "float64", "field 'dtype' is 'float64', not one of"),
    ("dtype", "float16", "field 'dtype' is 'float16' but .* stores float values"),
    ("format_version", 2, "format_version' is 2, but this hf_corrector reads version 1; upgrade"),
    ("format_version", None, "field 'format_version' must be an integer"),
    ("sha256", 12, "field 'sha256' is 12, not a SHA-256"),
    ("provenance", ["x"], "field 'provenance' must be an object"),
])
def test_each_info_field_is_validated(saved, tmp_path: Path, field: str, value, match: str) -> None:
    folder = _copy(saved[0], tmp_path / "c")
    _edit_info(folder, **{field: value})
    with pytest.raises(CacheCorruptError, match=match) as err:
        StaleCache.load(folder)
    assert "cache_info.json" in str(err.value) or "cache.arrow" in str(err.value)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '{"format_version": 1}', "\udcff", "{"])
def test_malformed_info_files(saved, tmp_path: Path, text: str) -> None:
    folder = _copy(saved[0], tmp_path / "c")
    (folder / "cache_info.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CacheCorruptError, match="cache_info.json"):
        StaleCache.load(folder)


def test_unknown_verify_value_raises_config_error(saved) -> None:
    with pytest.raises(ConfigError, match=r"verify='checksums' is not one of \['checksum', 'rows', 'none'\]"):
        StaleCache.load(saved[0], verify="checksums")
    with pytest.raises(ConfigError, match="verify=None"):
        StaleCache.load(saved[0], verify=None)


def test_truncated_or_garbled_arrow_is_refused_in_every_mode(saved, tmp_path: Path) -> None:
    folder = _copy(saved[0], tmp_path / "c")
    raw = (folder / "cache.arrow").read_bytes()
    for damaged in (b"", raw[:7], raw[: len(raw) // 2], b"\xff" * len(raw)):
        (folder / "cache.arrow").write_bytes(damaged)
        for verify in ("checksum", "rows"):
            with pytest.raises(CacheCorruptError, match="cache.arrow"):
                StaleCache.load(folder, verify=verify)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_valid_caches_still_load_zero_copy(tmp_path: Path, dtype: str) -> None:
    cache = _cache(n=50, d=8, dtype=dtype)
    cache.save(tmp_path / "c")
    loaded = StaleCache.load(tmp_path / "c", verify="rows")
    assert loaded.matrix().dtype == getattr(torch, dtype) and loaded._writable is False
    assert torch.equal(loaded.matrix(), cache.matrix()) and torch.equal(loaded.steps, cache.steps)


# -- property-based: any damage to cache_info.json or cache.arrow ----------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["float32", "float16", "bfloat16", "int8", "a" * 64, "0" * 64]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
info_edit = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("set"), st.sampled_from(FIELDS + ["extra"]), json_values),
    st.tuples(st.just("shift"), st.sampled_from(["num_rows", "embedding_dim", "format_version"]),
              st.integers(-8, 8)),
    st.tuples(st.just("whole"), st.just(""), json_values),
)
arrow_edit = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("append"), st.just(0.0), st.integers(1, 64)),
)


def _damage_info(folder: Path, edits: list) -> None:
    info_file = folder / "cache_info.json"
    info = json.loads(info_file.read_text())
    for kind, field, value in edits:
        if kind == "whole":
            info = value
        elif not isinstance(info, dict):
            continue
        elif kind == "delete":
            info.pop(field, None)
        elif kind == "set":
            info[field] = value
        elif isinstance(info.get(field), int):
            info[field] += value
    info_file.write_text(json.dumps(info))


def _damage_arrow(path: Path, edits: list) -> None:
    raw = bytearray(path.read_bytes())
    for kind, where, value in edits:
        at = int(where * max(len(raw) - 1, 0))
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "flip" and raw:
            raw[at] ^= value
        elif kind == "append":
            raw += bytes(range(value))
    path.write_bytes(bytes(raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(info_edits=st.lists(info_edit, max_size=3), arrow_edits=st.lists(arrow_edit, max_size=3),
       verify=st.sampled_from(["checksum", "rows", "none"]))
def test_damaged_caches_load_correctly_or_raise_cache_corrupt(saved, info_edits, arrow_edits, verify) -> None:
    source, original = saved
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(source, Path(tmp) / "c")
        _damage_info(folder, info_edits)
        _damage_arrow(folder / "cache.arrow", arrow_edits)
        data_intact = (folder / "cache.arrow").read_bytes() == (source / "cache.arrow").read_bytes()
        try:
            loaded = StaleCache.load(folder, verify=verify)
        except CacheCorruptError as err:
            assert str(folder) in str(err)
            return
        matrix = loaded.matrix()
        info = json.loads((folder / "cache_info.json").read_text())
        # whatever loads has the shape, dtype and row count its cache_info.json promises
        assert matrix.shape == (info["num_rows"], info["embedding_dim"]) == (len(loaded.doc_ids), loaded.dim)
        assert loaded.steps.shape == (len(loaded.doc_ids),) and loaded.dtype == info["dtype"]
        assert matrix.dtype == getattr(torch, info["dtype"])
        if verify == "checksum" or data_intact:  # verified (or untouched) bytes: exactly the saved cache
            assert torch.equal(matrix, original.matrix()) and loaded.doc_ids == original.doc_ids
            assert torch.equal(loaded.steps, original.steps)


def test_an_embedding_column_past_2_31_values_is_written_and_read_back(tmp_path: Path) -> None:
    """10^7 x 384 holds 3.8e9 values: the Arrow IPC writer refused any array past 2^31 - 1 values unless 64-bit
    lengths are allowed (the 10^7 phase benchmark failed to save its cache). A fixed-size list of nulls keeps the
    values array that long at no memory cost."""
    import pyarrow as pa

    from hf_corrector.cache.folder import write_stream

    rows, dim = (2**31) // 384 + 1, 384
    column = pa.FixedSizeListArray.from_arrays(pa.nulls(rows * dim), dim)
    write_stream(pa.table({"embedding": column}), tmp_path / "cache.arrow")
    with pa.memory_map(str(tmp_path / "cache.arrow")) as source:
        back = pa.ipc.open_stream(source).read_all()
    assert back.num_rows == rows and back.column("embedding").num_chunks == 1
    assert len(back.column("embedding").chunk(0).flatten()) == rows * dim > 2**31
