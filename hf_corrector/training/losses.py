"""Losses of the corrector method, each returning its components for separate logging.

* :func:`task_loss`: cross-entropy of the truncated softmax over each query's positive, its chosen negatives
  and (optionally) the rest of the step's targets, with fresh embeddings. Trains f and g.
* :func:`corrector_loss`: trains h on the step's targets, whose fresh embeddings are now known. ``ce`` matches
  the truncated softmax under corrected embeddings to the one under fresh embeddings; ``mse`` matches the
  embeddings. Fresh embeddings and queries are constants here.

Example:
    >>> import torch
    >>> q = torch.eye(2); t = torch.eye(2); mask = torch.ones(2, 2, dtype=torch.bool)
    >>> round(task_loss(q, t, torch.tensor([0, 1]), mask, 1.0).item(), 4)
    0.3133
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_logits(q: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, U) logits ``<q, t> / temperature`` with columns outside each query's candidate set at -inf."""
    logits = (q.float() @ t.float().T) / temperature
    return logits.masked_fill(~mask, float("-inf"))


def task_loss(q: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Truncated-softmax cross-entropy; ``labels[i]`` is the column of query i's positive among the targets ``t``."""
    return F.cross_entropy(masked_logits(q, t, mask, temperature), labels)


def corrector_loss(
    q: torch.Tensor,
    fresh: torch.Tensor,
    corrected: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    kind: str = "ce+mse",
    mse_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Corrector objective components: ``corrector_ce`` and/or ``corrector_mse`` and their sum ``corrector``."""
    q, fresh = q.detach().float(), fresh.detach().float()
    parts: dict[str, torch.Tensor] = {}
    if "ce" in kind.split("+"):
        target = masked_logits(q, fresh, mask, temperature).softmax(dim=1)
        log_pred = masked_logits(q, corrected.float(), mask, temperature).log_softmax(dim=1)
        parts["corrector_ce"] = -(target * log_pred.masked_fill(~mask, 0.0)).sum(dim=1).mean()
    if "mse" in kind.split("+"):
        parts["corrector_mse"] = (corrected.float() - fresh).pow(2).sum(dim=1).mean()
    total = parts.get("corrector_ce", 0.0) + mse_weight * parts.get("corrector_mse", 0.0)
    parts["corrector"] = total if isinstance(total, torch.Tensor) else torch.zeros((), device=q.device)
    return parts


def step_losses(q: torch.Tensor, t: torch.Tensor, corrected: torch.Tensor | None, batch, args) -> dict[str, torch.Tensor]:
    """The step's loss components: ``task_loss`` and, with a corrector, ``corrector_ce`` / ``corrector_mse`` and their
    weighted sum ``corrector_loss``. ``batch`` is the step's :class:`~hf_corrector.training.targets.TargetBatch`."""
    losses = {"task_loss": task_loss(q, t, batch.labels, batch.mask, args.temperature)}
    if corrected is not None:
        parts = corrector_loss(q, t, corrected, batch.own & batch.mask, args.temperature, args.corrector_loss,
                               args.corrector_mse_weight)
        losses.update({"corrector_loss" if name == "corrector" else name: value for name, value in parts.items()})
    return losses
