"""Habits of transformers / sentence-transformers users that must do what they expect (or fail at once, saying what
to do instead)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrievalData, RetrieverModel, StaleCache
from hf_corrector.errors import ConfigError
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever, tiny_trainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _trainer(tmp_path, eval_dataset=None, cls=CorrectorTrainer, out="out", **kw):
    train, test = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / out), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3, **kw})
    return cls(model=tiny_retriever(tmp_path), args=args, train_dataset=train,
               eval_dataset=test if eval_dataset is None else eval_dataset)


def test_gradient_checkpointing_trains_with_checkpointed_encoders(tmp_path):
    trainer = _trainer(tmp_path, gradient_checkpointing=True, max_steps=2)
    trainer.train()
    assert trainer.retriever.encoder.is_gradient_checkpointing
    assert trainer.state.global_step == 2 and np.isfinite(trainer.state.log_history[-2]["train_loss"])


def test_predict_returns_ranked_rows_and_test_metrics(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    _, test = tiny_data()
    out = trainer.predict(test)
    assert out.predictions.shape == (len(test.queries), 100)
    metrics = trainer.evaluate(test, metric_key_prefix="test")
    assert out.metrics["test_ndcg@10"] == metrics["test_ndcg@10"] > 0
    # the first prediction of each query is its best fresh-scored document
    q = trainer.retriever.encode_queries(list(test.queries["query"]), max_length=trainer.args.query_max_length)
    best = (q @ trainer.corpus_embeddings("fresh").T).argmax(1)
    assert torch.equal(torch.as_tensor(out.predictions[:, 0]), best)


def test_a_dict_of_eval_datasets_is_evaluated_per_name(tmp_path):
    _, test = tiny_data()
    half = test.queries.select(range(len(test.queries) // 2))
    trainer = _trainer(tmp_path, eval_dataset={"all": test, "half": half}, max_steps=1)
    metrics = trainer.evaluate()
    assert {"eval_all_ndcg@10", "eval_half_ndcg@10"} <= set(metrics)
    assert metrics["eval_all_ndcg@10"] == trainer.evaluate(test)["eval_ndcg@10"]
    assert trainer.evaluate("half")["eval_half_ndcg@10"] == metrics["eval_half_ndcg@10"]


def test_compute_metrics_is_refused_with_what_to_do_instead(tmp_path):
    train, test = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **TINY_TRAINING_DEFAULTS)
    with pytest.raises(ConfigError, match="computes retrieval metrics itself.*override retrieval_metrics"):
        CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train, compute_metrics=lambda p: {})


def test_callbacks_receive_the_retriever_and_its_tokenizer(tmp_path):
    seen = []

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            seen.append((model, processing_class))

    trainer = _trainer(tmp_path, max_steps=2)
    trainer.add_callback(Spy())
    trainer.train()
    assert len(seen) == 2
    model, tokenizer = seen[0]
    assert isinstance(model, RetrieverModel) and model is trainer.retriever
    assert tokenizer is trainer.retriever.tokenizer and callable(model.encode_queries)


def test_save_model_writes_the_cache_and_loads_back(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, cache_write_back=True)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    cache = StaleCache.load(tmp_path / "saved" / "stale_cache")
    assert torch.equal(cache.matrix(), trainer.cache.matrix()) and torch.equal(cache.steps, trainer.cache.steps)


def test_held_out_positives_outside_the_training_corpus_are_searched(tmp_path):
    train, test = tiny_data()
    # the evaluation data brings its own corpus: 10 new documents, each the positive of one held-out query
    new_docs = datasets.Dataset.from_dict({"doc_id": [f"new{i}" for i in range(10)],
                                           "text": [test.queries["query"][i] + " answer" for i in range(10)]})
    queries = test.queries.select(range(10)).map(lambda row, i: {"positive_ids": [f"new{i}"]}, with_indices=True)
    held_out = RetrievalData(queries, datasets.concatenate_datasets([train.corpus, new_docs]))
    trainer = _trainer(tmp_path, eval_dataset=held_out, max_steps=1)
    found = trainer.evaluate()["eval_recall@100"]
    assert found > 0.5  # the new documents are in the search (they would all count as misses otherwise)
    with pytest.raises(ConfigError, match="10 held-out positives.*not in the training corpus.*'fresh'"):
        trainer.retrieval_metrics(queries, ["stale"], extra=(["new0"] * 10, ["x"] * 10))
    orphan = RetrievalData(queries, train.corpus)
    with pytest.raises(ConfigError, match="neither in the training corpus nor in the evaluation data's corpus"):
        trainer.evaluate(orphan)


def test_resume_true_string_and_no_cache_encoding_before_resume(tmp_path, monkeypatch):
    first = _trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    builds = []
    original = StaleCache.build.__func__
    monkeypatch.setattr(StaleCache, "build", classmethod(lambda cls, *a, **k: builds.append(1) or original(cls, *a, **k)))
    again = _trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2, resume_from_checkpoint="true")
    assert builds == []  # the checkpoint's cache is used: no corpus encoding that resuming would throw away
    again.train(resume_from_checkpoint="true")
    assert again.state.global_step == 6


def test_reembedding_cost_is_in_the_per_step_logs(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4, logging_steps=1)
    trainer.train()
    costs = [h["reembedding_cost"] for h in trainer.state.log_history if "loss" in h]
    assert len(costs) == 4 and costs == sorted(costs) and costs[0] > trainer.cost["initial_cache_encodings"]
    assert costs[-1] == trainer.total_reembedding_cost()


def test_progress_bars_name_their_phase(tmp_path, capsys):
    trainer = _trainer(tmp_path, max_steps=2, cache_refresh_steps=1, correction="none", disable_tqdm=False)
    capsys.readouterr()
    trainer.cache_manager.refresh(1)
    trainer.corpus_embeddings("fresh")
    train, _ = tiny_data()
    StaleCache.build(train.corpus, trainer.retriever, batch_size=8, show_progress_bar=True)
    err = capsys.readouterr().err
    for phase in ("refreshing the cache", "encoding the corpus for evaluation", "building the cache"):
        assert phase in err, (phase, err[-500:])
