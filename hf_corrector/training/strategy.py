"""The training strategy, decided once: :class:`NegativeStrategy` is the only reader of the strategy arguments.

``NegativeStrategy.from_args(args)`` turns :class:`~hf_corrector.training.config.CorrectorTrainingArguments` into
explicit, typed parts; the trainer, the model cards and the recipe ask it and decode nothing themselves:

* :meth:`NegativeStrategy.build_sampler`: the sampler (which one: the registry below) with its score transform;
* :attr:`NegativeStrategy.trains_corrector`: whether a corrector network trains (and with which architecture);
* :attr:`NegativeStrategy.candidate_pool`: how many candidates a query can get (two-stage selection), for checks;
* :meth:`NegativeStrategy.negative_source`: which data negatives to use (``hard_negatives="auto"`` resolved);
* :meth:`NegativeStrategy.description` / :meth:`NegativeStrategy.citations`: the strategy line and papers of cards.

Samplers are registered by name with :func:`register_sampler`: a frozen options dataclass that says when the
arguments select it (``selected``), reads its own options (``from_args``) and builds the sampler (``build``). A new
strategy (a tree sampler, say) plugs in by registering its options class, not by a branch in the trainer::

    @register_sampler("tree", priority=15)
    @dataclass(frozen=True)
    class TreeOptions(SamplerOptions):
        branching: int = 8

        @classmethod
        def selected(cls, args): return args.negative_sampler == "tree"

        @classmethod
        def from_args(cls, args): return cls(branching=args.tree_branching)

        def build(self, strategy, transform): return TreeSampler(self.branching, transform=transform)

Example:
    >>> strategy = NegativeStrategy.from_args(CorrectorTrainingArguments("out", correction="nystrom"))  # doctest: +SKIP
    >>> strategy.sampler_name, strategy.trains_corrector  # doctest: +SKIP
    ('exhaustive', False)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..models.corrector import CorrectorModel
from ..negatives import (CorrectorTransform, ExhaustiveSampler, FalseNegativeFilter, IdentityTransform,
                         LinearCorrectorTransform, NegativeMiner, NegativeSampler, NystromTransform, ScoreTransform,
                         TeleSampler, TreeSampler, TwoStageSampler)
from .config import CorrectorTrainingArguments

logger = logging.getLogger(__name__)

GetCorrector = Callable[[], "CorrectorModel | None"]

#: the arguments only :class:`NegativeStrategy` reads (tests check that the trainer, cards and recipe read none)
STRATEGY_ARGUMENTS = (
    "num_negatives", "negative_sampling", "sampling_temperature", "hard_negatives", "false_negative_skip_top",
    "false_negative_margin", "false_negative_max_score", "correction", "corrected_view_steps", "scoring_dtype",
    "cache_refresh_steps", "cache_write_back", "cache_sharding", "corrector_warmup_steps", "nystrom_landmarks",
    "nystrom_landmark_selection", "nystrom_ridge", "nystrom_rank", "nystrom_refit_steps", "nystrom_residual",
    "tele_negatives", "tele_pool_size", "tele_momentum_weight", "tele_lookahead_weight", "tele_use_ann",
    "tele_use_lookahead", "tele_use_momentum", "tele_pool_steps", "candidate_index", "candidate_pool_size",
    "candidate_nprobe", "uses_corrector", "mines_negatives",
    "tree_sampler", "tree_mode", "tree_num_clusters", "tree_probe_mass", "tree_max_probe", "tree_rebuild_radius_factor",
)


# -- samplers: a registry of options classes -------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerOptions:
    """What one sampler needs from the arguments. Subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = "sampler"
    priority: ClassVar[int] = 0

    @classmethod
    def selected(cls, args: CorrectorTrainingArguments) -> bool:
        """Whether ``args`` ask for this sampler (the highest ``priority`` selected one wins)."""
        raise NotImplementedError

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> SamplerOptions:
        raise NotImplementedError

    def build(self, strategy: NegativeStrategy, transform: ScoreTransform) -> NegativeSampler:
        raise NotImplementedError

    def pool_size(self) -> int | None:
        """Candidates per query the sampler can offer (None: the whole cache)."""
        return None


