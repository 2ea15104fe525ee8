"""Learning-rate schedule of a corrector run (to be replaced by transformers' get_scheduler composition)."""

from __future__ import annotations

import math
from typing import Any

import torch


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
