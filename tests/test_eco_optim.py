"""Issue 12 (LR schedule): CorrectorTrainer's encoder groups follow transformers' ``get_scheduler`` exactly, for every
step-wise ``lr_scheduler_type`` and its ``lr_scheduler_kwargs``; the corrector group stays constant; the corrector
warm-up freezes the encoders and delays their schedule."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from hf_corrector import ConfigError, CorrectorTrainer, CorrectorTrainingArguments
from hf_corrector.training.optim import build_lr_scheduler, encoder_lr_lambda
from tests.tiny import tiny_data, tiny_retriever

LR, CORRECTOR_LR, STEPS, WARMUP = 2e-4, 1e-3, 40, 5

SCHEDULES = [
    ("linear", {}),
    ("cosine", {}),
    ("cosine", {"num_cycles": 0.25}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-6}),
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("inverse_sqrt", {"timescale": 7}),
    ("warmup_stable_decay", {"num_decay_steps": 10, "min_lr_ratio": 0.1}),
    ("cosine_with_min_lr", {"min_lr": 1e-6}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.05}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1, "warmup_lr_rate": 0.2}),
]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> CorrectorTrainer:
    """One tiny trainer; each test sets the scheduler arguments and rebuilds only the optimizer and scheduler."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("optim")
    train, _ = tiny_data(num_docs=40, num_queries=16)
    args = CorrectorTrainingArguments(str(tmp / "out"), max_steps=STEPS, per_device_train_batch_size=4, report_to=[],
                                      use_cpu=True, disable_tqdm=True, save_strategy="no", num_negatives=3,
                                      learning_rate=LR, corrector_learning_rate=CORRECTOR_LR)
    return CorrectorTrainer(model=tiny_retriever(tmp), args=args, train_dataset=train)


def _trainer_lrs(trainer: CorrectorTrainer, kind: str, kwargs: dict, warmup: int = WARMUP, frozen: int = 0,
                 steps: int = STEPS) -> tuple[list[float], list[float]]:
    """Encoder and corrector learning rates at each step of ``trainer.create_scheduler``."""
    trainer.args.lr_scheduler_type, trainer.args.lr_scheduler_kwargs = kind, dict(kwargs)
    trainer.args.warmup_steps, trainer.args.corrector_warmup_steps = warmup, frozen
    trainer.optimizer = trainer.lr_scheduler = None
    optimizer = trainer.create_optimizer()
    scheduler = trainer.create_scheduler(steps, optimizer)
    enc, corr = [], []
    for _ in range(steps):
        groups = optimizer.param_groups
        enc.append([g["lr"] for g in groups if g.get("group") != "corrector"])
        corr.append([g["lr"] for g in groups if g.get("group") == "corrector"])
        optimizer.step()
        scheduler.step()
    assert all(len(set(e)) == 1 for e in enc)  # every encoder group (decay / no decay) gets the same rate
    return [e[0] for e in enc], [c[0] for c in corr]


def _reference_lrs(kind: str, kwargs: dict, warmup: int, steps: int) -> list[float]:
    """transformers' own schedule on a plain one-group optimizer."""
    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=LR)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=steps,
                              scheduler_specific_kwargs=dict(kwargs))
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("kind", "kwargs"), SCHEDULES, ids=[f"{k}-{'-'.join(kw)}" for k, kw in SCHEDULES])
def test_encoder_schedule_equals_get_scheduler(trainer, kind: str, kwargs: dict) -> None:
    encoder, corrector = _trainer_lrs(trainer, kind, kwargs)
    reference = _reference_lrs(kind, kwargs, WARMUP, STEPS)
    assert encoder == pytest.approx(reference, rel=1e-12, abs=1e-18)
    assert corrector == [CORRECTOR_LR] * STEPS
    if kind not in ("constant",):
        assert len(set(encoder)) > 2  # a real schedule, not a constant


def test_constant_without_warmup_is_exactly_one(trainer) -> None:
    encoder, corrector = _trainer_lrs(trainer, "constant", {}, warmup=0)
    assert encoder == [LR] * STEPS and corrector == [CORRECTOR_LR] * STEPS
    f = encoder_lr_lambda(trainer.args, STEPS)
    assert [f(s) for s in range(STEPS + 5)] == [1.0] * (STEPS + 5)


