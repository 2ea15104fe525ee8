"""Numerical safety (NaN/inf in the loss, the target embeddings, the corrector output; a diverging corrector) and the
trainer's and cache's checks of bad inputs (mismatched cache, NaN rows, a tokenizer too big for the model)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import hf_corrector.training.losses as losses_module
from hf_corrector import CorrectorModel, CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel, StaleCache
from hf_corrector.atomic_io import sha256_file as _sha256
from hf_corrector.cache.folder import write_stream as _write_stream
from hf_corrector.cache.schema import CACHE_FILE, INFO_FILE
from hf_corrector.cache.schema import arrow_table as _arrow_table
from hf_corrector.errors import CacheMismatchError, ConfigError, HFCorrectorError, NonFiniteError
from hf_corrector.training.checkpoints import verify_checkpoint
from hf_corrector.training.trainer import CorrectorTrainingModel
from tests.tiny import tiny_data, tiny_retriever, tiny_tokenizer

POISON_STEP = 6  # NaN appears while computing update 7 (global_step 6); checkpoint-6 is the last good one
TRAINER_LOGGER = "hf_corrector"  # the trainer and its callbacks


@pytest.fixture(autouse=True)
def one_torch_thread(one_thread):
    """In-process parts run on one thread (see conftest.one_thread), like the crash-test children."""


def make_trainer(tmp_path, model: RetrieverModel | None = None, cache=None, **overrides) -> CorrectorTrainer:
    train, _ = tiny_data()
    kwargs = dict(max_steps=12, per_device_train_batch_size=4, num_negatives=3, save_steps=3, logging_steps=2,
                  report_to=[], seed=0, use_cpu=True, disable_tqdm=True, cache_encode_batch_size=64)
    kwargs.update(overrides)
    return CorrectorTrainer(model=model or tiny_retriever(tmp_path, seed=0),
                            args=CorrectorTrainingArguments(str(tmp_path / "out"), **kwargs), train_dataset=train,
                            cache=cache)


def _poison(tensor: torch.Tensor) -> torch.Tensor:
    return tensor * float("nan")


def _inject(monkeypatch, where: str, holder: dict, steps=(POISON_STEP,)) -> None:
    """Make ``where`` non-finite while computing the updates whose global_step is in ``steps``."""

    def poisoned() -> bool:
        return holder["trainer"].state.global_step in steps and holder["trainer"].model.training

    if where == "loss":
        original_loss = losses_module.task_loss
        monkeypatch.setattr(losses_module, "task_loss",
                            lambda *a, **k: _poison(original_loss(*a, **k)) if poisoned() else original_loss(*a, **k))
    elif where == "target embeddings":
        original_forward = CorrectorTrainingModel.forward

        def forward(self, *args, **kwargs):
            out = original_forward(self, *args, **kwargs)
            if poisoned():
                out["target_embeddings"] = _poison(out["target_embeddings"])
            return out

        monkeypatch.setattr(CorrectorTrainingModel, "forward", forward)
    elif where == "corrector output":  # the corrector module itself: scoring the cache sees the NaN too
        corrector = holder["trainer"].corrector
        original_corrector = corrector.forward
        monkeypatch.setattr(corrector, "forward",
                            lambda x: _poison(original_corrector(x)) if poisoned() else original_corrector(x))


@pytest.mark.parametrize("where", ["loss", "target embeddings", "corrector output"])
def test_nonfinite_stops_training_naming_step_and_tensor_and_keeps_last_checkpoint(tmp_path, monkeypatch, where):
    holder = {}
    trainer = holder["trainer"] = make_trainer(tmp_path)
    _inject(monkeypatch, where, holder)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    good = tmp_path / "out" / f"checkpoint-{POISON_STEP}"
    assert f"non-finite {where} at step {POISON_STEP + 1}" in message
    assert f"global_step {POISON_STEP}" in message and str(good) in message
    assert trainer.state.global_step == POISON_STEP
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    verify_checkpoint(good)  # complete, and every part loads
    retriever = RetrieverModel.from_pretrained(good)
    assert all(torch.isfinite(p).all() for p in retriever.parameters())
    assert all(torch.isfinite(p).all() for p in CorrectorModel.from_pretrained(good / "corrector").parameters())
    StaleCache.load(good / "stale_cache").check_corpus(trainer.doc_ids)
    assert json.loads((good / "trainer_state.json").read_text())["global_step"] == POISON_STEP

    if where == "loss":  # and training resumes from it once the cause is gone
        monkeypatch.undo()
        resumed = make_trainer(tmp_path)
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == 12


def test_nonfinite_skip_skips_the_step_and_continues(tmp_path, monkeypatch, caplog):
    holder = {}
    trainer = holder["trainer"] = make_trainer(tmp_path, nonfinite_action="skip", save_steps=100, logging_steps=1)
    _inject(monkeypatch, "target embeddings", holder, steps=(POISON_STEP, POISON_STEP + 2))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        trainer.train()
    assert trainer.state.global_step == 12
    skipped = {e["step"]: e["skipped_steps"] for e in trainer.state.log_history if "skipped_steps" in e}
    assert skipped == {POISON_STEP + 1: 1, POISON_STEP + 3: 1}
    losses = [e for e in trainer.state.log_history if "loss" in e and "skipped_steps" not in e]
    assert losses and all(np.isfinite(e[k]) for e in losses for k in ("loss", "task_loss", "corrector_loss"))
    assert "non-finite target embeddings at step 7" in caplog.text and "skipping the step" in caplog.text
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # training did go on


def _noisy(monkeypatch, trainer: CorrectorTrainer, noisy_until: int) -> None:
    """The corrector adds large noise before global step ``noisy_until`` and is the identity afterwards (fixed)."""
    corrector = trainer.corrector
    original = corrector.forward

    def forward(x):
        out = original(x)
        if trainer.state.global_step < noisy_until:
            return out + 10.0 * torch.randn_like(out)
        return x + 0.0 * out  # exactly x: as good as the stale embeddings, no worse

    monkeypatch.setattr(corrector, "forward", forward)


def test_divergent_corrector_warns(tmp_path, monkeypatch, caplog):
    trainer = make_trainer(tmp_path, max_steps=5, logging_steps=1, save_steps=100)
    _noisy(monkeypatch, trainer, noisy_until=100)
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        trainer.train()
    assert "the corrector makes embeddings worse" in caplog.text
    assert "falling back" not in caplog.text and not trainer.sampler.transform.bypassed  # patience 0: warn only
    assert {e.get("corrector_fallback") for e in trainer.state.log_history if "loss" in e} == {0.0}


def test_divergent_corrector_falls_back_to_uncorrected_scores_and_recovers(tmp_path, monkeypatch, caplog):
    trainer = make_trainer(tmp_path, max_steps=10, logging_steps=1, save_steps=100, corrector_fallback_patience=2)
    _noisy(monkeypatch, trainer, noisy_until=5)
    seen = []
    transform = trainer.sampler.transform
    original_function = transform.function
    monkeypatch.setattr(transform, "function",
                        lambda step: seen.append((trainer.state.global_step, transform.bypassed))
                        or original_function(step))
    with caplog.at_level(logging.INFO, logger=TRAINER_LOGGER):
        trainer.train()
    fallback = {e["step"]: e["corrector_fallback"] for e in trainer.state.log_history if "corrector_fallback" in e}
    assert fallback[1] == 0.0 and fallback[2] == 1.0 and fallback[5] == 1.0  # bad for 2 logs in a row -> fall back
    assert fallback[6] == 0.0 and fallback[10] == 0.0  # fixed at step 6 -> corrected scores again
    assert "falling back to uncorrected scores" in caplog.text and "corrector recovered" in caplog.text
    assert not transform.bypassed
    assert dict(seen)[3] is True and dict(seen)[7] is False
    transform.bypassed = True
    assert original_function(0) is None  # in fallback, negatives are scored on the plain stale cache


# -- bad inputs to the trainer and the cache --------------------------------------------------------------------------
def _cache_for(model: RetrieverModel) -> StaleCache:
    train, _ = tiny_data()
    return StaleCache.build(train.corpus, model, batch_size=64, show_progress_bar=False)


def test_cache_of_another_dimension_is_refused(tmp_path):
    cache = _cache_for(tiny_retriever(tmp_path, hidden=16))
    cache.save(tmp_path / "cache16")
    for given in (cache, tmp_path / "cache16"):
        with pytest.raises(CacheMismatchError, match="cache dimension 16 != retriever dimension 32"):
            make_trainer(tmp_path, cache=given)


def test_cache_of_another_pooling_is_refused(tmp_path):
    with pytest.raises(CacheMismatchError, match="pooling='cls'.*pooling='mean'"):
        make_trainer(tmp_path, cache=_cache_for(tiny_retriever(tmp_path, pooling="cls")))


def test_cache_of_another_corpus_is_refused(tmp_path):
    train, _ = tiny_data()
    small = StaleCache.build(train.corpus.select(range(50)), tiny_retriever(tmp_path), show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="50 rows but the corpus has 120"):
        make_trainer(tmp_path, cache=small)


def test_loaded_cache_with_nan_rows_is_refused(tmp_path):
    cache = _cache_for(tiny_retriever(tmp_path))
    folder = cache.save(tmp_path / "cache")
    storage = cache.matrix().numpy().copy()
    storage[5, 3] = np.nan  # a NaN that made it to disk (not through StaleCache, which refuses it)
    _write_stream(_arrow_table(cache.doc_ids, storage, cache.steps.numpy(), "float32"), folder / CACHE_FILE)
    info = json.loads((folder / INFO_FILE).read_text())
    info["sha256"] = _sha256(folder / CACHE_FILE)  # the checksum matches: only the values are bad
    (folder / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CacheMismatchError, match="NaN or inf in row 5"):
        StaleCache.load(folder)
    with pytest.raises(CacheMismatchError, match="NaN or inf in row 5"):
        make_trainer(tmp_path, cache=folder)
    with pytest.raises(CacheMismatchError, match="row 5"):
        StaleCache(cache.doc_ids, torch.from_numpy(storage))


def test_tokenizer_bigger_than_the_model_is_a_config_error(tmp_path):
    from transformers import BertConfig, BertModel

    from hf_corrector import RetrieverConfig

    tok = tiny_tokenizer()
    small = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       max_position_embeddings=64)
    model = RetrieverModel(RetrieverConfig(encoder_config=small.to_dict(), pooling="mean", normalize=True,
                                           base_model_name_or_path="small-vocab"), encoder=BertModel(small))
    model.tokenizer = tok
    with pytest.raises(ConfigError, match=f"tokenizer has {len(tok)} tokens.*embeds only 20"):
        make_trainer(tmp_path, model=model)

    bigger = tiny_tokenizer()  # the right model, a tokenizer with extra tokens it has no embeddings for
    bigger.add_tokens([f"extra{i}" for i in range(5)])
    with pytest.raises(HFCorrectorError, match=f"tokenizer has {len(tok) + 5} tokens"):
        CorrectorTrainer(model=tiny_retriever(tmp_path), processing_class=bigger, train_dataset=tiny_data()[0],
                         args=CorrectorTrainingArguments(str(tmp_path / "out"), report_to=[], use_cpu=True))
