"""The optimizer and learning-rate schedule of :class:`~hf_corrector.CorrectorTrainer`.

:func:`build_optimizer` puts the encoders and the corrector in separate parameter groups (own learning rates).
:func:`build_lr_scheduler` uses transformers' own schedules, per group.

The encoders' parameter groups follow exactly the schedule ``transformers.get_scheduler`` builds from
``lr_scheduler_type``, ``lr_scheduler_kwargs`` (``min_lr``, ``num_cycles``, ``power``, ``num_decay_steps``...)
and the warm-up of ``warmup_steps``. Two things are composed on top:

* the corrector's group (``group == "corrector"``) keeps a constant learning rate;
* during the corrector warm-up (the first ``corrector_warmup_steps`` optimizer steps) the encoders' factor is 0,
  and their schedule starts after it, over the remaining ``num_training_steps - corrector_warmup_steps`` steps
  (a ``warmup_steps`` ratio counts those steps too).

Schedules that are not a function of the step (``reduce_lr_on_plateau``, ``greedy``) cannot be composed and raise
:class:`~hf_corrector.errors.ConfigError`.

Example:
    >>> import torch
    >>> from hf_corrector import CorrectorTrainingArguments
    >>> args = CorrectorTrainingArguments("out", lr_scheduler_type="cosine_with_min_lr",  # doctest: +SKIP
    ...                                   lr_scheduler_kwargs={"min_lr": 1e-6}, warmup_steps=10)
    >>> scheduler = build_lr_scheduler(args, optimizer, num_training_steps=100)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainingArguments, get_scheduler
from transformers.trainer_utils import SchedulerType

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: schedules driven by metrics or internal state rather than by the step: they cannot be composed per group
NOT_COMPOSABLE = ("reduce_lr_on_plateau", "greedy")
CORRECTOR_GROUP = "corrector"


def _scheduler_name(args: TrainingArguments) -> str:
    kind = args.lr_scheduler_type
    name = str(getattr(kind, "value", kind))
    valid = [s.value for s in SchedulerType]
    if name not in valid:
        raise ConfigError(f"unknown lr_scheduler_type {name!r}; choose one of {', '.join(valid)}")
    if name in NOT_COMPOSABLE:
        composable = [v for v in valid if v not in NOT_COMPOSABLE]
        raise ConfigError(
            f"lr_scheduler_type={name!r} cannot be used with CorrectorTrainer: its learning rate is not a function "
            f"of the step, so it cannot be combined with the corrector's constant rate and the corrector warm-up. "
            f"Use one of {', '.join(composable)}."
        )
    return name


def encoder_lr_lambda(args: TrainingArguments, num_training_steps: int, base_lr: float | None = None
                      ) -> Callable[[int], float]:
    """The encoders' learning-rate factor as a function of the optimizer step (corrector warm-up included).

    ``base_lr`` is the learning rate the schedule is relative to (``min_lr`` and ``polynomial``'s ``lr_end`` are
    absolute rates); ``args.learning_rate`` by default.

    Example:
        >>> from transformers import TrainingArguments
        >>> f = encoder_lr_lambda(TrainingArguments("o", warmup_steps=2, corrector_warmup_steps=0), 10)  # doctest: +SKIP
        >>> [round(f(s), 3) for s in range(4)]  # doctest: +SKIP
        [0.0, 0.5, 1.0, 0.875]
    """
    name = _scheduler_name(args)
    frozen = int(getattr(args, "corrector_warmup_steps", 0) or 0)
    encoder_steps = max(int(num_training_steps) - frozen, 1)
    warmup = args.get_warmup_steps(encoder_steps)
    kwargs = args.lr_scheduler_kwargs or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"lr_scheduler_kwargs must be a dict, got {kwargs!r}")
    lr = float(args.learning_rate if base_lr is None else base_lr)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)  # only carries defaults["lr"]
    try:
        reference = get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=encoder_steps,
                                  scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"lr_scheduler_type={name!r} with lr_scheduler_kwargs={kwargs!r}: {err}") from err
    if not isinstance(reference, LambdaLR) or len(reference.lr_lambdas) != 1:
        raise ConfigError(f"lr_scheduler_type={name!r} did not give a step-wise schedule (got "
                          f"{type(reference).__name__}); it cannot be combined with the corrector's group")
    inner = reference.lr_lambdas[0]
    if frozen == 0:
        return inner  # exactly transformers' schedule

    def factor(step: int) -> float:
        return 0.0 if step < frozen else inner(step - frozen)

    return factor


def _constant(step: int) -> float:
    return 1.0


def build_lr_scheduler(args: TrainingArguments, optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
    """A ``LambdaLR`` with transformers' schedule on the encoder groups and a constant corrector group.

    Every parameter group whose ``group`` entry is ``"corrector"`` keeps its learning rate; every other group follows
    :func:`encoder_lr_lambda`, relative to the first encoder group's learning rate (for ``min_lr`` / ``lr_end``). With no corrector warm-up, the encoder factors are exactly those of
    ``transformers.get_scheduler(args.lr_scheduler_type, ..., scheduler_specific_kwargs=args.lr_scheduler_kwargs)``
    (so ``constant`` gives exactly 1.0, ``linear`` transformers' linear schedule).

    Example:
        >>> opt = torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "group": "encoder"},  # doctest: +SKIP
        ...                          {"params": [torch.zeros(1, requires_grad=True)], "group": "corrector", "lr": 1e-3}],
        ...                         lr=1e-4)
        >>> scheduler = build_lr_scheduler(args, opt, num_training_steps=100)  # doctest: +SKIP
    """
    # min_lr / lr_end are absolute rates: relative to the encoders' own rate (not optimizer.defaults, which a
    # per-group optimizer need not set)
    encoder_groups = [g for g in optimizer.param_groups if g.get("group") != CORRECTOR_GROUP]
    base_lr = encoder_groups[0].get("initial_lr", encoder_groups[0]["lr"]) if encoder_groups else args.learning_rate
    encoder = encoder_lr_lambda(args, num_training_steps, base_lr=base_lr)
    lambdas = [_constant if g.get("group") == CORRECTOR_GROUP else encoder for g in optimizer.param_groups]
    logger.debug("lr schedule %s over %d steps (corrector warm-up %d); %d encoder group(s), %d corrector group(s)",
                 args.lr_scheduler_type, num_training_steps, getattr(args, "corrector_warmup_steps", 0),
                 sum(f is encoder for f in lambdas), sum(f is _constant for f in lambdas))
    return LambdaLR(optimizer, lambdas)


__all__ = ["NOT_COMPOSABLE", "build_lr_scheduler", "encoder_lr_lambda"]


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, decay_names: Collection[str],
                    cls_and_kwargs: tuple[type, dict] | None = None) -> torch.optim.Optimizer:
    """Trainer's optimizer class over three groups: encoder weights (``weight_decay``), encoder biases and norms
    (no decay), both at ``learning_rate``; the corrector (``corrector.*``) at ``corrector_learning_rate``.

    ``decay_names``: the parameters weight decay applies to, as ``Trainer.get_decay_parameter_names(model)`` gives
    them (biases and LayerNorm / RMSNorm weights excluded), so a trainer subclass overriding it is honoured.
    ``cls_and_kwargs`` is Trainer's ``optimizer_cls_and_kwargs``: that class and its keyword arguments instead of
    the ones ``args.optim`` names; its ``lr`` / ``weight_decay``, when given, replace the encoders' rate / decay."""
    if cls_and_kwargs is not None:
        optimizer_cls, optimizer_kwargs = cls_and_kwargs[0], dict(cls_and_kwargs[1] or {})
    else:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    lr = optimizer_kwargs.pop("lr", args.learning_rate)
    decay = optimizer_kwargs.pop("weight_decay", args.weight_decay)
    decay_names = set(decay_names)
    corrector = [p for n, p in model.named_parameters() if n.startswith("corrector.") and p.requires_grad]
    reader = [p for n, p in model.named_parameters() if n.startswith("reader.") and p.requires_grad]  # issue 20
    encoder = [(n, p) for n, p in model.named_parameters()
               if not n.startswith(("corrector.", "reader.")) and p.requires_grad]
    groups = [
        {"params": [p for n, p in encoder if n in decay_names], "weight_decay": decay, "lr": lr, "group": "encoder"},
        {"params": [p for n, p in encoder if n not in decay_names], "weight_decay": 0.0, "lr": lr, "group": "encoder"},
        {"params": corrector, "weight_decay": 0.0, "lr": args.corrector_learning_rate, "group": "corrector"},
        {"params": reader, "weight_decay": args.weight_decay, "lr": getattr(args, "reader_learning_rate", None),
         "group": "reader"},
    ]
    return optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