SAMPLERS: dict[str, type[SamplerOptions]] = {}


def register_sampler(name: str, priority: int = 0) -> Callable[[type[SamplerOptions]], type[SamplerOptions]]:
    """Class decorator: register a :class:`SamplerOptions` subclass under ``name``."""

    def register(cls: type[SamplerOptions]) -> type[SamplerOptions]:
        if name in SAMPLERS and SAMPLERS[name] is not cls:
            raise ConfigError(f"a sampler named {name!r} is registered already ({SAMPLERS[name].__name__})")
        cls.name, cls.priority = name, priority
        SAMPLERS[name] = cls
        return cls

    return register


@register_sampler("exhaustive", priority=0)
@dataclass(frozen=True)
class ExhaustiveOptions(SamplerOptions):
    """A full pass over the (corrected) cache: top-k or Gumbel-top-k."""

    method: str = "topk"
    temperature: float = 0.05

    @classmethod
    def selected(cls, args: CorrectorTrainingArguments) -> bool:
        return True  # the default

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> ExhaustiveOptions:
        return cls(args.negative_sampling, args.sampling_temperature)

    def build(self, strategy: NegativeStrategy, transform: ScoreTransform) -> NegativeSampler:
        return ExhaustiveSampler(self.method, self.temperature, transform=transform, score_dtype=strategy.score_dtype)


@register_sampler("two-stage", priority=10)
@dataclass(frozen=True)
class TwoStageOptions(SamplerOptions):
    """A faiss index over the stale cache proposes ``pool_size`` candidates, re-scored by the transform."""

    index: str = "ivf"
    pool: int = 1024
    nprobe: int = 16
    method: str = "topk"
    temperature: float = 0.05

    @classmethod
    def selected(cls, args: CorrectorTrainingArguments) -> bool:
        return args.candidate_index != "none"

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> TwoStageOptions:
        return cls(args.candidate_index, args.candidate_pool_size, args.candidate_nprobe, args.negative_sampling,
                   args.sampling_temperature)

    def build(self, strategy: NegativeStrategy, transform: ScoreTransform) -> NegativeSampler:
        return TwoStageSampler(self.index, self.pool, self.nprobe, self.method, self.temperature, transform=transform)

    def pool_size(self) -> int | None:
        return self.pool


@register_sampler("ance-tele", priority=20)
@dataclass(frozen=True)
class TeleOptions(SamplerOptions):
    """ANCE-Tele: per-query pools (ANN + lookahead + momentum)."""

    pool: int = 200
    momentum_weight: float = 0.5
    lookahead_weight: float = 0.5
    use_ann: bool = True
    use_lookahead: bool = True
    use_momentum: bool = True
    pool_steps: int = 0

    @classmethod
    def selected(cls, args: CorrectorTrainingArguments) -> bool:
        return args.tele_negatives

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> TeleOptions:
        return cls(args.tele_pool_size, args.tele_momentum_weight, args.tele_lookahead_weight, args.tele_use_ann,
                   args.tele_use_lookahead, args.tele_use_momentum, args.tele_pool_steps)

    def build(self, strategy: NegativeStrategy, transform: ScoreTransform) -> NegativeSampler:
        return TeleSampler(self.pool, self.momentum_weight, self.lookahead_weight, self.use_ann, self.use_lookahead,
                           self.use_momentum, self.pool_steps, transform=transform)


