"""The optimizer and learning-rate schedule of a corrector run: encoders and corrector in separate parameter groups."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer


def build_lr_scheduler(args: Any, optimizer: torch.optim.Optimizer, num_training_steps: int):
    """Encoders frozen (factor 0) during corrector warm-up, then ``lr_scheduler_type``; the corrector constant."""
    frozen = args.corrector_warmup_steps
    warmup = args.get_warmup_steps(num_training_steps)
    kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    total = max(num_training_steps - frozen, 1)

    def encoder_factor(step: int) -> float:
        if step < frozen:
            return 0.0
        s = step - frozen
        if warmup and s < warmup:
            return (s + 1) / warmup if kind != "constant" else 1.0
        if kind.startswith("constant"):
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if kind.startswith("cosine"):
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    lambdas = [(lambda step: 1.0) if g.get("group") == "corrector" else encoder_factor for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """Trainer's optimizer class over three groups: encoder weights (``weight_decay``), encoder biases and norms
    (no decay), both at ``learning_rate``; the corrector (``corrector.*``) at ``corrector_learning_rate``."""
    corrector = [p for n, p in model.named_parameters() if n.startswith("corrector.") and p.requires_grad]
    encoder = [(n, p) for n, p in model.named_parameters() if not n.startswith("corrector.") and p.requires_grad]
    groups = [
        {"params": [p for n, p in encoder if not n.endswith(NO_DECAY)], "weight_decay": args.weight_decay,
         "lr": args.learning_rate, "group": "encoder"},
        {"params": [p for n, p in encoder if n.endswith(NO_DECAY)], "weight_decay": 0.0, "lr": args.learning_rate,
         "group": "encoder"},
        {"params": corrector, "weight_decay": 0.0, "lr": args.corrector_learning_rate, "group": "corrector"},
    ]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer_kwargs.pop("lr", None)
    return optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
