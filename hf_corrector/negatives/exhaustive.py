"""Exhaustive scan: score every cache row (through the score transform) and take the top-k or a Gumbel-top-k draw.

This is the corrector paper's selection (Monath et al., ICML 2024): with the corrector transform the scores are
``<f(x), h(g'(y))>``; with the identity it is the stale-cache baseline; with a Nyström map, the AISTATS 2023 method.

With an amortised corrector (``corrected_view_steps``) the scan reads the transform's materialised view instead of
correcting rows. ``score_dtype`` (``scoring_dtype``: bfloat16 / float16) computes the scores in reduced precision.
Over a cache sharded across processes the queries of every process are gathered, each process scans its rows and
the local tops are merged (:func:`~hf_corrector.negatives.topk.select_negatives_sharded`): the same choice as one
process.

Example:
    >>> sampler = ExhaustiveSampler(method="gumbel", temperature=0.05, transform=CorrectorTransform(get_h))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .base import NegativeSampler, ScoreLimits
from .topk import Selection, select_negatives, select_negatives_sharded
from .transforms import ScoreTransform

METHODS = ("topk", "gumbel")


class ExhaustiveSampler(NegativeSampler):
    """Top-k (``method="topk"``) or Gumbel-top-k (``"gumbel"``, sampling from ``softmax(score / temperature)``
    without replacement) over every cache row."""

    name = "exhaustive"
    citation = "corrector"
    supports_sharding = True

    def __init__(self, method: str = "topk", temperature: float = 1.0, transform: ScoreTransform | None = None,
                 score_dtype: torch.dtype | None = None):
        super().__init__(transform)
        if method not in METHODS:
            raise ConfigError(f"negative_sampling must be one of {METHODS}, got {method!r}")
        self.method = method
        self.temperature = float(temperature)
        self.score_dtype = None if score_dtype == torch.float32 else score_dtype

    @property
    def description(self) -> str:
        kind = "top-k" if self.method == "topk" else f"Gumbel-top-k (temperature {self.temperature:g})"
        return f"exhaustive {kind} over {self.transform.name} scores"

    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        ctx = self.ctx
        limits = limits or ScoreLimits()
        q, offset = queries.float(), None
        max_scores = limits.max_scores
        read, transform = ctx.cache.read_chunk, None
        if self.transform.folds_into_query:  # <q, A v + b> = <A^T q, v> + <q, b>: no per-row work
            q = q @ self.transform.query_map().to(q.device, torch.float32).T
            offset = self.transform.query_offset(queries)
            if offset is not None and max_scores is not None:
                max_scores = max_scores.to(offset.device) - offset
        else:
            transform = self.transform.function(step)  # None: score the stale rows (no correction, or fallback)
            view = self.transform.view(step) if transform is not None else None
            if view is not None:  # amortised correction: scan the materialised h_s(g') instead
                read, transform = view, None
        options = {"method": self.method, "temperature": self.temperature, "seed": ctx.seed, "step": step,
                   "chunk_size": ctx.chunk_size, "transform": transform, "skip_top": limits.skip_top,
                   "score_dtype": self.score_dtype}
        if ctx.cache.sharded:
            selection = self._sample_sharded(q, read, k, exclude, keys, max_scores, options)
        else:
            selection = select_negatives(q, read, k, exclude=exclude, noise_keys=keys, num_rows=len(ctx.cache),
                                         max_scores=max_scores, **options)
        if offset is not None:
            selection.scores = selection.scores + offset[:, None].to(selection.scores.device)
        return selection

    def _sample_sharded(self, q, read, k, exclude, keys, max_scores, options) -> Selection:
        """Every process's queries gathered, scanned over this process's rows, merged; this process's share back."""
        cache = self.ctx.cache
        coll = cache.collectives
        everyone, counts = coll.all_gather_rows(q.cpu())
        parts = coll.all_gather_object(([list(e) for e in exclude], list(keys)))  # one gather for both
        exclude_all = [ex for part in parts for ex in part[0]]
        keys_all = [key for part in parts for key in part[1]]
        limit_all = None
        if max_scores is not None:
            limit_all, _ = coll.all_gather_rows(max_scores.float().cpu())
        selection = select_negatives_sharded(everyone.to(q.device), read, k, cache.local_rows, len(cache),
                                             coll.all_gather, exclude=exclude_all, noise_keys=keys_all,
                                             max_scores=limit_all, **options)
        start = sum(counts[: coll.rank])
        stop = start + q.shape[0]
        return Selection(indices=selection.indices[start:stop], scores=selection.scores[start:stop],
                         dropped=selection.dropped[start:stop])