@register_sampler("tree", priority=15)
@dataclass(frozen=True)
class TreeOptions(SamplerOptions):
    """The dynamic-index tree sampler (Monath et al., AISTATS 2023): exact softmax draws / exact top-k through
    a cluster tree over the cache in host memory (:class:`~hf_corrector.negatives.tree.TreeSampler`)."""

    method: str = "gumbel"
    temperature: float = 0.05
    mode: str = "exact"
    num_clusters: int | None = None
    probe_mass: float = 0.1
    max_probe: int = 32
    rebuild_radius_factor: float = 1.5

    @classmethod
    def selected(cls, args: CorrectorTrainingArguments) -> bool:
        return args.tree_sampler

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> TreeOptions:
        return cls(args.negative_sampling, args.sampling_temperature, args.tree_mode, args.tree_num_clusters,
                   args.tree_probe_mass, args.tree_max_probe, args.tree_rebuild_radius_factor)

    def build(self, strategy: NegativeStrategy, transform: ScoreTransform) -> NegativeSampler:
        return TreeSampler(self.method, self.temperature, transform=transform, mode=self.mode,
                           num_clusters=self.num_clusters, probe_mass=self.probe_mass, max_probe=self.max_probe,
                           rebuild_radius_factor=self.rebuild_radius_factor)


# -- the strategy -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NystromOptions:
    """The Nyström low-rank correction (``correction="nystrom"``)."""

    landmarks: int = 512
    selection: str = "uniform"
    ridge: float = 1e-3
    rank: int | None = None
    refit_steps: int = 20
    residual: bool = False


@dataclass(frozen=True)
class FalseNegativeOptions:
    """False-negative control around the sampler's choice."""

    skip_top: int = 0
    margin: float | None = None
    max_score: float | None = None

    def build(self) -> FalseNegativeFilter:
        return FalseNegativeFilter(self.skip_top, self.margin, self.max_score)


