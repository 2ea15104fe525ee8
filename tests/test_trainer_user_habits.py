"""Habits of Trainer users (issue 23, second round): standard collators, ``predict()``'s callbacks, evaluation's
query preprocessing and batch size, ``trainer.model``'s ``save_pretrained`` / ``config``, ``compute_loss``
overrides as the Trainer docs write them, and a PEFT-wrapped retriever."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import DataCollatorWithPadding, TrainerCallback, default_data_collator

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel
from hf_corrector.errors import ConfigError
from hf_corrector.training.collator import CorrectorDataCollator
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _args(tmp_path, **kw):
    return CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 2, **kw})


def _trainer(tmp_path, cls=CorrectorTrainer, model=None, **kw):
    train, test = tiny_data()
    collator, model_init = kw.pop("data_collator", None), kw.pop("model_init", None)
    return cls(model=model if model is not None else tiny_retriever(tmp_path), args=_args(tmp_path, **kw),
               train_dataset=train, eval_dataset=test, data_collator=collator, model_init=model_init)


@pytest.mark.parametrize("which", ["DataCollatorWithPadding", "default_data_collator"])
def test_a_standard_collator_is_refused_naming_the_one_to_use(tmp_path, which):
    tokenizer = tiny_retriever(tmp_path).tokenizer
    collator = DataCollatorWithPadding(tokenizer) if which == "DataCollatorWithPadding" else default_data_collator
    with pytest.raises(ConfigError, match=f"data_collator={which}.*CorrectorDataCollator") as err:
        _trainer(tmp_path, data_collator=collator)
    assert "query_input_ids" in str(err.value) and "positive_rows" in str(err.value)


def test_a_collator_of_our_kind_still_trains(tmp_path):
    retriever = tiny_retriever(tmp_path)
    trainer = _trainer(tmp_path, model=retriever, data_collator=CorrectorDataCollator(retriever.tokenizer, 16))
    trainer.train()
    assert trainer.state.global_step == 2


def test_predict_fires_on_predict_not_on_evaluate(tmp_path):
    seen = []

    class Spy(TrainerCallback):
        def on_predict(self, args, state, control, metrics=None, **kwargs):
            seen.append(("predict", metrics))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(("evaluate", metrics))

    trainer = _trainer(tmp_path)
    trainer.add_callback(Spy())
    _, test = tiny_data()
    logged = len(trainer.state.log_history)
    out = trainer.predict(test)
    assert [name for name, _ in seen] == ["predict"] and seen[0][1] == out.metrics
    assert out.metrics["test_ndcg@10"] > 0 and len(trainer.state.log_history) == logged  # Trainer.predict logs nothing
    trainer.evaluate()
    assert [name for name, _ in seen] == ["predict", "evaluate"]


def _query_encodings(monkeypatch):
    calls = []
    original = RetrieverModel.encode

    def spy(self, texts, side="target", batch_size=64, **kw):
        if side == "query":
            calls.append((batch_size, kw.get("max_length"), kw.get("prefix")))
        return original(self, texts, side, batch_size, **kw)

    monkeypatch.setattr(RetrieverModel, "encode", spy)
    return calls


def test_evaluation_uses_per_device_eval_batch_size(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, per_device_eval_batch_size=3)
    calls = _query_encodings(monkeypatch)
    trainer.evaluate()
    assert calls and {c[0] for c in calls} == {3}
    assert _args(tmp_path).eval_batch_size_encode == 64  # left unset: as before
    assert _args(tmp_path, per_device_eval_batch_size=3, eval_batch_size_encode=5).eval_batch_size_encode == 5


def test_evaluation_uses_the_collators_query_preprocessing(tmp_path, monkeypatch):
    retriever = tiny_retriever(tmp_path)
    collator = CorrectorDataCollator(retriever.tokenizer, query_max_length=5, query_prefix="gene gene ")
    trainer = _trainer(tmp_path, model=retriever, data_collator=collator)
    _, test = tiny_data()
    texts = list(test.queries["query"])
    # what training sees of these queries: the collator's tokens
    batch = collator([{"query": t, "positive_rows": [0], "positive_row": 0, "example_id": 0} for t in texts])
    retriever.eval()
    with torch.no_grad():
        expected = retriever.embed(batch["query_input_ids"], batch["query_attention_mask"], "query")
    got = trainer.encode_queries(texts)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)
    plain = tiny_retriever(tmp_path).encode_queries(texts)  # the same weights without the collator's settings
    assert (got - plain).abs().max() > 1e-3  # the prefix and the length do change the encodings
    torch.testing.assert_close(retriever.encode_queries(texts), got)  # its config took them (saved with it)
    calls = _query_encodings(monkeypatch)
    trainer.evaluate()
    assert calls and all(c[1:] == (5, "gene gene ") for c in calls)


def test_trainer_model_save_pretrained_and_config_mean_the_trained_retriever(tmp_path):
    from hf_corrector import CorrectorModel

    trainer = _trainer(tmp_path)
    trainer.train()
    assert trainer.model.config is trainer.retriever.config and trainer.model.config.pooling == "mean"
    folder = tmp_path / "saved"
    trainer.model.save_pretrained(str(folder))
    _, test = tiny_data()
    texts = list(test.queries["query"])[:6]
    reloaded = RetrieverModel.from_pretrained(str(folder))
    torch.testing.assert_close(reloaded.encode_queries(texts), trainer.retriever.encode_queries(texts), rtol=0, atol=1e-6)
    corrector = CorrectorModel.from_pretrained(str(folder / "corrector"))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(corrector.state_dict().values(),
                                                       trainer.corrector.state_dict().values()))
    assert "use_cache" not in json.loads((folder / "config.json").read_text())  # Trainer's model.config.use_cache
    with pytest.raises(ConfigError, match="push_to_hub"):
        trainer.model.save_pretrained(str(tmp_path / "other"), push_to_hub=True)


def test_trainer_model_save_pretrained_merges_a_peft_encoder(tmp_path):
    from peft import LoraConfig, get_peft_model

    retriever = tiny_retriever(tmp_path)
    retriever.encoder = get_peft_model(retriever.encoder, LoraConfig(r=4, target_modules=["query", "value"],
                                                                    init_lora_weights=False))
    trainer = _trainer(tmp_path, model=retriever)
    trainer.train()
    trainer.model.save_pretrained(str(tmp_path / "saved"))
    texts = ["cell protein gene", "virus drug trial w3"]
    reloaded = RetrieverModel.from_pretrained(str(tmp_path / "saved"))
    torch.testing.assert_close(reloaded.encode_queries(texts), trainer.retriever.encode_queries(texts),
                               rtol=1e-4, atol=1e-5)


def test_a_peft_model_around_the_whole_retriever_is_refused_with_what_to_do(tmp_path):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_retriever(tmp_path), LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(ConfigError, match=r"get_peft_model\(retriever.encoder.*peft_config="):
        _trainer(tmp_path, model=wrapped)


def _losses(trainer):
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def test_a_compute_loss_override_as_in_the_trainer_docs_runs_the_same_step(tmp_path):
    seen = []

    class DocsTrainer(CorrectorTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            loss = outputs["loss"]
            ce = torch.nn.functional.cross_entropy(outputs.logits, outputs.labels)
            seen.append((ce.item(), self._metrics.last["task_loss"]))
            return (loss, outputs) if return_outputs else loss

    kw = {"max_steps": 3, "logging_steps": 1}
    expected = _losses(_trainer(tmp_path / "plain", **kw))
    assert _losses(_trainer(tmp_path / "docs", cls=DocsTrainer, **kw)) == expected
    assert len(seen) == 3 and all(abs(ce - task) < 1e-5 for ce, task in seen)  # logits / labels are the task loss's


def test_popping_labels_as_the_trainer_docs_do_names_what_to_call(tmp_path):
    class LabelsTrainer(CorrectorTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            return model(**inputs).loss + 0 * labels

    trainer = _trainer(tmp_path, cls=LabelsTrainer)
    with pytest.raises(KeyError, match=r"no 'labels'.*model\(\*\*inputs\).*super\(\)\.compute_loss"):
        trainer.train()


def test_resume_through_train_encodes_nothing_it_throws_away_and_counts_every_encoding(tmp_path, monkeypatch):
    kw = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "cache_refresh_steps": 3, "correction": "none"}
    _trainer(tmp_path, **kw).train()
    checkpoint = tmp_path / "out" / "checkpoint-4"
    at_checkpoint = json.loads((checkpoint / "corrector_trainer_state.json").read_text())["cost"]
    encoded = []
    original = RetrieverModel.embed

    def counting(self, input_ids, attention_mask, side):
        if side == "target":
            encoded.append(input_ids.shape[0])
        return original(self, input_ids, attention_mask, side)

    monkeypatch.setattr(RetrieverModel, "embed", counting)
    again = _trainer(tmp_path, **{**kw, "max_steps": 7})  # resume_from_checkpoint is not in the arguments
    again.train(resume_from_checkpoint=str(checkpoint))
    assert again.state.global_step == 7 and again.cost["num_refreshes"] == 2  # steps 3 (restored) and 6
    assert again.cost["initial_cache_encodings"] == at_checkpoint["initial_cache_encodings"] == 120
    # every target encoding of this process is in the counters, and the corpus was encoded once (the refresh)
    assert sum(encoded) == again.total_reembedding_cost() - sum(at_checkpoint[k] for k in (
        "initial_cache_encodings", "step_target_encodings", "refresh_encodings", "landmark_encodings"))
    assert sum(encoded) < 2 * 120


def test_compute_loss_func_and_model_push_to_hub_are_refused_naming_what_to_use(tmp_path):
    train, _ = tiny_data()
    with pytest.raises(ConfigError, match=r"compute_loss_func.*override compute_loss.*model\(\*\*inputs\)"):
        CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path), train_dataset=train,
                         compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)
    trainer = _trainer(tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.push_to_hub\(\)"):
        trainer.model.push_to_hub("me/model")


def test_logging_strategy_no_keeps_the_step_metrics_bounded(tmp_path):
    """With logging_strategy='no' the logging window never closes: its per-step values must not pile up a list per
    step (the false-negative filter's counts included), and a logged run's means are unchanged."""
    sizes = {}
    for steps in (2, 6):
        trainer = _trainer(tmp_path / str(steps), logging_strategy="no", max_steps=steps,
                           false_negative_margin=0.9)
        trainer.train()
        assert trainer._metrics.count("task_loss") == steps
        assert trainer.negatives.dropped.count("false_negatives_dropped") == steps
        sizes[steps] = sum(len(held) for means in (trainer._metrics, trainer.negatives.dropped)
                           for held in vars(means).values())  # values held: one per metric, not per step
    assert sizes[2] == sizes[6]
    logged = _trainer(tmp_path / "logged", logging_steps=2, max_steps=4, false_negative_margin=0.9)
    logged.train()
    rows = [row for row in logged.state.log_history if "loss" in row]
    assert len(rows) == 2 and all(row["false_negatives_dropped"] > 0 for row in rows)
    assert all(isinstance(row["task_loss"], float) for row in rows) and len(logged._metrics) == 0


def test_model_init_is_refused_instead_of_replacing_the_retriever(tmp_path):
    retriever = tiny_retriever(tmp_path)
    with pytest.raises(ConfigError, match=r"^model_init: .*one CorrectorTrainer per trial"):
        _trainer(tmp_path, model=retriever, model_init=lambda: retriever)


def test_model_objects_of_other_libraries_are_refused_naming_the_folder_to_pass(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    retriever = tiny_retriever(tmp_path)
    retriever.save_pretrained(tmp_path / "saved")
    with pytest.raises(ConfigError, match="got SentenceTransformer: .*model=" + re.escape(repr(str(tmp_path / "saved")))):
        _trainer(tmp_path, model=SentenceTransformer(str(tmp_path / "saved")))
    BertModel(retriever.encoder.config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"got BertModel: .*RetrieverModel\.from_backbone\('.*bert'\)"):
        _trainer(tmp_path, model=BertModel.from_pretrained(tmp_path / "bert"))


@pytest.mark.parametrize("given", ["args", "collator"])
def test_the_saved_model_encodes_with_the_lengths_and_prefix_the_run_trained_with(tmp_path, given):
    """query_max_length / target_max_length of the arguments and a collator's own length and prefix were used in
    training and evaluate() but not saved: the saved model (and SentenceTransformer on it) encoded otherwise."""
    from sentence_transformers import SentenceTransformer

    retriever = tiny_retriever(tmp_path)
    if given == "args":
        trainer = _trainer(tmp_path, model=retriever, query_max_length=3, target_max_length=5)
    else:
        collator = CorrectorDataCollator(retriever.tokenizer, query_max_length=3, query_prefix="gene gene ")
        trainer = _trainer(tmp_path, model=retriever, data_collator=collator)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["query_max_length"] == 3
    assert config["target_max_length"] == (5 if given == "args" else 32)
    assert config["query_prefix"] == ("gene gene " if given == "collator" else "")
    texts = ["cell protein gene cancer virus drug trial brain", "heart lung"]  # the first is longer than 3 tokens
    trained = trainer.encode_queries(texts)
    reloaded = RetrieverModel.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(reloaded.encode_queries(texts), trained, atol=1e-5, rtol=0)
    st = SentenceTransformer(str(tmp_path / "saved"))
    torch.testing.assert_close(st.encode_query(texts, convert_to_tensor=True).cpu(), trained, atol=1e-5, rtol=0)
    docs = ["cell protein gene cancer virus drug trial brain blood heart"]
    torch.testing.assert_close(st.encode_document(docs, convert_to_tensor=True).cpu(),
                               trainer.retriever.encode_targets(docs, max_length=trainer.args.target_max_length),
                               atol=1e-5, rtol=0)


def test_load_best_model_at_end_without_a_metric_uses_ndcg(tmp_path):
    """Trainer's default best-model metric is the eval loss, which evaluate() does not report: the first evaluation
    failed with KeyError 'eval_loss' after training and checkpointing had started."""
    trainer = _trainer(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                       save_steps=1, load_best_model_at_end=True)
    assert trainer.args.metric_for_best_model == "ndcg@10" and trainer.args.greater_is_better is True
    trainer.train()
    evals = [row["eval_ndcg@10"] for row in trainer.state.log_history if "eval_ndcg@10" in row]
    assert len(evals) >= 2 and trainer.state.best_metric == max(evals)
    with pytest.raises(ConfigError, match=r"metric_for_best_model='eval_loss'.*ndcg@10"):
        _args(tmp_path, metric_for_best_model="eval_loss")


def test_resuming_with_another_corrector_names_both(tmp_path):
    from hf_corrector.errors import CacheMismatchError

    first = _trainer(tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    other = _trainer(tmp_path / "b", max_steps=3, correction="linear")
    with pytest.raises(CacheMismatchError, match=r"checkpoint's corrector is 'mlp'.*this run's is 'linear'"):
        other.train(resume_from_checkpoint=str(checkpoint))
