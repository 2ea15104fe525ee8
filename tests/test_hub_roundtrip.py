"""Hub round trip against the FakeHub (tests/hub_server.py) with the REAL huggingface_hub / transformers / datasets
clients, each in a subprocess (tests/hub_env.py). Nothing on the client side is mocked.

One publisher run (module fixture) trains a tiny retriever with ``push_to_hub=True`` (``hub_strategy="checkpoint"``,
a secret ``hub_token``), pushes it with ``trainer.push_to_hub()``, publishes the stale cache and the corrector in its
own repo, and saves reference tensors. Consumers then start from an empty ``HF_HOME``.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from tests.hub_env import run_with_hub
from tests.hub_server import FakeHub

SECRET = "hf_secretDoNotLeakMe0123456789abcdef"
REPO, CORRECTOR_REPO, CACHE_REPO = "tester/tiny-retriever", "tester/tiny-corrector", "tester/tiny-cache"

PUBLISH = """
    import json, logging, sys
    from pathlib import Path
    import torch
    import transformers
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    transformers.logging.set_verbosity_info()

    from tests.tiny import tiny_data, tiny_retriever
    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
    from hf_corrector.hub import push_corrector

    train, test = tiny_data()
    args = CorrectorTrainingArguments(
        "out", max_steps=6, per_device_train_batch_size=4, num_negatives=3, logging_steps=2, save_steps=3,
        report_to=[], use_cpu=True, seed=0, eval_corpus_embeddings="fresh,stale,corrected",
        push_to_hub=True, hub_model_id="%(repo)s", hub_strategy="checkpoint", hub_token="%(secret)s",
    )
    trainer = CorrectorTrainer(model=tiny_retriever(Path(".")), args=args, train_dataset=train, eval_dataset=test)
    trainer.evaluate()  # step 0: before training
    trainer.train()
    metrics = trainer.evaluate()
    trainer.model_card_data.cache_repo_id = "%(cache_repo)s"
    trainer.push_to_hub(commit_message="End of training")
    trainer.cache.push_to_hub("%(cache_repo)s")
    push_corrector(trainer.corrector, "%(corrector_repo)s", retriever_repo_id="%(repo)s")

    queries, docs = list(test.queries["query"]), list(train.corpus["text"])[:20]
    retriever, corrector = trainer.retriever.eval(), trainer.corrector.eval()
    with torch.no_grad():
        ref = {"q": retriever.encode_queries(queries), "d": retriever.encode_targets(docs),
               "h": corrector(trainer.cache.matrix()[:20].float()),
               "cache": trainer.cache.matrix().clone(), "steps": trainer.cache.steps.clone()}
    torch.save(ref, "ref.pt")
    Path("ref.json").write_text(json.dumps({"metrics": metrics, "queries": queries, "docs": docs,
                                            "provenance": trainer.cache.provenance, "cost": trainer.cost}))
    print("PUBLISHED")
""" % {"repo": REPO, "secret": SECRET, "cache_repo": CACHE_REPO, "corrector_repo": CORRECTOR_REPO}

CONSUME = """
    import json, os, re
    from pathlib import Path
    import torch
    assert not any(Path(os.environ["HF_HOME"]).iterdir()), "HF_HOME must start empty"
    import hf_corrector  # registers the Auto classes: no trust_remote_code anywhere below
    from hf_corrector import CorrectorModel, CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel, StaleCache
    from huggingface_hub import ModelCard
    from transformers import AutoModel
    from tests.tiny import tiny_data

    ref = torch.load(Path(%(ref_dir)r) / "ref.pt")
    meta = json.loads((Path(%(ref_dir)r) / "ref.json").read_text())
    out = {}

    # 1. the retriever and its corrector (subfolder), the corrector in its own repo, via AutoModel too
    retriever = RetrieverModel.from_pretrained("%(repo)s")
    corrector = CorrectorModel.from_pretrained("%(repo)s", subfolder="corrector").eval()
    own = AutoModel.from_pretrained("%(corrector_repo)s").eval()
    auto_retriever = AutoModel.from_pretrained("%(repo)s")
    with torch.no_grad():
        out["q_equal"] = torch.equal(retriever.encode_queries(meta["queries"]), ref["q"])
        out["d_equal"] = torch.equal(retriever.encode_targets(meta["docs"]), ref["d"])
        out["h_equal"] = torch.equal(corrector(ref["cache"][:20].float()), ref["h"])
        out["own_repo_h_equal"] = torch.equal(own(ref["cache"][:20].float()), ref["h"])
    out["own_repo_class"] = type(own).__name__
    out["auto_retriever_class"] = type(auto_retriever).__name__

    # 2. the cards, parsed by huggingface_hub
    card = ModelCard.load("%(repo)s")
    out["card_data"] = card.data.to_dict()
    out["card_text"] = card.text
    out["eval_results"] = [[r.metric_type, r.metric_value, r.dataset_name] for r in card.data.eval_results or []]
    corrector_card = ModelCard.load("%(corrector_repo)s")
    out["corrector_card_data"] = corrector_card.data.to_dict()
    out["corrector_card_text"] = corrector_card.text

    # 3. the card's usage snippet, as published, runs
    snippet = [b for b in re.findall(r"```python\\n(.*?)```", card.content, re.S) if "RetrieverModel" in b][0]
    namespace = {}
    exec(compile(snippet, "README usage", "exec"), namespace)
    out["snippet_scores_shape"] = list(namespace["scores"].shape)
    out["snippet_corrector"] = type(namespace.get("corrector")).__name__

    # 4. the cache, and training continued from the published retriever + corrector + cache
    cache = StaleCache.load("%(cache_repo)s")
    out.update(matrix_equal=torch.equal(cache.matrix(), ref["cache"]),
               steps_equal=torch.equal(cache.steps, ref["steps"]), provenance_equal=cache.provenance == meta["provenance"], doc_ids=cache.doc_ids[:3])
    train, _ = tiny_data()
    trainer = CorrectorTrainer(
        model=retriever, corrector=corrector, cache=cache, train_dataset=train,
        args=CorrectorTrainingArguments("continued", max_steps=3, per_device_train_batch_size=4, num_negatives=3,
                                        report_to=[], use_cpu=True, save_strategy="no",
                                        cache_from_other_weights=True),  # written by earlier weights, on purpose
    )
    trainer.train()
    out["cost"] = trainer.cost
    Path("consumed.json").write_text(json.dumps(out))
    print("CONSUMED")