@dataclass(frozen=True)
class NegativeStrategy:
    """How a run chooses negatives, corrects the stale cache and keeps it in step (see the module docstring).

    Build it with :meth:`from_args`; every field is explicit, nothing is read from the arguments later.
    """

    num_negatives: int = 7
    correction: str = "mlp"
    hard_negatives: str = "auto"
    sampler: SamplerOptions = field(default_factory=ExhaustiveOptions)
    nystrom: NystromOptions = field(default_factory=NystromOptions)
    false_negatives: FalseNegativeOptions = field(default_factory=FalseNegativeOptions)
    corrected_view_steps: int = 0
    scoring_dtype: str = "float32"
    cache_refresh_steps: int = 0
    cache_write_back: bool = False
    cache_sharding: str = "replicated"
    corrector_warmup_steps: int = 0
    seed: int = 0

    @classmethod
    def from_args(cls, args: CorrectorTrainingArguments) -> NegativeStrategy:
        """The strategy ``args`` describe (the only place the strategy arguments are read)."""
        chosen = [kind for kind in SAMPLERS.values() if kind.selected(args)]
        if not chosen:
            raise ConfigError("no registered sampler is selected by the arguments")
        kind = max(chosen, key=lambda k: k.priority)
        return cls(
            num_negatives=args.num_negatives, correction=args.correction, hard_negatives=args.hard_negatives,
            sampler=kind.from_args(args),
            nystrom=NystromOptions(args.nystrom_landmarks, args.nystrom_landmark_selection, args.nystrom_ridge,
                                   args.nystrom_rank, args.nystrom_refit_steps, args.nystrom_residual),
            false_negatives=FalseNegativeOptions(args.false_negative_skip_top, args.false_negative_margin,
                                                 args.false_negative_max_score),
            corrected_view_steps=args.corrected_view_steps, scoring_dtype=args.scoring_dtype,
            cache_refresh_steps=args.cache_refresh_steps, cache_write_back=args.cache_write_back,
            cache_sharding=args.cache_sharding, corrector_warmup_steps=args.corrector_warmup_steps, seed=args.seed)

    # -- questions ------------------------------------------------------------------------------------------------------
    @property
    def sampler_name(self) -> str:
        return self.sampler.name

    @property
    def mines_negatives(self) -> bool:
        """Whether each query gets hard negatives (from the cache or the data), not in-batch negatives alone."""
        return self.num_negatives > 0

    @property
    def uses_corrector(self) -> bool:
        """Whether the correction is a corrector network (``mlp`` / ``linear``)."""
        return self.correction in ("mlp", "linear")

    @property
    def trains_corrector(self) -> bool:
        """Whether a corrector network trains (a corrector correction and hard negatives to score)."""
        return self.uses_corrector and self.mines_negatives

    @property
    def candidate_pool(self) -> int | None:
        """Candidates per query the sampler can offer (None: the whole cache)."""
        return self.sampler.pool_size()

    @property
    def score_dtype(self) -> torch.dtype | None:
        """The dtype of the selection scores (None: float32)."""
        return None if self.scoring_dtype == "float32" else getattr(torch, self.scoring_dtype)

    def negative_source(self, has_given_negatives: bool) -> str:
        """``hard_negatives`` resolved: ``auto`` is ``dataset+cache`` when the data has negatives, else ``cache``."""
        if self.hard_negatives != "auto":
            return self.hard_negatives
        return "dataset+cache" if has_given_negatives else "cache"

    # -- building -------------------------------------------------------------------------------------------------------
    def build_transform(self, get_corrector: GetCorrector) -> ScoreTransform:
        """The score transform named by ``correction``."""
        if self.correction == "mlp":
            return CorrectorTransform(get_corrector, view_steps=self.corrected_view_steps, view_dtype=self.score_dtype)
        if self.correction == "linear":
            return LinearCorrectorTransform(get_corrector)
        if self.correction == "nystrom":
            n = self.nystrom
            return NystromTransform(n.landmarks, n.selection, n.ridge, n.rank, n.refit_steps, n.residual)
        return IdentityTransform()

    def build_sampler(self, get_corrector: GetCorrector) -> NegativeSampler:
        """The registered sampler the strategy names, with its transform."""
        return self.sampler.build(self, self.build_transform(get_corrector))

    def build_miner(self, sampler: NegativeSampler | None, has_given_negatives: bool = False) -> NegativeMiner:
        """The :class:`NegativeMiner` around ``sampler`` with the data negatives resolved."""
        source = self.negative_source(has_given_negatives)
        return NegativeMiner(sampler if source != "dataset" else None, self.num_negatives, source,
                             self.false_negatives.build(), seed=self.seed)

    # -- cards ----------------------------------------------------------------------------------------------------------
    def description(self, miner: NegativeMiner | None = None) -> str:
        """One line for model cards and logs: how negatives were chosen, the refresh schedule and the extras.

        ``miner``: the run's :class:`NegativeMiner` (its sampler may be a user's); by default the strategy's own.
        """
        if not self.mines_negatives:
            text = "in-batch negatives only"
        else:
            miner = miner if miner is not None else self.build_miner(self.build_sampler(lambda: None))
            text = miner.describe()
        refresh = self.cache_refresh_steps
        text += f"; full re-embedding of the corpus every {refresh} steps" if refresh else "; no re-embedding of the corpus"
        extras = []
        if self.cache_write_back:
            extras.append("cache write-back")
        if self.corrector_warmup_steps:
            extras.append(f"{self.corrector_warmup_steps} corrector warm-up steps")
        return text + (f" ({', '.join(extras)})" if extras else "")

    def citations(self, miner: NegativeMiner | None = None, num_refreshes: int = 0) -> list[str]:
        """Citation keys (of :data:`hf_corrector.hub.card_data.CITATIONS`): the corrector paper, the sampler's and its
        transform's, and ANCE when the cache was refreshed (``num_refreshes``: refreshes that ran)."""
        keys = ["corrector"]
        if self.mines_negatives:
            miner = miner if miner is not None else self.build_miner(self.build_sampler(lambda: None))
            keys += list(miner.citations)
        if num_refreshes or self.cache_refresh_steps:
            keys.append("ance")
        return list(dict.fromkeys(keys))


def build_sampler(args: CorrectorTrainingArguments, get_corrector: GetCorrector) -> NegativeSampler:
    """The sampler ``args`` describe: ``NegativeStrategy.from_args(args).build_sampler(get_corrector)``."""
    return NegativeStrategy.from_args(args).build_sampler(get_corrector)
