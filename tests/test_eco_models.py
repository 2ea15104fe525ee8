"""Issue 12 (models): sentence-transformers settings read the same way from a folder and from the Hub, and local-
looking paths that do not exist fail at once with "no such folder"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from hf_corrector import RetrieverModel, load_retriever
from hf_corrector.models.hub_files import looks_local, read_sentence_transformers_settings
from tests.conftest_hub import fake_hub  # noqa: F401  (fixture)
from tests.hub_env import run_with_hub
from tests.tiny import tiny_retriever

TEXTS = ["cell protein gene", "virus drug trial w3 w7", "brain blood heart lung liver immune"]

#: builds a tiny sentence-transformers model (CLS pooling, Normalize, prompts, max length 24) in folder ``st``
BUILD_ST = """
    from pathlib import Path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tests.tiny import tiny_retriever

    def build_st(folder, pooling="cls"):
        r = tiny_retriever(Path(folder), dropout=0.0)
        r.encoder.save_pretrained(f"{folder}/bert")
        r.tokenizer.save_pretrained(f"{folder}/bert")
        t = Transformer(f"{folder}/bert", max_seq_length=24)
        st = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode=pooling), Normalize()],
                                 prompts={"query": "query: ", "document": "passage: "})
        st.save(f"{folder}/st")
        return f"{folder}/st"
