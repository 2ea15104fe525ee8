"""Model and dataset cards rendered in-process (no Hub): metadata, tables, citations, secrets, packaging."""

from __future__ import annotations

import json
import re

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, StaleCache
from hf_corrector.hub import (
    CardData,
    non_default_hyperparameters,
    render_cache_card,
    render_corrector_card,
    render_retriever_card,
    template_path,
)
from hf_corrector.hub.cards import CACHE_TEMPLATE, CORRECTOR_TEMPLATE, RETRIEVER_TEMPLATE
from hf_corrector.utils.hub_ids import is_hub_id, redact
from tests.tiny import REPO_ROOT, tiny_data, tiny_retriever

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

SECRET = "hf_secretCardsMustNotShowThis987654"


def _args(out, **kw) -> CorrectorTrainingArguments:
    base = dict(max_steps=4, per_device_train_batch_size=4, num_negatives=3, logging_steps=1, report_to=[],
                use_cpu=True, save_strategy="no", seed=0)
    return CorrectorTrainingArguments(str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with a refresh and a hub token; evaluated before and after training; cards written."""
    tmp = tmp_path_factory.mktemp("cards")
    train, test = tiny_data()
    args = _args(tmp / "out", cache_refresh_steps=2, eval_corpus_embeddings="fresh,stale,corrected",
                 hub_token=SECRET, corrector_learning_rate=5e-3)
    trainer = CorrectorTrainer(model=tiny_retriever(tmp), args=args, train_dataset=train, eval_dataset=test)
    trainer.evaluate()
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.create_model_card(license="apache-2.0", tags=["my-tag"])
    return trainer, metrics, tmp / "out"


def test_templates_found_in_source_tree():
    for name in (RETRIEVER_TEMPLATE, CORRECTOR_TEMPLATE, CACHE_TEMPLATE):
        path = template_path(name)
        assert path.is_file() and path.parent.name == "model_cards", path
    with pytest.raises(FileNotFoundError):
        template_path("missing.md.j2")


def test_pyproject_ships_every_package_and_the_templates():
    """The package list is explicit (for the model_cards mapping): it must name every package of the tree."""
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    inits = (REPO_ROOT / "hf_corrector").rglob("__init__.py")
    on_disk = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in inits}
    assert set(tool["packages"]) == on_disk | {"hf_corrector.model_cards"}, "update [tool.setuptools] packages"
    assert tool["package-dir"]["hf_corrector.model_cards"] == "model_cards"
    assert "*.j2" in tool["package-data"]["hf_corrector.model_cards"]
    assert (REPO_ROOT / "model_cards" / "__init__.py").is_file()


def test_retriever_card_metadata(trained):
    trainer, metrics, out = trained
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    # a saved retriever is a sentence-transformers model, and its card says so
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == "tiny-bert" and data["datasets"] == ["tiny-train"]
    expected_tags = {"sentence-transformers", "sentence-similarity", "dense-retrieval", "hf-corrector",
                     "corrector-networks", "generated_from_trainer", "my-tag"}
    assert expected_tags <= set(data["tags"])
    widget = data["widget"]
    assert len(widget) == 1 and widget[0]["source_sentence"] == trainer.train_examples[0]["query"]
    assert widget[0]["sentences"][0] == trainer.corpus_texts[trainer.train_examples[0]["positive_row"]]
    assert len(widget[0]["sentences"]) == 3
    results = {r.metric_type: r for r in card.data.eval_results}
    # the Hub's standard metric types, for the model's own (fresh) quality only
    assert set(results) == {"ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"}, set(results)
    assert results["ndcg_at_10"].metric_value == pytest.approx(metrics["eval_ndcg@10"])
    assert results["mrr_at_10"].metric_value == pytest.approx(metrics["eval_mrr@10"])
    assert results["recall_at_100"].metric_value == pytest.approx(metrics["eval_recall@100"])
    assert results["ndcg_at_10"].dataset_name == "tiny-test" and results["ndcg_at_10"].task_type == "text-retrieval"


def test_retriever_card_body(trained):
    trainer, metrics, out = trained
    text = (out / "README.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| \d+\.\d\d \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == [0, 4], rows
    header = next(line for line in text.splitlines() if line.startswith("| Step | Epoch |"))
    assert "nDCG@10 (stale)" in header and "MRR@10 (corrected)" in header and "Re-embedding cost" in header
    assert f"{metrics['eval_stale_ndcg@10']:.4f}" in rows[-1]
    assert f"{trainer.negatives.describe()}; full re-embedding of the corpus every 2 steps" in text
    assert "Training data: tiny-train (36 queries, 120 documents)" in text
    cost = trainer.cost
    assert cost["num_refreshes"] == 2
    assert f"| {cost['refresh_encodings']} ({cost['num_refreshes']} refreshes) |" in text
    assert "| `cache_refresh_steps` | 2 |" in text and "| `num_negatives` | 3 |" in text
    assert "| `corrector_learning_rate` | 0.0050 |" in text
    for hidden in ("hub_token", "output_dir", "report_to", "logging_steps", "save_strategy"):
        assert f"`{hidden}`" not in text
    corrector_params = sum(p.numel() for p in trainer.corrector.parameters())
    assert f"{corrector_params:,} parameters" in text
    staleness = trainer.model_card_data.staleness
    assert staleness["step"] == 4 and f"{staleness['staleness_cos_corrected']:.4f}" in text
    assert "Approximate Nearest Neighbor Negative Contrastive Learning" in text  # a refresh was used
    assert "Teleportation Negatives" not in text
    assert "- transformers:" in text and "- hf-corrector:" in text


def test_corrector_card_written_next_to_the_corrector(trained):
    trainer, _, out = trained
    card = ModelCard.load(out / "corrector" / "README.md")
    assert card.data.library_name == "hf-corrector" and "corrector" in card.data.tags
    assert card.data.base_model == "tiny-bert"  # the model the retriever (parent folder) was trained from
    assert "the retriever in the parent folder" in card.text and 'subfolder="corrector"' in card.text
    assert (out / "corrector" / "config.json").is_file()
    rendered = render_corrector_card(trainer.model_card_data, retriever_repo_id="me/retriever", repo_id="me/corrector")
    again = ModelCard(rendered)
    assert again.data.base_model == "me/retriever"
    # in the retriever's own repo (subfolder), the corrector never names that repo, i.e. itself, as base_model
    inside = ModelCard(render_corrector_card(trainer.model_card_data, retriever_repo_id="me/retriever",
                                             subfolder="corrector"))
    assert inside.data.base_model == "tiny-bert"
    alone = CardData(model_name="c")
    assert ModelCard(render_corrector_card(alone, retriever_repo_id="me/c", repo_id="me/c")).data.base_model is None
    assert 'AutoModel.from_pretrained("me/corrector")' in again.text


def test_hub_token_never_in_cards_or_saved_files(trained):
    trainer, _, out = trained
    assert trainer.args.hub_token == SECRET
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert json.loads((out / "training_args.json").read_text())["hub_token"] == "<HUB_TOKEN>"
    assert "hub_token" not in non_default_hyperparameters(trainer.args)
    assert redact(f"token={SECRET}!", [SECRET]) == "token=<REDACTED>!"
    card = CardData(model_name="m", description=f"leaked {SECRET}")  # a secret slipped into free text is redacted
    assert SECRET not in render_retriever_card(card, secrets=[SECRET])


def test_no_corrector_strategy_card(tmp_path):
    train, _ = tiny_data()
    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path / "out", correction="none",
                                                                         max_steps=2), train_dataset=train)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "exhaustive top-k over identity scores, 3 per query; no re-embedding of the corpus" in text
    assert "No evaluation was run." in text
    assert "subfolder=\"corrector\"" not in text and not (tmp_path / "out" / "corrector").exists()
    assert "model-index" not in ModelCard.load(tmp_path / "out" / "README.md").data.to_dict()


def test_strategies_and_citations(tmp_path):
    """The card's strategy line and citations come from the strategy object alone (no trainer needed)."""
    from hf_corrector.training.strategy import NegativeStrategy

    cases = {
        "in-batch negatives only; no re-embedding of the corpus": dict(num_negatives=0),
        "exhaustive top-k over identity scores, 3 per query; no re-embedding": dict(correction="none"),
        "identity scores, 3 per query; full re-embedding of the corpus every 5 steps":
            dict(correction="none", cache_refresh_steps=5),
        "exhaustive top-k over corrector scores, 3 per query; no re-embedding of the corpus": {},
        "over linear-corrector scores, 3 per query; full re-embedding of the corpus every 5 steps":
            dict(correction="linear", cache_refresh_steps=5),
        "over nystrom scores": dict(correction="nystrom"),
        "ANCE-Tele pools (ANN + lookahead + momentum, 200 per pool": dict(tele_negatives=True),
        "exhaustive Gumbel-top-k (temperature 0.05)": dict(negative_sampling="gumbel"),
        "(cache write-back, 2 corrector warm-up steps)": dict(cache_write_back=True, corrector_warmup_steps=2),
        "negatives given by the training data + exhaustive": dict(hard_negatives="dataset+cache"),
    }
    for expected, kw in cases.items():
        assert expected in NegativeStrategy.from_args(_args(tmp_path, **kw)).description(), (expected, kw)

    def keys(num_refreshes=0, **kw):
        return NegativeStrategy.from_args(_args(tmp_path, **kw)).citations(num_refreshes=num_refreshes)

    assert keys() == ["corrector"]
    assert keys(cache_refresh_steps=3) == ["corrector", "ance"] and keys(num_refreshes=1) == ["corrector", "ance"]
    assert keys(tele_negatives=True) == ["corrector", "ance-tele"]
    assert keys(correction="nystrom") == ["corrector", "nystrom"]
    assert keys(num_negatives=0, correction="none") == ["corrector"]
    assert keys(hard_negatives="dataset", correction="none") == ["corrector"]  # no negative from the cache


def test_local_base_model_stays_out_of_metadata(tmp_path):
    local = str(tmp_path)  # an existing folder: never a Hub id
    assert not is_hub_id(local) and not is_hub_id("../x") and is_hub_id("org/name") and is_hub_id("bert-base-uncased")
    card = ModelCard(render_retriever_card(CardData(model_name="m", base_model=local, train_dataset_name=local)))
    assert card.data.base_model is None and card.data.datasets is None
    assert local not in card.content and str(tmp_path.parent) not in card.content
    assert f"starting from a local model (`{tmp_path.name}`)" in card.text


def test_cache_dataset_card(tmp_path):
    steps = [-1] * 6 + [3, 3, 7, 7]
    cache = StaleCache([f"d{i}" for i in range(10)], torch.randn(10, 8), steps=steps, dtype="float16",
                       provenance={"encoder": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "mean",
                                   "normalize": True, "target_max_length": 256})
    text = render_cache_card(cache, "me/my-cache", keep_existing_metadata=False)
    card = DatasetCard(text)
    assert {"hf-corrector", "stale-cache", "embeddings"} <= set(card.data.tags)
    assert card.data.size_categories == "n<1K"
    link = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"
    assert f"[`sentence-transformers/all-MiniLM-L6-v2`]({link})" in text
    assert "| Embedding dimension | 8 |" in text and "| Storage dtype | float16 |" in text and "| Rows | 10 |" in text
    assert "| Pooling | mean |" in text and "| L2-normalised | True |" in text
    assert "| 6 | 4 | -1 | 7 | 3 |" in text  # initial rows, rewritten rows, first/last step, distinct steps
    assert 'StaleCache.load("me/my-cache")' in text and "monath2024fresh" in text
