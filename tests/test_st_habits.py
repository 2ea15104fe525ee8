"""Habits of sentence-transformers users (issue 23): a saved retriever and ``SentenceTransformer`` agree on every
input (long queries included), and a folder that sentence-transformers saved loads back or is refused clearly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402

from hf_corrector import ConfigError, RetrieverModel  # noqa: E402
from tests.tiny import WORDS, tiny_retriever  # noqa: E402

SHORT = ["cell protein gene", "insulin"]
# 20-30 tokens: longer than query_max_length (16), shorter than target_max_length (32)
LONG = [" ".join(WORDS[i % len(WORDS)] for i in range(k, k + 24)) for k in range(3)]


def _st(path) -> SentenceTransformer:
    return SentenceTransformer(str(path), device="cpu")


@pytest.mark.parametrize("shared", [True, False])
def test_long_queries_truncated_at_the_query_length(tmp_path, shared):
    retriever = tiny_retriever(tmp_path, shared_towers=shared).eval()
    assert all(len(retriever.tokenizer(q)["input_ids"]) > retriever.config.query_max_length for q in LONG)
    retriever.save_pretrained(tmp_path / "saved")
    model = _st(tmp_path / "saved")
    texts = SHORT + LONG
    torch.testing.assert_close(model.encode_query(texts, convert_to_tensor=True).cpu(),
                               retriever.encode_queries(texts), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_document(texts, convert_to_tensor=True).cpu(),
                               retriever.encode_targets(texts), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode(texts, convert_to_tensor=True).cpu(),
                               retriever.encode_targets(texts), atol=1e-5, rtol=0)


def test_folder_saved_back_by_sentence_transformers_loads_as_the_retriever(tmp_path):
    retriever = tiny_retriever(tmp_path).eval()
    path = tmp_path / "saved"
    retriever.save_pretrained(path)
    _st(path).save(str(path))  # saved back in place over the retriever
    texts = SHORT + LONG
    again = RetrieverModel.from_pretrained(path)
    torch.testing.assert_close(again.encode_queries(texts), retriever.encode_queries(texts), atol=1e-5, rtol=0)
    torch.testing.assert_close(again.encode_targets(texts), retriever.encode_targets(texts), atol=1e-5, rtol=0)


def test_folder_saved_by_sentence_transformers_alone(tmp_path):
    retriever = tiny_retriever(tmp_path).eval()
    retriever.save_pretrained(tmp_path / "saved")
    _st(tmp_path / "saved").save(str(tmp_path / "st-only"))  # a plain sentence-transformers folder
    texts = SHORT + LONG
    again = RetrieverModel.from_pretrained(tmp_path / "st-only")
    assert isinstance(again, RetrieverModel)
    torch.testing.assert_close(again.encode_queries(texts), retriever.encode_queries(texts), atol=1e-5, rtol=0)
    torch.testing.assert_close(again.encode_targets(texts), retriever.encode_targets(texts), atol=1e-5, rtol=0)


def test_plain_backbone_folder_is_refused_naming_from_backbone(tmp_path):
    retriever = tiny_retriever(tmp_path)
    retriever.encoder.save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="from_backbone"):
        RetrieverModel.from_pretrained(tmp_path / "bert")


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("shared", [True, False])
def test_weights_trained_by_sentence_transformers_and_saved_in_place_are_the_ones_loaded(tmp_path, shared):
    """Training the folder with sentence-transformers and saving it back in place: from_pretrained encodes what
    SentenceTransformer(folder) encodes. With separate towers the root model.safetensors stays as the retriever
    wrote it and was loaded instead of the newer modules (silently the untrained towers)."""
    retriever = tiny_retriever(tmp_path, shared_towers=shared).eval()
    path = tmp_path / "saved"
    retriever.save_pretrained(path)
    model = _st(path)
    _perturb(model[0], seed=1)  # stands for a sentence-transformers training run
    model.save(str(path))
    texts = SHORT + LONG
    again = RetrieverModel.from_pretrained(path)
    assert again.config.shared_towers is shared
    queries = again.encode_queries(texts)
    assert (queries - retriever.encode_queries(texts)).abs().max() > 1e-3  # the newer weights, not the old ones
    torch.testing.assert_close(queries, model.encode_query(texts, convert_to_tensor=True).cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(again.encode_targets(texts), model.encode_document(texts, convert_to_tensor=True).cpu(),
                               atol=1e-5, rtol=0)


def test_separate_towers_saved_by_sentence_transformers_alone_load_as_two_towers(tmp_path):
    retriever = tiny_retriever(tmp_path, shared_towers=False).eval()
    _perturb(retriever.query_encoder, seed=2)  # towers that differ
    retriever.save_pretrained(tmp_path / "saved")
    _st(tmp_path / "saved").save(str(tmp_path / "st-only"))  # a Router folder: no root config.json or weights
    again = RetrieverModel.from_pretrained(tmp_path / "st-only")
    assert not again.config.shared_towers and again.query_encoder is not None
    texts = SHORT + LONG
    torch.testing.assert_close(again.encode_queries(texts), retriever.encode_queries(texts), atol=1e-5, rtol=0)
    torch.testing.assert_close(again.encode_targets(texts), retriever.encode_targets(texts), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="shared_towers=True would drop the query tower"):
        RetrieverModel.from_backbone(tmp_path / "st-only", shared_towers=True)


def test_an_unchanged_saved_retriever_loads_its_own_weights_without_a_warning(tmp_path, caplog):
    retriever = tiny_retriever(tmp_path, shared_towers=False).eval()
    retriever.config.softmax_temperature = 0.07
    retriever.save_pretrained(tmp_path / "saved")
    with caplog.at_level("WARNING", logger="hf_corrector"):
        again = RetrieverModel.from_pretrained(tmp_path / "saved")
    assert "sentence-transformers" not in caplog.text and again.config.softmax_temperature == 0.07
