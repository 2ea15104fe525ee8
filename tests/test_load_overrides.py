"""load_retriever / from_backbone apply or refuse overrides instead of dropping them, refuse bad layer counts, and
never read a model's files from outside its folder (issue 23)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hf_corrector import RetrieverModel, load_retriever
from hf_corrector.errors import ConfigError
from tests.tiny import tiny_retriever

TEXTS = ["cell protein gene", "virus drug trial brain"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, RetrieverModel]:
    out = tmp_path_factory.mktemp("overrides")
    model = tiny_retriever(out).eval()
    model.save_pretrained(out / "retriever")
    model.encoder.save_pretrained(out / "backbone")  # a plain BertModel folder (2 layers)
    model.tokenizer.save_pretrained(out / "backbone")
    return out, model


def test_overrides_of_a_saved_retriever_are_applied(saved):
    out, model = saved
    loaded = load_retriever(out / "retriever", pooling="cls", normalize=False, query_max_length=8)
    assert (loaded.config.pooling, loaded.config.normalize, loaded.config.query_max_length) == ("cls", False, 8)
    model.config.pooling, model.config.normalize = "cls", False
    try:
        with torch.no_grad():
            expected = model.encode_targets(TEXTS, show_progress_bar=False)
    finally:
        model.config.pooling, model.config.normalize = "mean", True
    with torch.no_grad():
        got = loaded.eval().encode_targets(TEXTS, show_progress_bar=False)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-3)  # not normalised: the override held
    # None means "as saved" (what the recipe passes by default)
    assert load_retriever(out / "retriever", pooling=None, normalize=None).config.pooling == "mean"


@pytest.mark.parametrize("kwargs, match", [
    ({"num_hidden_layers": 1}, "saved retriever.*all its trained layers"),
    ({"shared_towers": False}, "shared_towers"),
    ({"pooling": "avg"}, "pooling must be one of"),
    ({"not_a_setting": 3}, "cannot be applied to a saved retriever"),
])
def test_overrides_a_saved_retriever_cannot_take_are_refused(saved, kwargs, match):
    out, _ = saved
    with pytest.raises(ConfigError, match=match):
        load_retriever(out / "retriever", **kwargs)


@pytest.mark.parametrize("layers", [0, -1, True, 2.0, 3])
def test_bad_layer_counts_are_refused(saved, layers):
    out, _ = saved
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        load_retriever(out / "backbone", num_hidden_layers=layers)


def test_a_valid_layer_count_cuts_the_backbone(saved):
    out, _ = saved
    assert load_retriever(out / "backbone", num_hidden_layers=1).encoder.config.num_hidden_layers == 1


def test_module_paths_outside_the_folder_are_refused(saved, tmp_path):
    out, _ = saved
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    folder = tmp_path / "st"
    folder.mkdir()
    for f in (out / "backbone").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "../outside", "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(ConfigError, match="outside the model folder"):
        load_retriever(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": str(outside), "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(ConfigError, match="outside the model folder"):
        load_retriever(folder)
    (folder / "1_Pooling").mkdir()
    os.symlink(outside / "config.json", folder / "1_Pooling" / "config.json")  # a link out of the folder
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(ConfigError, match="outside the model folder"):
        load_retriever(folder)
