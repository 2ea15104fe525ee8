"""Habits of Trainer users around the optimizer: ``optimizers=(opt, sched)``, ``optimizer_cls_and_kwargs`` and PEFT
applied by hand are honoured or refused loudly (issue 23)."""

from __future__ import annotations

import pytest
import torch

from hf_corrector import CorrectorModel, CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel
from hf_corrector.errors import ConfigError
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _args(tmp_path, **kw):
    return CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 2, **kw})


def test_a_user_optimizer_without_the_corrector_is_refused_naming_what_to_do(tmp_path):
    retriever = tiny_retriever(tmp_path)
    train, _ = tiny_data()
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=1e-3)
    with pytest.raises(ConfigError, match=r"corrector\.") as err:
        CorrectorTrainer(model=retriever, args=_args(tmp_path), train_dataset=train, optimizers=(optimizer, None))
    assert "optimizer_cls_and_kwargs" in str(err.value) and "corrector=" in str(err.value)


def test_a_user_optimizer_over_every_parameter_is_used_and_trains_the_corrector(tmp_path):
    retriever = tiny_retriever(tmp_path)
    train, _ = tiny_data()
    args = _args(tmp_path)
    probe = CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train)
    corrector = CorrectorModel(probe.corrector.config)
    optimizer = torch.optim.SGD([{"params": list(retriever.parameters())},
                                 {"params": list(corrector.parameters()), "lr": 0.5}], lr=1e-3)
    trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=train, corrector=corrector,
                               optimizers=(optimizer, None))
    before = {n: p.detach().clone() for n, p in trainer.corrector.named_parameters()}
    trainer.train()
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is optimizer
    assert any(not torch.equal(before[n], p) for n, p in trainer.corrector.named_parameters())
    # the corrector-only group is recognised: the encoders' schedule is not applied to it
    assert optimizer.param_groups[1]["group"] == "corrector" and optimizer.param_groups[1]["lr"] == 0.5


def test_a_group_mixing_corrector_and_encoders_is_refused_under_a_corrector_warmup(tmp_path):
    retriever = tiny_retriever(tmp_path)
    train, _ = tiny_data()
    args = _args(tmp_path, corrector_warmup_steps=1)
    probe = CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train)
    corrector = CorrectorModel(probe.corrector.config)
    optimizer = torch.optim.AdamW(list(retriever.parameters()) + list(corrector.parameters()), lr=1e-3)
    with pytest.raises(ConfigError, match="corrector_warmup_steps"):
        CorrectorTrainer(model=retriever, args=args, train_dataset=train, corrector=corrector,
                         optimizers=(optimizer, None))


def test_optimizer_cls_and_kwargs_is_honoured_with_the_trainer_groups(tmp_path):
    train, _ = tiny_data()
    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path), train_dataset=train,
                               optimizer_cls_and_kwargs=(torch.optim.SGD, {"momentum": 0.9, "lr": 0.02}))
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.SGD
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert groups["encoder"]["lr"] == 0.02  # the user's lr is the encoders' rate, as Trainer would use it
    assert groups["corrector"]["lr"] == trainer.args.corrector_learning_rate
    trainer.train()
    assert trainer.state.global_step == 2


def test_peft_applied_by_hand_saves_weights_that_reload(tmp_path):
    from peft import LoraConfig, get_peft_model

    train, test = tiny_data()
    retriever = tiny_retriever(tmp_path)
    retriever.encoder = get_peft_model(retriever.encoder, LoraConfig(r=4, target_modules=["query", "value"],
                                                                    init_lora_weights=False))
    trainer = CorrectorTrainer(model=retriever, args=_args(tmp_path), train_dataset=train)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    texts = list(test.queries["query"])[:4]
    expected = trainer.retriever.encode_queries(texts, device="cpu")
    reloaded = RetrieverModel.from_pretrained(str(tmp_path / "saved"))
    torch.testing.assert_close(reloaded.encode_queries(texts, device="cpu"), expected, rtol=1e-4, atol=1e-5)


def test_peft_by_hand_and_peft_config_together_are_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    train, _ = tiny_data()
    retriever = tiny_retriever(tmp_path)
    retriever.encoder = get_peft_model(retriever.encoder, LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(ConfigError, match="peft_config"):
        CorrectorTrainer(model=retriever, args=_args(tmp_path), train_dataset=train,
                         peft_config=LoraConfig(r=4, target_modules=["query", "value"]))


def test_the_optimizer_class_and_scheduler_a_user_passes_are_the_ones_that_train(tmp_path):
    train, _ = tiny_data()
    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=_args(tmp_path), train_dataset=train,
                               optimizer_cls_and_kwargs=(torch.optim.SGD, {"momentum": 0.9}))
    trainer.train()  # no create_optimizer() call of ours: the class Trainer builds in train() is checked
    assert type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)) is torch.optim.SGD

    retriever = tiny_retriever(tmp_path)
    corrector = CorrectorModel(trainer.corrector.config)
    optimizer = torch.optim.AdamW(list(retriever.parameters()) + list(corrector.parameters()), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    user = CorrectorTrainer(model=retriever, args=_args(tmp_path), train_dataset=train, corrector=corrector,
                            optimizers=(optimizer, scheduler))
    user.train()
    assert user.lr_scheduler is scheduler and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)
