"""The negative-sampler interface and the narrow context a sampler works in.

A :class:`NegativeSampler` chooses ``k`` cache rows per query. It sees a :class:`SamplerContext` (a
:class:`~hf_corrector.negatives.context.CacheReader` over the cache, a query encoder, the seed, the device, the
training examples), never the trainer or the cache manager. It holds a
:class:`~hf_corrector.negatives.transforms.ScoreTransform` that maps stale rows before scoring. Periodic work
arrives as events: ``on_step_end(step)`` (from :class:`~hf_corrector.training.callbacks.SamplerMaintenanceCallback`),
``on_cache_refreshed(step)`` and ``on_targets(rows)`` (from the cache manager). ``state_dict`` /
``load_state_dict`` carry its state through checkpoints.

Write your own::

    class RandomNegatives(NegativeSampler):
        name = "random"

        def sample(self, queries, exclude, keys, k, step, limits=None):
            n = len(self.context.cache)
            rows = []
            for key, ex in zip(keys, exclude):
                gen = query_generator(self.context.seed, step, key)
                rows.append([r for r in torch.randperm(n, generator=gen).tolist() if r not in ex][:k])
            rows = torch.tensor(rows)
            return Selection(rows, torch.zeros(rows.shape))

    trainer = CorrectorTrainer(..., sampler=RandomNegatives())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .context import CacheReader, SamplerContext, TrainingExamples
from .topk import Selection
from .transforms import IdentityTransform, ScoreTransform

__all__ = ["CacheReader", "NegativeSampler", "SamplerContext", "ScoreLimits", "TrainingExamples"]


@dataclass
class ScoreLimits:
    """False-negative limits for one batch: per-query score ceilings and the number of top ranks to skip."""

    max_scores: torch.Tensor | None = None
    skip_top: int = 0


class NegativeSampler:
    """Base class of the negative samplers (see the module docstring).

    Class attributes ``name`` and ``citation`` (a BibTeX key of :data:`hf_corrector.hub.card_data.CITATIONS`, or None)
    describe the strategy in model cards and logs.
    """

    name: str = "sampler"
    citation: str | None = None
    #: whether the sampler works over a cache sharded across processes (``cache_sharding="sharded"``)
    supports_sharding: bool = False

    def __init__(self, transform: ScoreTransform | None = None):
        self.transform = transform if transform is not None else IdentityTransform()
        self.context: SamplerContext | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------------
    def setup(self, context: SamplerContext) -> None:
        """Called once by the trainer before training; subscribes the sampler to the cache manager's events."""
        if context.cache.sharded and not self.supports_sharding:
            raise ConfigError(f"the {self.name} sampler needs the whole cache on every process: use "
                              f"cache_sharding='replicated' with it (only the exhaustive sampler scans a sharded cache)")
        self.context = context
        context.cache.add_listener(self)
        self.transform.setup(context)

    @property
    def ctx(self) -> SamplerContext:
        if self.context is None:
            raise ConfigError(f"the {self.name} sampler is not set up: call sampler.setup(context) first")
        return self.context

    @property
    def citations(self) -> list[str]:
        """Citation keys of the sampler and its transform."""
        return [c for c in (self.citation, self.transform.citation) if c]

    @property
    def description(self) -> str:
        """One line for cards and logs, e.g. ``exhaustive top-k over corrector scores``."""
        return f"{self.name} ({self.transform.name} scores)"

    # -- choosing -------------------------------------------------------------------------------------------------------
    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        """``k`` rows per query (never a row of ``exclude[i]``); ``keys`` identify the examples (noise, draws)."""
        raise NotImplementedError

    @torch.no_grad()
    def score_rows(self, queries: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """(B, m) scores of ``rows`` ((B, m) cache rows) under this sampler's transform (false-negative limits)."""
        b, m = rows.shape
        vectors = self.ctx.cache.rows(rows.reshape(-1).clamp(min=0)).to(queries.device)
        fn = self.transform.selection_function(step)
        if fn is not None:
            vectors = fn(vectors).float()
        return torch.einsum("bd,bmd->bm", queries.float(), vectors.reshape(b, m, -1))

    # -- events ---------------------------------------------------------------------------------------------------------
    def on_step_end(self, step: int) -> None:
        """Periodic maintenance after optimizer step ``step``."""
        self.transform.on_step_end(step)

    def on_cache_refreshed(self, step: int) -> None:
        self.transform.on_cache_refreshed(step)

    def on_targets(self, rows: torch.Tensor) -> None:
        self.transform.on_targets(rows)

    def log_metrics(self) -> dict[str, float]:
        """The sampler's own statistics for the training logs (none by default; the tree sampler's acceptance)."""
        return {}

    # -- checkpoints ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-serialisable state and named tensors (the transform's under ``transform``)."""
        state, tensors = self.transform.state_dict()
        return {"transform": state}, {f"transform.{k}": v for k, v in tensors.items()}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        prefix = "transform."
        self.transform.load_state_dict(state.get("transform", {}),
                                       {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
