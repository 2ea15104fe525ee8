"""False-negative control shared by every sampler: the rows most likely to be unlabelled positives are not chosen.

Three limits, each off by default (the NV-Retriever paper's "positive-aware" mining and sentence-transformers'
``mine_hard_negatives`` options ``range_min``, ``relative_margin`` and ``max_score``):

* ``skip_top``: never take the query's r best-scoring rows (``false_negative_skip_top``);
* ``margin``: drop rows scoring above ``margin x`` the query's own positive score (``false_negative_margin``,
  e.g. 0.95: "at most 95% of the positive's score"); the positive is scored the same way as the candidates
  (through the sampler's transform, from its cache row);
* ``max_score``: drop rows scoring above an absolute value (``false_negative_max_score``).

Example:
    >>> import torch
    >>> f = FalseNegativeFilter(margin=0.9)
    >>> f.limits(torch.tensor([0.8, 0.5])).max_scores
    tensor([0.7200, 0.4500])
"""

from __future__ import annotations

import torch

from .base import ScoreLimits


class FalseNegativeFilter:
    """Turns the false-negative arguments into per-batch :class:`~hf_corrector.negatives.base.ScoreLimits`."""

    def __init__(self, skip_top: int = 0, margin: float | None = None, max_score: float | None = None):
        self.skip_top = int(skip_top)
        self.margin = margin
        self.max_score = max_score

    @property
    def active(self) -> bool:
        return bool(self.skip_top) or self.margin is not None or self.max_score is not None

    @property
    def needs_positive_scores(self) -> bool:
        return self.margin is not None

    def limits(self, positive_scores: torch.Tensor | None, batch_size: int | None = None) -> ScoreLimits:
        """Limits for a batch whose positives score ``positive_scores`` ((B,), needed for ``margin``)."""
        ceiling = None
        if self.margin is not None:
            ceiling = self.margin * positive_scores.float()
        if self.max_score is not None:
            b = batch_size if positive_scores is None else positive_scores.shape[0]
            absolute = torch.full((b,), float(self.max_score))
            ceiling = absolute if ceiling is None else torch.minimum(ceiling, absolute.to(ceiling.device))
        return ScoreLimits(max_scores=ceiling, skip_top=self.skip_top)

    def describe(self) -> str | None:
        parts = []
        if self.skip_top:
            parts.append(f"skip the top {self.skip_top}")
        if self.margin is not None:
            parts.append(f"drop scores above {self.margin:g} x the positive's")
        if self.max_score is not None:
            parts.append(f"drop scores above {self.max_score:g}")
        return ", ".join(parts) or None
