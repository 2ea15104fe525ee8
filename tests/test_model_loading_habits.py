"""Loading habits: from_pretrained takes or refuses overrides as load_retriever does; temperatures, lengths and
sentence-transformers modules the retriever cannot honour are refused; settings saved over a folder by
sentence-transformers are honoured; Hugging Face cache snapshots load while links out of a folder are refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from hf_corrector import RetrieverModel, load_retriever
from hf_corrector.errors import ConfigError
from hf_corrector.models.sentence_transformers_export import export_sentence_transformers
from tests.log_capture import warnings_of
from tests.tiny import tiny_retriever

LONG = ["cell protein gene cancer virus drug trial brain blood heart lung liver immune dose risk mouse human growth"]
TEXTS = ["cell protein gene", "virus drug trial brain"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, RetrieverModel]:
    out = tmp_path_factory.mktemp("habits")
    model = tiny_retriever(out).eval()
    model.save_pretrained(out / "retriever")
    return out / "retriever", model


LOADERS = {"from_pretrained": RetrieverModel.from_pretrained, "load_retriever": load_retriever}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kwargs, match", [
    ({"shared_towers": False}, "shared_towers=False.*cannot be split"),
    ({"pooling": "bogus"}, "pooling must be one of"),
    ({"normalize": 0}, "normalize must be True or False"),
    ({"query_max_length": 0}, "query_max_length must be a positive integer"),
    ({"softmax_temperature": -1}, "softmax_temperature must be > 0"),
    ({"softmax_temperature": 0}, "softmax_temperature must be > 0"),
    ({"softmax_temperature": float("nan")}, "softmax_temperature must be > 0"),
    ({"softmax_temperature": "x"}, "softmax_temperature must be > 0"),
    ({"num_hidden_layers": 1}, "all its trained layers"),
    ({"target_max_length": 1000}, "target_max_length=1000.*max_position_embeddings=64"),
    ({"query_max_length": 65}, "query_max_length=65.*64"),
])
def test_overrides_a_saved_retriever_cannot_take_are_refused_by_both_loaders(saved, loader, kwargs, match):
    folder, _ = saved
    with pytest.raises(ConfigError, match=match):
        LOADERS[loader](folder, **kwargs)


@pytest.mark.parametrize("loader", LOADERS)
def test_overrides_are_applied_by_both_loaders(saved, loader):
    folder, model = saved
    loaded = LOADERS[loader](folder, pooling="cls", normalize=False, softmax_temperature=0.1, target_max_length=64,
                             shared_towers=True)
    cfg = loaded.config
    assert (cfg.pooling, cfg.normalize, cfg.softmax_temperature, cfg.target_max_length) == ("cls", False, 0.1, 64)
    assert loaded.query_encoder is None  # no new (random) query tower
    model.config.pooling, model.config.normalize = "cls", False
    try:
        expected = model.encode_queries(TEXTS)
    finally:
        model.config.pooling, model.config.normalize = "mean", True
    assert torch.allclose(loaded.encode_queries(TEXTS), expected, atol=1e-5)


def test_bad_temperature_is_refused_by_from_backbone(saved, tmp_path):
    _, model = saved
    model.encoder.save_pretrained(tmp_path / "bb")
    model.tokenizer.save_pretrained(tmp_path / "bb")
    with pytest.raises(ConfigError, match="softmax_temperature must be > 0"):
        RetrieverModel.from_backbone(tmp_path / "bb", softmax_temperature=float("nan"))
    with pytest.raises(ConfigError, match="target_max_length=100.*64"):
        load_retriever(tmp_path / "bb", target_max_length=100)


@pytest.mark.parametrize("shared", [True, False])
def test_settings_sentence_transformers_saved_over_the_folder_are_honoured(tmp_path, shared):
    st_mod = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "m"
    tiny_retriever(tmp_path, shared_towers=shared).save_pretrained(folder)
    st = st_mod.SentenceTransformer(str(folder))
    st.max_seq_length = 8
    st.prompts = {"query": "gene gene ", "document": ""}
    st.save(str(folder))
    loaded = RetrieverModel.from_pretrained(folder)
    assert loaded.config.query_prefix == "gene gene "
    st = st_mod.SentenceTransformer(str(folder))
    expected = torch.as_tensor(st.encode_query(LONG))
    assert torch.allclose(loaded.encode_queries(LONG), expected, atol=1e-5)
    assert torch.allclose(loaded.encode_targets(LONG), torch.as_tensor(st.encode_document(LONG)), atol=1e-5)


def _st_folder(tmp_path: Path, normalize: bool) -> tuple[Path, RetrieverModel]:
    model = tiny_retriever(tmp_path).eval()
    model.config.normalize = normalize
    return export_sentence_transformers(model, tmp_path / "st"), model


def test_cosine_similarity_without_a_normalize_module_loads_normalised(tmp_path):
    folder, model = _st_folder(tmp_path, normalize=False)
    st_cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_cfg["similarity_fn_name"] == "dot"
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**st_cfg, "similarity_fn_name": "cosine"}))
    with warnings_of("hf_corrector.models.retriever") as found:
        loaded = load_retriever(folder)
    assert loaded.config.normalize is True
    assert any("similarity_fn_name is 'cosine'" in m for m in found), found
    assert torch.allclose(loaded.encode_targets(TEXTS).norm(dim=1), torch.ones(2), atol=1e-5)
    with warnings_of("hf_corrector.models.retriever") as found:
        assert load_retriever(folder, normalize=False).config.normalize is False  # explicit: as asked, no warning
    assert not any("similarity_fn_name" in m for m in found), found


def test_a_dense_module_is_refused_naming_it_and_the_folder(tmp_path):
    folder, _ = _st_folder(tmp_path, normalize=True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 16}))
    (folder / "modules.json").write_text(json.dumps(modules))
    for load in (load_retriever, RetrieverModel.from_backbone):
        with pytest.raises(ConfigError, match=f"{folder}.*module Dense.*cannot be applied"):
            load(folder)


def _as_cache_snapshot(src: Path, cache: Path, repo: str = "models--me--ret") -> Path:
    """``src`` laid out as ``snapshot_download`` does: every file a relative link into ``<repo>/blobs/``."""
    snapshot = cache / repo / "snapshots" / "0123abcd"
    blobs = cache / repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(p for p in sorted(src.rglob("*")) if p.is_file()):
        blob = blobs / f"blob{i:04d}"
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def test_a_hugging_face_cache_snapshot_loads(saved, tmp_path):
    folder, model = saved
    snapshot = _as_cache_snapshot(folder, tmp_path / "hub")
    expected = model.encode_queries(TEXTS)
    for load in (RetrieverModel.from_pretrained, load_retriever):
        assert torch.allclose(load(snapshot).encode_queries(TEXTS), expected, atol=1e-5)
    st_snapshot = _as_cache_snapshot(export_sentence_transformers(model, tmp_path / "st"), tmp_path / "hub",
                                     "models--me--st")
    assert torch.allclose(load_retriever(st_snapshot).encode_queries(TEXTS), expected, atol=1e-5)


def test_links_out_of_the_folder_are_refused(saved, tmp_path):
    folder, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    outside = tmp_path / "elsewhere.safetensors"
    (copy / "model.safetensors").rename(outside)
    os.symlink(outside, copy / "model.safetensors")
    for load in (RetrieverModel.from_pretrained, load_retriever):
        with pytest.raises(ConfigError, match="model.safetensors.*outside the model folder"):
            load(copy)
    # a cache snapshot linking into another cache repo's blobs is refused too
    snapshot = _as_cache_snapshot(folder, tmp_path / "hub")
    other = _as_cache_snapshot(folder, tmp_path / "hub", "models--them--other")
    (snapshot / "modules.json").unlink()
    os.symlink((other / "modules.json").resolve(), snapshot / "modules.json")
    with pytest.raises(ConfigError, match="modules.json.*outside the model folder"):
        load_retriever(snapshot)
