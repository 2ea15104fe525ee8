"""Where CorrectorTrainer's semantics differ from a plain Trainer, the logs say so once (issue 23)."""

from __future__ import annotations

import logging
import random

import torch

import pytest

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever

LOGGER = "hf_corrector.training.semantics"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _trainer(tmp_path, model=None, **kw):
    train, _ = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 2, **kw})
    return CorrectorTrainer(model=model or tiny_retriever(tmp_path), args=args, train_dataset=train)


def _warnings(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_accumulation_with_in_batch_negatives_warns_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    trainer = _trainer(tmp_path, gradient_accumulation_steps=2, in_batch_negatives=True)
    trainer.train()
    found = _warnings(caplog)
    assert len(found) == 1
    batch = trainer.args.per_device_train_batch_size
    assert "gradient_accumulation_steps=2" in found[0].getMessage()
    assert f"micro-batch of {batch} queries" in found[0].getMessage()


@pytest.mark.parametrize("kw", [{"gradient_accumulation_steps": 1, "in_batch_negatives": True},
                                {"gradient_accumulation_steps": 2, "in_batch_negatives": False}])
def test_no_warning_when_accumulation_changes_nothing(tmp_path, caplog, kw):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    _trainer(tmp_path, **kw)
    assert not _warnings(caplog)


def _run(trainer):
    """The run's logged losses and the negatives it chose at each step."""
    chosen, choose = [], trainer.choose_negatives
    trainer.choose_negatives = lambda inputs: (lambda rows: chosen.append(rows.tolist()) or rows)(choose(inputs))
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row], chosen


@pytest.mark.parametrize("sampling", ["topk", "gumbel"])
def test_the_same_seed_twice_in_one_process_gives_the_same_run(tmp_path, sampling):
    kw = {"max_steps": 4, "logging_steps": 1, "seed": 7, "negative_sampling": sampling, "cache_write_back": True}
    runs = []
    for name, noise in (("a", 1), ("b", 12345)):
        retriever = tiny_retriever(tmp_path / name)
        torch.manual_seed(noise)  # whatever ran before the trainer (another run, user code) must not matter
        random.seed(noise)
        runs.append(_run(_trainer(tmp_path / name, model=retriever, **kw)))
    (losses_a, chosen_a), (losses_b, chosen_b) = runs
    assert len(losses_a) == 4 and losses_a == losses_b
    assert len(chosen_a) == 4 and chosen_a == chosen_b  # the same negatives, step by step
    other = _run(_trainer(tmp_path / "c", model=tiny_retriever(tmp_path / "c"), **{**kw, "seed": 8}))
    assert other[1] != chosen_a or sampling == "topk"  # Gumbel draws follow the seed (top-k needs none)
