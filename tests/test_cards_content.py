"""Card content (issue 12): no local path ever, a base model's Hub id when it can be known, distinct query counts,
and the strategy and citations described through the trainer's own objects (``trainer.negatives``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertModel

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrievalData, RetrieverModel
from hf_corrector.hub import render_retriever_card
from hf_corrector.hub.card_data import CITATIONS
from hf_corrector.training.model_card import card_data_from_trainer, strategy_and_citations
from tests.tiny import WORDS, tiny_data, tiny_tokenizer

ABSOLUTE = re.compile(r"(?<![\w.:/\-])/(?:tmp|home|root|work|Users|var|private)(?:/[\w.\-]+)*")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded: the tiny models are faster so on a shared machine."""


def _args(out: Path, **kw) -> CorrectorTrainingArguments:
    base = dict(max_steps=2, per_device_train_batch_size=4, num_negatives=3, logging_steps=1, report_to=[],
                use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
    return CorrectorTrainingArguments(str(out), **{**base, **kw})


def _local_backbone(folder: Path) -> Path:
    """A tiny BERT + tokenizer saved as a plain local model folder (what a user fine-tunes from, offline)."""
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layout", ["plain", "hf_cache"])
def test_trained_from_a_local_folder_no_path_in_cards(tmp_path, layout):
    if layout == "plain":
        folder, expected_base = tmp_path / "my-backbone", None
    else:  # a local snapshot of a Hub model in the Hugging Face cache: its Hub id is known
        folder, expected_base = tmp_path / "hub" / "models--my-org--tiny-bert" / "snapshots" / "0123abc", "my-org/tiny-bert"
    retriever = RetrieverModel.from_backbone(str(_local_backbone(folder)))
    assert retriever.config.base_model_name_or_path == str(folder)  # absolute, and recorded for provenance
    train, test = tiny_data()
    out = tmp_path / "out"
    trainer = CorrectorTrainer(model=retriever, args=_args(out), train_dataset=train, eval_dataset=test)
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    trainer.create_model_card()

    for readme in (out / "README.md", out / "corrector" / "README.md"):
        text = readme.read_text()
        assert str(tmp_path) not in text and "/tmp" not in text, readme
        assert ABSOLUTE.findall(text) == [], (readme, ABSOLUTE.findall(text))
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == expected_base
    assert ModelCard.load(out / "corrector" / "README.md").data.base_model == expected_base
    if expected_base is None:
        assert "starting from a local model (`my-backbone`)" in card.text
        assert "| Base model | `my-backbone` (a local folder) |" in card.text
    else:
        assert f"starting from [`{expected_base}`](https://huggingface.co/{expected_base})" in card.text


def test_a_local_path_in_arguments_or_names_is_not_shown(tmp_path):
    card_data = card_data_from_trainer(CorrectorTrainer(
        model=RetrieverModel.from_backbone(str(_local_backbone(tmp_path / "bb"))), train_dataset=tiny_data()[0],
        args=_args(tmp_path / "out", resume_from_checkpoint=None)))
    card_data.train_dataset_name = str(tmp_path / "data" / "scifact")
    card_data.hyperparameters["some_path"] = str(tmp_path / "x" / "file.json")
    text = render_retriever_card(card_data, repo_id="me/model")
    assert str(tmp_path) not in text and ABSOLUTE.findall(text) == []
    assert "on **scifact**" in text


def test_query_count_is_distinct_queries_not_pairs(tmp_path):
    docs = [{"doc_id": f"d{i}", "text": " ".join(WORDS[i % len(WORDS)] for _ in range(5)) + f" w{i}"}
            for i in range(30)]
    queries = [{"query_id": f"q{j}", "query": f"{WORDS[j]} {WORDS[j + 1]}",
                "positive_ids": [f"d{2 * j}", f"d{2 * j + 1}"]} for j in range(10)]
    train = RetrievalData.from_records(queries, docs, name="two-positives")
    from tests.tiny import tiny_retriever

    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path / "out"), train_dataset=train)
    assert len(trainer.train_examples) == 20  # one training row per (query, positive)
    card = card_data_from_trainer(trainer)
    assert (card.num_train_queries, card.num_train_pairs, card.num_docs) == (10, 20, 30)
    text = render_retriever_card(card, repo_id="me/model")
    assert "Training data: two-positives (10 queries, 20 (query, positive) pairs, 30 documents)" in text


@pytest.mark.parametrize("kwargs, keys", [
    ({}, ["corrector"]),
    ({"cache_refresh_steps": 2}, ["corrector", "ance"]),
    ({"correction": "nystrom", "nystrom_landmarks": 16}, ["corrector", "nystrom"]),
    ({"tele_negatives": True}, ["corrector", "ance-tele"]),
    ({"num_negatives": 0}, ["corrector"]),
])
def test_strategy_and_citations_come_from_the_trainers_negatives(tmp_path, kwargs, keys):
    from tests.tiny import tiny_retriever

    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path / "out", **kwargs),
                               train_dataset=tiny_data()[0])
    strategy, got = strategy_and_citations(trainer.strategy, trainer.negatives)
    assert got == keys
    if kwargs.get("num_negatives") == 0:
        assert strategy.startswith("in-batch negatives only")
    else:
        assert strategy.startswith(trainer.negatives.describe())
    card = card_data_from_trainer(trainer)
    assert card.strategy == strategy and card.citations == [CITATIONS[k] for k in keys]
    text = render_retriever_card(card, repo_id="me/model")
    assert f"Training strategy: **{strategy}**" in text


def test_ance_is_cited_once_a_refresh_ran(tmp_path):
    from tests.tiny import tiny_retriever

    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path / "out"),
                               train_dataset=tiny_data()[0])
    assert strategy_and_citations(trainer.strategy, trainer.negatives, num_refreshes=1)[1] == ["corrector", "ance"]
    strategy, keys = strategy_and_citations(trainer.strategy, trainer.negatives)
    assert strategy == trainer.strategy.description(trainer.negatives) and keys == ["corrector"]