"""


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    work = tmp_path_factory.mktemp("publisher")
    proc = run_with_hub(PUBLISH, hub.url, work, timeout=240)
    assert "PUBLISHED" in proc.stdout
    return SimpleNamespace(work=work, proc=proc, hub=hub, ref=json.loads((work / "ref.json").read_text()))


@pytest.fixture(scope="module")
def consumed(published, tmp_path_factory):
    work = tmp_path_factory.mktemp("consumer")
    code = CONSUME % {"ref_dir": str(published.work), "repo": REPO, "corrector_repo": CORRECTOR_REPO,
                      "cache_repo": CACHE_REPO}
    proc = run_with_hub(code, published.hub.url, work, timeout=240)
    assert "CONSUMED" in proc.stdout
    return json.loads((work / "consumed.json").read_text())


def test_trainer_push_uploads_retriever_corrector_cards_and_checkpoint(published):
    files = published.hub.files(REPO)
    expected = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "training_args.json",
                "reembedding_cost.json", "corrector/config.json", "corrector/model.safetensors", "corrector/README.md",
                "last-checkpoint/model.safetensors", "last-checkpoint/corrector/model.safetensors",
                "last-checkpoint/stale_cache/cache.arrow", "last-checkpoint/trainer_state.json"}
    assert expected <= set(files), sorted(expected - set(files))
    assert not any(p.endswith("training_args.bin") for p in files), sorted(files)  # pickled args carry the token
    assert not any(p.startswith("checkpoint-") for p in files)
    titles = [c.title for c in published.hub.repos[("model", REPO)].history("main")]
    assert "End of training" in titles and any(t.startswith("Training in progress") for t in titles), titles
    assert published.hub.unknown_routes == []


def test_models_reload_identically_from_a_fresh_cache(consumed):
    assert consumed["q_equal"] and consumed["d_equal"], "retriever encodings differ after the round trip"
    assert consumed["h_equal"], "corrector (subfolder) outputs differ after the round trip"
    assert consumed["own_repo_h_equal"] and consumed["own_repo_class"] == "CorrectorModel"
    assert consumed["auto_retriever_class"] == "RetrieverModel"


def test_pushed_retriever_card_metadata_and_tables(published, consumed):
    data = consumed["card_data"]
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "sentence-similarity"} <= set(data["tags"]) and data["widget"]
    assert data["base_model"] == "tiny-bert"
    assert data["datasets"] == ["tiny-train"]
    assert {"dense-retrieval", "hf-corrector", "corrector-networks", "generated_from_trainer"} <= set(data["tags"])
    final = published.ref["metrics"]
    results = {metric: value for metric, value, _ in consumed["eval_results"]}
    assert set(results) == {"ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"}  # standard types
    assert results["ndcg_at_10"] == pytest.approx(final["eval_ndcg@10"])
    assert results["mrr_at_10"] == pytest.approx(final["eval_mrr@10"])
    assert {name for _, _, name in consumed["eval_results"]} == {"tiny-test"}
    assert data["model-index"][0]["name"] == "tiny-retriever"

    text = consumed["card_text"]
    table = [line for line in text.splitlines() if line.startswith("| ") and re.match(r"\| \d+ \| \d+\.\d\d \|", line)]
    steps = [int(line.split("|")[1]) for line in table]
    assert steps == [0, 6], table  # the evaluation before training is kept, then the final one
    assert f"{final['eval_corrected_ndcg@10']:.4f}" in table[-1]
    assert "nDCG@10 (corrected)" in text
    cost = published.ref["cost"]
    assert f"| {cost['initial_cache_encodings']} | {cost['step_target_encodings']} |" in text
    assert "staleness" in text.lower() and "| `num_negatives` | 3 |" in text
    assert "A Fresh Take on Stale Embeddings" in text and "Approximate Nearest Neighbor" not in text
    assert 'RetrieverModel.from_pretrained("tester/tiny-retriever")' in text
    assert 'StaleCache.load("tester/tiny-cache")' in text
    for line in ("- transformers:", "- torch:", "- hf-corrector:"):
        assert line in text


def test_card_usage_snippet_runs_against_the_hub(consumed):
    assert consumed["snippet_scores_shape"] == [1, 2]
    assert consumed["snippet_corrector"] == "CorrectorModel"


def test_corrector_cards_name_the_retriever_as_base_model(published, consumed):
    assert consumed["corrector_card_data"]["base_model"] == REPO
    assert consumed["corrector_card_data"]["library_name"] == "hf-corrector"
    assert 'AutoModel.from_pretrained("tester/tiny-corrector")' in consumed["corrector_card_text"]
    inner = published.hub.files(REPO)["corrector/README.md"].decode()
    assert "base_model: tiny-bert" in inner and f"base_model: {REPO}" not in inner  # never its own repo
    assert 'subfolder="corrector"' in inner


def test_cache_round_trip_and_continue_training_without_reembedding(published, consumed):
    out = consumed
    assert out["matrix_equal"] and out["steps_equal"] and out["provenance_equal"], out
    assert out["doc_ids"] == ["d0", "d1", "d2"]
    assert out["cost"]["initial_cache_encodings"] == 0 and out["cost"]["refresh_encodings"] == 0, out["cost"]
    assert out["cost"]["step_target_encodings"] > 0

    files = published.hub.files(CACHE_REPO, repo_type="dataset")
    card = files["README.md"].decode()
    assert {"cache_info.json", "README.md"} <= set(files) and any(p.endswith(".parquet") for p in files)
    assert 'StaleCache.load("tester/tiny-cache")' in card and "tiny-bert" in card
    assert "configs:" in card and "dataset_info:" in card  # what `datasets` wrote is kept
    assert published.hub.unknown_routes == []


def test_hub_token_never_written_logged_or_pushed(published):
    secret = SECRET.encode()
    assert secret not in published.proc.stdout.encode() and secret not in published.proc.stderr.encode()
    assert "<HUB_TOKEN>" in (published.work / "out" / "training_args.json").read_text()
    leaked = [str(p) for p in published.work.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaked == [], f"hub token written to {leaked}"
    hub = published.hub
    checked = 0
    for (repo_type, repo_id), repo in hub.repos.items():
        for commit in repo.commits.values():
            assert SECRET not in commit.title and SECRET not in commit.message
            for path, blob in commit.files.items():
                checked += 1
                assert secret not in blob.data, f"hub token in {repo_type} {repo_id}:{path} ({commit.title})"
    assert all(secret not in data for data in hub.lfs_store.values())
    assert checked > 20


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_every_card_snippet_runs_verbatim_against_the_hub(published, tmp_path):
    """Every ```python block of every pushed card, exactly as published, runs in a fresh process and HF_HOME."""
    hub = published.hub
    cards = {f"{REPO}/README.md": hub.files(REPO)["README.md"].decode(),
             f"{REPO}/corrector/README.md": hub.files(REPO)["corrector/README.md"].decode(),
             f"{CORRECTOR_REPO}/README.md": hub.files(CORRECTOR_REPO)["README.md"].decode()}
    ran = []
    for where, text in cards.items():
        for i, block in enumerate(_python_blocks(text)):
            work = tmp_path / f"snippet-{len(ran)}"
            work.mkdir()
            try:
                run_with_hub(block, hub.url, work, timeout=240)
            except AssertionError as err:
                raise AssertionError(f"snippet {i} of {where} fails:\n{block}\n{err}") from None
            ran.append((where, i))
    by_card = {where: sum(1 for w, _ in ran if w == where) for where in cards}
    # retriever: sentence-transformers, hf-corrector, continue training; corrector: AutoModel, correct a cache
    assert by_card == {f"{REPO}/README.md": 3, f"{REPO}/corrector/README.md": 2, f"{CORRECTOR_REPO}/README.md": 2}
    assert "trainer.train()" in cards[f"{REPO}/README.md"]
    assert 'StaleCache.load("tester/tiny-cache")' in cards[f"{REPO}/README.md"]


def test_pushed_cards_show_no_local_path(published):
    work = str(published.work)
    absolute = re.compile(r"(?<![\w.:/\-])/(?:tmp|home|root|work|Users|var|private)(?:/[\w.\-]+)*")
    for (repo_type, repo_id), repo in published.hub.repos.items():
        for path, blob in published.hub.files(repo_id, repo_type=repo_type).items():
            if path.endswith(("README.md", ".json")):
                text = blob.decode()
                assert work not in text, f"{repo_id}:{path} shows the local folder {work}"
                if path.endswith("README.md"):
                    assert not absolute.findall(text), (f"{repo_id}:{path}", absolute.findall(text))
