"""Optimizers and PEFT wrappers that a Trainer user brings: honoured, or refused with what to do instead.

* ``optimizers=(optimizer, scheduler)``: the optimizer must hold every trainable parameter of the training model,
  the corrector's included (a user optimizer built over ``retriever.parameters()`` would silently never train the
  corrector). A group that holds only corrector parameters is tagged ``group="corrector"`` so the trainer's
  schedule keeps its rate constant, as it does for the groups it builds itself.
* PEFT applied by hand (``retriever.encoder = get_peft_model(...)`` before the trainer): detected, so the model is
  saved merged plus adapters, as with ``peft_config=`` (a plain save would write PEFT's wrapped key names, which a
  plain encoder does not load).

Example:
    >>> check_user_optimizer(trainer.model, optimizer, corrector_warmup_steps=0, builds_scheduler=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import torch

from ..errors import ConfigError
from .optim import CORRECTOR_GROUP

logger = logging.getLogger(__name__)

_WHAT_TO_DO = ("build it over trainer.model.parameters() after the trainer (trainer.model holds the retriever and "
               "the corrector), or pass your own corrector=CorrectorModel(...) and include its parameters, or pass "
               "optimizer_cls_and_kwargs=(OptimizerClass, kwargs) so the trainer builds its parameter groups "
               "(encoders at learning_rate, corrector at corrector_learning_rate) with your class")


def check_user_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, corrector_warmup_steps: int,
                         builds_scheduler: bool) -> None:
    """Refuse a user optimizer that leaves out trainable parameters; tag its corrector-only groups."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        corrector = sum(n.startswith("corrector.") for n in missing)
        raise ConfigError(f"optimizers=(optimizer, ...): the optimizer leaves out {len(missing)} trainable "
                          f"parameter(s) ({corrector} of the corrector), e.g. {', '.join(missing[:3])}; they would "
                          f"silently never train. {_WHAT_TO_DO}")
    names = {id(p): n for n, p in model.named_parameters()}
    for i, group in enumerate(optimizer.param_groups):
        kinds = {names.get(id(p), "").startswith("corrector.") for p in group["params"]}
        if kinds == {True} and "group" not in group:
            group["group"] = CORRECTOR_GROUP
        elif kinds == {True, False} and corrector_warmup_steps and builds_scheduler:
            raise ConfigError(f"optimizers=(optimizer, None): parameter group {i} mixes corrector and encoder "
                              f"parameters, but with corrector_warmup_steps={corrector_warmup_steps} the trainer's "
                              "schedule freezes the encoders while the corrector trains, per group; put the "
                              "corrector's parameters (trainer.corrector) in a group of their own, pass your own "
                              "scheduler, or set corrector_warmup_steps=0")


def is_peft(module: torch.nn.Module | None) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft not installed: nothing can be PEFT-wrapped
        return False
    return isinstance(module, PeftModel)


def check_peft_by_hand(retriever, peft_config) -> bool:
    """Whether the retriever's towers are PEFT-wrapped by the user (all or none); refuses a second wrapping."""
    towers = [t for t in (retriever.encoder, retriever.query_encoder) if t is not None]
    wrapped = [is_peft(t) for t in towers]
    if not any(wrapped):
        return False
    if not all(wrapped):
        raise ConfigError("only one of the retriever's two towers is PEFT-wrapped; wrap both (or pass "
                          "peft_config=... to CorrectorTrainer, which wraps each tower)")
    if peft_config is not None:
        raise ConfigError("the retriever's encoder is already PEFT-wrapped (get_peft_model applied by hand) and "
                          "peft_config was passed too: pass one of them, not both")
    logger.info("the retriever's encoder is PEFT-wrapped: saved merged at the root plus adapters in peft_adapter/")
    return True


__all__ = ["check_peft_by_hand", "check_user_optimizer", "is_peft"]
