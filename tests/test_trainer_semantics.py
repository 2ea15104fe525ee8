"""Where CorrectorTrainer's semantics differ from a plain Trainer, the logs say so once (issue 23)."""

from __future__ import annotations

import logging

import pytest

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever

LOGGER = "hf_corrector.training.semantics"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _trainer(tmp_path, **kw):
    train, _ = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 2, **kw})
    return CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train)


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