def test_linear_warmup_has_no_off_by_one(trainer) -> None:
    encoder, _ = _trainer_lrs(trainer, "linear", {}, warmup=4, steps=12)
    # transformers: factor step / warmup during warm-up, then (12 - step) / (12 - 4)
    assert encoder == pytest.approx([LR * f for f in (0, 0.25, 0.5, 0.75, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8,
                                                      1 / 8)], rel=1e-12, abs=1e-18)


def test_min_lr_is_honoured(trainer) -> None:
    encoder, _ = _trainer_lrs(trainer, "cosine_with_min_lr", {"min_lr": 1e-6}, warmup=0, steps=STEPS)
    assert encoder[0] == LR and min(encoder) > 1e-6 and encoder[-1] < 1.5e-6
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-6, rel=1e-9)  # after the last step: min_lr


@pytest.mark.parametrize(("kind", "kwargs"), [("linear", {}), ("cosine_with_min_lr", {"min_lr": 1e-6}),
                                              ("constant", {})])
def test_corrector_warmup_freezes_then_starts_the_schedule(trainer, kind: str, kwargs: dict) -> None:
    frozen, warmup = 6, 3
    encoder, corrector = _trainer_lrs(trainer, kind, kwargs, warmup=warmup, frozen=frozen)
    assert encoder[:frozen] == [0.0] * frozen
    assert encoder[frozen:] == pytest.approx(_reference_lrs(kind, kwargs, warmup, STEPS - frozen), rel=1e-12,
                                             abs=1e-18)
    assert corrector == [CORRECTOR_LR] * STEPS


@pytest.mark.parametrize("kind", ["reduce_lr_on_plateau", "greedy"])
def test_schedules_that_cannot_be_composed_raise(trainer, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"lr_scheduler_type='{kind}' cannot be used with CorrectorTrainer"):
        _trainer_lrs(trainer, kind, {})


def test_bad_scheduler_kwargs_raise_config_error(trainer) -> None:
    with pytest.raises(ConfigError, match="num_decay_steps"):
        _trainer_lrs(trainer, "warmup_stable_decay", {})  # its decay length is required
    with pytest.raises(ConfigError, match="lr_scheduler_kwargs"):
        _trainer_lrs(trainer, "linear", {"min_lr": 1e-6})  # linear takes no min_lr: say so instead of ignoring it


def test_scheduler_state_round_trips_with_weights_only_load(trainer, tmp_path: Path) -> None:
    """Trainer saves scheduler.pt and loads it with ``weights_only=True``: the composed lambdas must not end up in it."""
    _trainer_lrs(trainer, "polynomial", {"power": 2.0}, frozen=2, steps=10)
    state = trainer.lr_scheduler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = build_lr_scheduler(trainer.args, trainer.optimizer, 10)
    fresh.load_state_dict(loaded)
    assert fresh.last_epoch == 10 and fresh.get_last_lr() == trainer.lr_scheduler.get_last_lr()


def test_weight_decay_groups_follow_get_decay_parameter_names(trainer) -> None:
    """The decayed encoder parameters are exactly ``Trainer.get_decay_parameter_names`` (biases and LayerNorm
    weights not decayed; the corrector never), and a subclass overriding it is honoured (a transformers habit)."""
    trainer.args.weight_decay = 0.1
    trainer.optimizer = trainer.lr_scheduler = None
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in trainer.create_optimizer().param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}  # the unused pooler is frozen
    expected = {n for n in trainer.get_decay_parameter_names(trainer.model) if not n.startswith("corrector.")} & trained
    assert decayed == expected and any(n.endswith("LayerNorm.weight") for n in names.values())
    assert not any(n.endswith(("bias", "LayerNorm.weight")) for n in decayed) and len(decayed) > 0

    only_query_weights = [n for n in expected if "attention.self.query.weight" in n]
    trainer.get_decay_parameter_names = lambda model: only_query_weights  # what a subclass override does
    try:
        trainer.optimizer = None
        decayed = {names[id(p)] for g in trainer.create_optimizer().param_groups if g["weight_decay"] > 0
                   for p in g["params"]}
    finally:
        del trainer.get_decay_parameter_names
        trainer.args.weight_decay, trainer.optimizer = 0.0, None
    assert decayed == set(only_query_weights) and len(only_query_weights) == 2
