"""``retriever.push_to_hub`` (issue 23): a retriever pushed on its own gets the sentence-transformers card the README
promises (transformers' push published its generic ``library_name: transformers`` card), in one commit, and no card
or json it publishes carries a local path (its ``config.json`` named the local base model's path)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.hub_env import run_with_hub
from tests.hub_server import FakeHub

PUSH = """
    from pathlib import Path
    from tests.tiny import tiny_retriever

    base = str(Path.cwd() / "private-models" / "my-base")  # a local base model: its path must not be published
    for name, shared in (("tester/alone-shared", True), ("tester/alone-two", False)):
        retriever = tiny_retriever(Path("."), shared_towers=shared)
        retriever.config.base_model_name_or_path = base
        retriever.push_to_hub(name, tags=["my-tag"])
        assert retriever.config.base_model_name_or_path == base  # the local object is unchanged
    retriever.save_pretrained("saved", push_to_hub=True, repo_id="tester/via-save")
    print("PUSHED", Path.cwd())
"""

LOAD = """
    import torch
    from sentence_transformers import SentenceTransformer
    from hf_corrector import RetrieverModel
    for name in ("tester/alone-shared", "tester/alone-two"):
        st = SentenceTransformer(name, device="cpu")
        ours = RetrieverModel.from_pretrained(name)
        texts = ["cell protein gene", "insulin w3"]
        assert torch.allclose(st.encode_query(texts, convert_to_tensor=True).cpu(), ours.encode_queries(texts),
                              atol=1e-5)
    print("LOADED")
"""


def _header(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    with FakeHub() as hub:
        work = tmp_path_factory.mktemp("push")
        proc = run_with_hub(PUSH, hub.url, work)
        assert "PUSHED" in proc.stdout
        assert "LOADED" in run_with_hub(LOAD, hub.url, tmp_path_factory.mktemp("load")).stdout
        yield hub, work


@pytest.mark.parametrize("repo", ["tester/alone-shared", "tester/alone-two", "tester/via-save"])
def test_a_retriever_pushed_alone_has_the_sentence_transformers_card(pushed, repo):
    hub, _ = pushed
    files = hub.files(repo)
    header = _header(files["README.md"].decode())
    assert header["library_name"] == "sentence-transformers" and header["pipeline_tag"] == "sentence-similarity"
    assert "sentence-transformers" in header["tags"]
    readme = files["README.md"].decode()
    assert f'SentenceTransformer("{repo}")' in readme and "RetrieverModel.from_pretrained" in readme
    assert "modules.json" in files and "config_sentence_transformers.json" in files
    if repo != "tester/via-save":
        assert "my-tag" in header["tags"]
        titles = [c.title for c in hub._repo("model", repo).history("main")]
        assert titles.count("Upload retriever") == 1 and len(titles) == 2, titles  # repo creation + one commit


def test_a_retriever_pushed_alone_publishes_no_local_path(pushed):
    hub, work = pushed
    for repo in ("tester/alone-shared", "tester/alone-two", "tester/via-save"):
        for name, data in hub.files(repo).items():
            if name.endswith((".json", ".md")):
                text = data.decode()
                assert str(work) not in text and "private-models" not in text, (repo, name)
    config = json.loads(hub.files("tester/alone-shared")["config.json"])
    assert config["base_model_name_or_path"] == "my-base"  # the folder's name, as the cards name it


def test_an_existing_card_is_kept(tmp_path):
    pytest.importorskip("sentence_transformers")
    code = """
        from pathlib import Path
        from huggingface_hub import HfApi
        from tests.tiny import tiny_retriever
        HfApi().create_repo("tester/has-card")
        HfApi().upload_file(path_or_fileobj=b"---\\nlicense: mit\\n---\\n# my own card\\n", path_in_repo="README.md",
                            repo_id="tester/has-card")
        tiny_retriever(Path(".")).push_to_hub("tester/has-card")
        print("PUSHED")
    """
    with FakeHub() as hub:
        assert "PUSHED" in run_with_hub(code, hub.url, tmp_path).stdout
        assert "# my own card" in hub.files("tester/has-card")["README.md"].decode()
        assert "model.safetensors" in hub.files("tester/has-card")


def test_no_json_of_a_push_names_the_local_folder_of_the_encoder(tmp_path):
    """encoder_config._name_or_path in config.json (and 0_Transformer/config.json) named the local folder a retriever
    was built from; only base_model_name_or_path was scrubbed."""
    from hf_corrector import RetrieverModel
    from hf_corrector.hub.retriever_push import local_paths_of, scrub_saved_paths
    from tests.tiny import tiny_retriever

    local = tmp_path / "secret-place" / "my-bert"
    tiny = tiny_retriever(tmp_path)
    tiny.encoder.save_pretrained(local)
    tiny.tokenizer.save_pretrained(local)
    retriever = RetrieverModel.from_backbone(str(local))
    out = tmp_path / "upload"
    retriever.save_pretrained(out)
    assert any("secret-place" in p.read_text() for p in out.rglob("*.json"))  # what a plain save holds
    scrub_saved_paths(out, local_paths_of(retriever))
    texts = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.json")}
    assert texts and not [name for name, text in texts.items() if "secret-place" in text or str(tmp_path) in text]
    assert json.loads(texts["config.json"])["encoder_config"]["_name_or_path"] == "my-bert"
    RetrieverModel.from_pretrained(out)  # still loads
