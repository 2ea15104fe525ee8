"""A saved or published retriever IS a sentence-transformers model (issue 12).

A publisher subprocess trains a tiny shared-tower retriever, ``trainer.save_model``s it, pushes it to the local
FakeHub, and also saves and pushes a two-tower retriever (sentence-transformers' ``Router``). A consumer subprocess in
which ``import hf_corrector`` fails (proved inside it) loads each folder and each repo with
``SentenceTransformer(...)``: the vectors equal ``RetrieverModel.encode_queries`` / ``encode_targets``.
The same folders and repos keep loading with ``RetrieverModel.from_pretrained`` and ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.hub_env import run_with_hub
from tests.hub_server import FakeHub

pytest.importorskip("sentence_transformers")

SHARED_REPO, TWO_TOWER_REPO = "tester/st-shared", "tester/st-two-towers"
QUERIES = ["cell protein gene", "virus drug trial brain", "insulin w3"]
# the last query is longer than query_max_length=16 tokens: the Router gives each tower its own max length
LONG_QUERY = " ".join(["tumor therapy vaccine infection"] * 6)
DOCS = ["cell protein gene cancer virus drug trial", "brain blood heart lung liver w1 w2", "insulin kidney plasma"]

PUBLISH = """
    import json
    from pathlib import Path
    import torch
    from transformers import AutoModel
    from tests.tiny import tiny_data, tiny_retriever
    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel

    queries, docs, long_query = %(queries)r, %(docs)r, %(long_query)r
    train, _ = tiny_data()
    args = CorrectorTrainingArguments("out", max_steps=2, per_device_train_batch_size=4, num_negatives=3,
                                      report_to=[], use_cpu=True, save_strategy="no", seed=0,
                                      push_to_hub=True, hub_model_id="%(shared)s")
    trainer = CorrectorTrainer(model=tiny_retriever(Path(".")), args=args, train_dataset=train)
    trainer.train()
    trainer.save_model("saved-shared")
    trainer.push_to_hub(commit_message="End of training")
    shared = trainer.retriever.eval()

    two = tiny_retriever(Path("."), seed=1, shared_towers=False, pooling="cls").eval()
    two.config.normalize = False  # dot product: no Normalize module
    two.config.query_prefix, two.config.target_prefix = "query: ", "passage: "
    with torch.no_grad():
        for p in two.query_encoder.parameters():
            p.add_(0.05)  # the towers differ
    two.save_pretrained("saved-two")
    two.push_to_hub("%(two)s")

    ref = {}
    for name, model in (("shared", shared), ("two", two)):
        ref[name] = {"q": model.encode_queries(queries).tolist(), "d": model.encode_targets(docs).tolist(),
                     "long_q": model.encode_queries([long_query]).tolist()}
    # hf-corrector still loads the same folders and repos
    for name, model, folder, repo in (("shared", shared, "saved-shared", "%(shared)s"),
                                      ("two", two, "saved-two", "%(two)s")):
        for source in (folder, repo):
            for loaded in (RetrieverModel.from_pretrained(source), AutoModel.from_pretrained(source)):
                assert type(loaded) is RetrieverModel, type(loaded)
                assert torch.equal(loaded.encode_queries(queries), model.encode_queries(queries)), source
                assert torch.equal(loaded.encode_targets(docs), model.encode_targets(docs)), source
    Path("ref.json").write_text(json.dumps(ref))
    print("PUBLISHED")