"""


def _build_st(tmp_path: Path, pooling: str = "cls") -> str:
    scope: dict = {}
    exec(compile(BUILD_ST.replace("\n    ", "\n"), "build_st", "exec"), scope)
    return scope["build_st"](str(tmp_path), pooling)


def test_sentence_transformers_6_folder_settings_and_vectors(tmp_path: Path) -> None:
    """sentence-transformers >= 5 writes ``pooling_mode: "cls"`` and keeps max length in the tokenizer config."""
    from sentence_transformers import SentenceTransformer

    folder = _build_st(tmp_path)
    retriever = RetrieverModel.from_backbone(folder)
    cfg = retriever.config
    assert (cfg.pooling, cfg.normalize, cfg.query_prefix, cfg.target_prefix) == ("cls", True, "query: ", "passage: ")
    assert (cfg.query_max_length, cfg.target_max_length) == (24, 24)
    st = SentenceTransformer(folder, device="cpu")
    assert torch.allclose(retriever.encode_targets(TEXTS), torch.from_numpy(st.encode_document(TEXTS)), atol=1e-5)
    assert torch.allclose(retriever.encode_queries(TEXTS), torch.from_numpy(st.encode_query(TEXTS)), atol=1e-5)
    assert torch.allclose(retriever.encode_targets(TEXTS).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_legacy_pooling_flags_and_unsupported_modes(tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40}))
    pooling_cfg = folder / "1_Pooling" / "config.json"
    pooling_cfg.write_text(json.dumps({"pooling_mode_cls_token": False, "pooling_mode_lasttoken": True}))
    assert read_sentence_transformers_settings(folder) == {"normalize": False, "pooling": "last", "max_seq_length": 40}
    pooling_cfg.write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    from hf_corrector import ConfigError

    with pytest.raises(ConfigError, match="not supported"):
        read_sentence_transformers_settings(folder)
    assert read_sentence_transformers_settings(tmp_path) == {}  # not a sentence-transformers folder


def test_hub_sentence_transformers_model_settings_online_and_offline(fake_hub, tmp_path: Path) -> None:  # noqa: F811
    """A sentence-transformers repo on the (local test) Hub gives the same settings and vectors as a folder, also
    in offline mode from the HF cache; a plain BERT repo without modules.json is fine."""
    code = BUILD_ST + """
    import json, os, shutil
    import torch
    from huggingface_hub import HfApi
    from hf_corrector import RetrieverModel

    folder = build_st("work")
    api = HfApi()
    api.create_repo("tester/tiny-st")
    api.upload_folder(repo_id="tester/tiny-st", folder_path=folder)
    api.create_repo("tester/plain-bert")
    api.upload_folder(repo_id="tester/plain-bert", folder_path="work/bert")
    shutil.rmtree(os.environ["HF_HOME"])  # everything below comes from the server
    texts = %(texts)r
    r = RetrieverModel.from_backbone("tester/tiny-st")
    st = SentenceTransformer("tester/tiny-st", device="cpu")
    c = r.config
    out = {"settings": [c.pooling, c.normalize, c.query_prefix, c.target_prefix, c.target_max_length],
           "targets": (r.encode_targets(texts) - torch.from_numpy(st.encode_document(texts))).abs().max().item(),
           "queries": (r.encode_queries(texts) - torch.from_numpy(st.encode_query(texts))).abs().max().item()}
    plain = RetrieverModel.from_backbone("tester/plain-bert")
    out["plain"] = [plain.config.pooling, plain.config.normalize, plain.config.query_prefix]
    torch.save(r.encode_targets(texts), "ref.pt")
    print(json.dumps(out))
    """ % {"texts": TEXTS}
    proc = run_with_hub(code, fake_hub.url, tmp_path, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["settings"] == ["cls", True, "query: ", "passage: ", 24]
    assert out["targets"] < 1e-5 and out["queries"] < 1e-5
    assert out["plain"] == ["mean", False, ""]
    assert any("modules.json" in r for r in fake_hub.requests)

    requests_before = len(fake_hub.requests)
    offline = """
    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from hf_corrector import RetrieverModel
    r = RetrieverModel.from_backbone("tester/tiny-st")
    assert [r.config.pooling, r.config.normalize, r.config.target_prefix] == ["cls", True, "passage: "]
    assert torch.allclose(r.encode_targets(%(texts)r), torch.load("ref.pt"), atol=1e-6)
    plain = RetrieverModel.from_backbone("tester/plain-bert")
    assert (plain.config.pooling, plain.config.normalize) == ("mean", False)
    print("OFFLINE OK")
    """ % {"texts": TEXTS}
    proc = run_with_hub(offline, fake_hub.url, tmp_path, timeout=300)
    assert proc.stdout.strip().endswith("OFFLINE OK")
    assert len(fake_hub.requests) == requests_before, fake_hub.requests[requests_before:]


# -------------------------------------------------------------------------------------------------------------------
# local-looking paths


def test_looks_local() -> None:
    assert [looks_local(p) for p in ("bert-base-uncased", "org/name", "./m", "/abs/m", "~/m", "a/b/c", "C:\\m")] == [
        False, False, True, True, True, True, True]
    assert looks_local(Path("org/name"))


@pytest.mark.parametrize("loader", ["from_backbone", "from_pretrained", "load_retriever"])
def test_missing_local_folder_fails_at_once(tmp_path: Path, monkeypatch, loader: str) -> None:
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a local path went to the Hub: {args}")

    import huggingface_hub.file_download
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", no_hub)
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", no_hub, raising=False)
    load = {"from_backbone": RetrieverModel.from_backbone, "from_pretrained": RetrieverModel.from_pretrained,
            "load_retriever": load_retriever}[loader]
    for path in ("./missing", str(tmp_path / "missing"), "out/final", "~/hfc-no-such-model-xyz", "a/b/c",
                 tmp_path / "out" / "final"):
        started = time.monotonic()
        with pytest.raises(FileNotFoundError, match="no such folder"):
            load(path)
        assert time.monotonic() - started < 1.0, path


def test_existing_local_folder_and_tilde_still_load(tmp_path: Path, monkeypatch) -> None:
    tiny_retriever(tmp_path).save_pretrained(tmp_path / "home" / "saved")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model = load_retriever("~/saved")
    assert model.embedding_dim == 32 and model.tokenizer is not None
    assert RetrieverModel.from_pretrained(str(tmp_path / "home" / "saved")).config.pooling == "mean"


def test_from_pretrained_keeps_the_unused_pooler_frozen(tmp_path: Path) -> None:
    """BERT's pooler gets no gradient from our pooling: left trainable after ``from_pretrained`` it made DDP fail
    ("parameters that were not used in producing loss") in the recipe's two-process run."""
    tiny_retriever(tmp_path).save_pretrained(tmp_path / "saved")
    for model in (RetrieverModel.from_pretrained(tmp_path / "saved"), load_retriever(str(tmp_path / "saved"))):
        pooler = [p.requires_grad for n, p in model.named_parameters() if ".pooler." in n]
        assert pooler == [False, False]
        assert sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters())) - 2
