"""The step's target batch: the distinct cache rows a step encodes, and which of them each query may score.

Example:
    >>> import torch
    >>> batch = build_target_batch(torch.tensor([0, 1]), torch.tensor([[2], [0]]), torch.tensor([[0], [1]]))
    >>> batch.targets.tolist(), batch.labels.tolist()
    ([0, 1, 2], [0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TargetBatch:
    """``targets`` (U,) distinct rows; ``inverse`` (B, 1 + k) column of each query's positive and negatives;
    ``labels`` (B,) the positive's column; ``own`` (B, U) a query's own positive and negatives; ``mask`` (B, U) the
    columns of its softmax (own targets, plus the others' with in-batch negatives, never another of its positives)."""

    targets: torch.Tensor
    inverse: torch.Tensor
    labels: torch.Tensor
    own: torch.Tensor
    mask: torch.Tensor

    @property
    def negatives_inverse(self) -> torch.Tensor:
        return self.inverse[:, 1:]

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(self.targets, self.inverse, self.labels.to(device), self.own.to(device), self.mask.to(device))


def build_target_batch(positives: torch.Tensor, negatives: torch.Tensor, exclude_rows: torch.Tensor,
                       in_batch_negatives: bool = True) -> TargetBatch:
    """The :class:`TargetBatch` of queries with ``positives`` (B,), chosen ``negatives`` (B, k) and all their
    positives ``exclude_rows`` (B, m; -1 = padding). Runs on CPU."""
    b = positives.shape[0]
    targets, inverse = torch.unique(torch.cat([positives[:, None], negatives], 1).reshape(-1), return_inverse=True)
    inverse = inverse.reshape(b, -1)
    u = targets.numel()
    own = torch.zeros(b, u, dtype=torch.bool)
    own.scatter_(1, inverse, True)
    mask = torch.ones(b, u, dtype=torch.bool) if in_batch_negatives else own.clone()
    is_pos = (targets[None, :, None] == exclude_rows[:, None, :]).any(-1)  # (b, u): one of the query's positives
    labels = inverse[:, 0]
    mask &= ~is_pos
    mask[torch.arange(b), labels] = True
    return TargetBatch(targets, inverse, labels, own, mask)