""" % {"queries": QUERIES, "docs": DOCS, "long_query": LONG_QUERY, "shared": SHARED_REPO, "two": TWO_TOWER_REPO}

CONSUME = """
    import sys
    sys.modules["hf_corrector"] = None  # hf-corrector is not importable in this process (the venv has it editable)
    try:
        import hf_corrector  # noqa: F401
    except ImportError:
        print("HF_CORRECTOR_NOT_IMPORTABLE")
    else:
        raise SystemExit("hf_corrector is importable: the test would prove nothing")
    import json
    from pathlib import Path
    import torch
    from sentence_transformers import SentenceTransformer

    queries, docs, long_query = %(queries)r, %(docs)r, %(long_query)r
    work = Path(%(work)r)
    out = {"modules": sorted(m for m in sys.modules if m.startswith("hf_corrector") and sys.modules[m] is not None)}
    for name, sources in (("shared", [str(work / "saved-shared"), "%(shared)s"]),
                          ("two", [str(work / "saved-two"), "%(two)s"])):
        for source in sources:
            model = SentenceTransformer(source, device="cpu")
            out[source] = {
                "q": model.encode_query(queries, convert_to_tensor=True).tolist(),
                "d": model.encode_document(docs, convert_to_tensor=True).tolist(),
                "plain": model.encode(docs, convert_to_tensor=True).tolist(),
                "long_q": model.encode_query([long_query], convert_to_tensor=True).tolist(),
                "similarity": model.similarity_fn_name,
                "modules": [type(m).__name__ for m in model],
            }
    Path("consumed.json").write_text(json.dumps(out))
    print("CONSUMED")
"""


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    with FakeHub() as hub:
        work = tmp_path_factory.mktemp("st-publisher")
        proc = run_with_hub(PUBLISH, hub.url, work, timeout=300)
        assert "PUBLISHED" in proc.stdout
        consumer = tmp_path_factory.mktemp("st-consumer")
        code = CONSUME % {"queries": QUERIES, "docs": DOCS, "long_query": LONG_QUERY, "work": str(work),
                          "shared": SHARED_REPO, "two": TWO_TOWER_REPO}
        proc = run_with_hub(code, hub.url, consumer, timeout=300)
        assert "HF_CORRECTOR_NOT_IMPORTABLE" in proc.stdout and "CONSUMED" in proc.stdout
        yield SimpleNamespace(work=work, hub=hub, ref=json.loads((work / "ref.json").read_text()),
                              got=json.loads((consumer / "consumed.json").read_text()))


def _close(a, b, atol: float = 1e-5) -> None:
    import torch

    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=atol, rtol=0)


def test_saved_layout_is_a_sentence_transformers_model(round_trip):
    folder = round_trip.work / "saved-shared"
    modules = json.loads((folder / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("0_Transformer", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "hfc_retriever"  # hf-corrector's
    assert json.loads((folder / "0_Transformer" / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((folder / "0_Transformer" / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine" and st_config["prompts"] == {"query": "", "document": ""}
    assert (folder / "corrector" / "model.safetensors").is_file()
    files = set(round_trip.hub.files(SHARED_REPO))
    assert {"modules.json", "0_Transformer/model.safetensors", "0_Transformer/tokenizer.json",
            "1_Pooling/config.json", "config.json", "model.safetensors", "corrector/model.safetensors"} <= files

    two = round_trip.work / "saved-two"
    assert [m["type"].rsplit(".", 1)[-1] for m in json.loads((two / "modules.json").read_text())] == ["Router",
                                                                                                      "Pooling"]
    router = json.loads((two / "router_config.json").read_text())
    assert router["structure"] == {"query": ["query_0_Transformer"], "document": ["document_0_Transformer"]}
    assert json.loads((two / "query_0_Transformer" / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    prompts = json.loads((two / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "query: ", "document": "passage: "}


def test_sentence_transformers_without_hf_corrector_encodes_like_the_retriever(round_trip):
    got, ref = round_trip.got, round_trip.ref
    assert got["modules"] == []
    for name, sources in (("shared", [str(round_trip.work / "saved-shared"), SHARED_REPO]),
                          ("two", [str(round_trip.work / "saved-two"), TWO_TOWER_REPO])):
        for source in sources:
            _close(got[source]["q"], ref[name]["q"])
            _close(got[source]["d"], ref[name]["d"])
            _close(got[source]["plain"], ref[name]["d"])  # plain encode() = documents
    assert got[SHARED_REPO]["similarity"] == "cosine" and got[TWO_TOWER_REPO]["similarity"] == "dot"
    assert got[SHARED_REPO]["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert got[TWO_TOWER_REPO]["modules"] == ["Router", "Pooling"]
    # two towers: each route truncates at its own side's max length, like encode_queries
    _close(got[TWO_TOWER_REPO]["long_q"], ref["two"]["long_q"])
    import torch

    assert not torch.allclose(torch.tensor(ref["two"]["q"]), torch.tensor(ref["two"]["d"]), atol=1e-3)
