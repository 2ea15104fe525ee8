"""Exhaustive scan: score every cache row (through the score transform) and take the top-k or a Gumbel-top-k draw.

This is the corrector paper's selection (Monath et al., ICML 2024): with the corrector transform the scores are
``<f(x), h(g'(y))>``; with the identity it is the stale-cache baseline; with a Nyström map, the AISTATS 2023 method.

Example:
    >>> sampler = ExhaustiveSampler(method="gumbel", temperature=0.05, transform=CorrectorTransform(get_h))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .base import NegativeSampler, ScoreLimits
from .topk import Selection, select_negatives
from .transforms import ScoreTransform

METHODS = ("topk", "gumbel")


class ExhaustiveSampler(NegativeSampler):
    """Top-k (``method="topk"``) or Gumbel-top-k (``"gumbel"``, sampling from ``softmax(score / temperature)``
    without replacement) over every cache row."""

    name = "exhaustive"
    citation = "corrector"

    def __init__(self, method: str = "topk", temperature: float = 1.0, transform: ScoreTransform | None = None):
        super().__init__(transform)
        if method not in METHODS:
            raise ConfigError(f"negative_sampling must be one of {METHODS}, got {method!r}")
        self.method = method
        self.temperature = float(temperature)

    @property
    def description(self) -> str:
        kind = "top-k" if self.method == "topk" else f"Gumbel-top-k (temperature {self.temperature:g})"
        return f"exhaustive {kind} over {self.transform.name} scores"

    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        ctx = self.ctx
        limits = limits or ScoreLimits()
        q, transform, offset = queries.float(), self.transform.function(step), None
        max_scores = limits.max_scores
        if self.transform.folds_into_query:  # <q, A v + b> = <A^T q, v> + <q, b>: no per-row work
            q = q @ self.transform.query_map().to(q.device, torch.float32).T
            transform, offset = None, self.transform.query_offset(queries)
            if offset is not None and max_scores is not None:
                max_scores = max_scores.to(offset.device) - offset
        selection = select_negatives(
            q, ctx.cache.read_chunk, k, exclude=exclude, method=self.method, temperature=self.temperature,
            noise_keys=keys, seed=ctx.seed, step=step, num_rows=len(ctx.cache), chunk_size=ctx.chunk_size,
            transform=transform, max_scores=max_scores, skip_top=limits.skip_top,
        )
        if offset is not None:
            selection.scores = selection.scores + offset[:, None].to(selection.scores.device)
        return selection
