"""Negative samplers: how each step's hard negatives are chosen from the stale cache.

The strategy is chosen once, from the arguments, by :func:`build_sampler`:

=========================================  ==========================================================================
arguments                                  sampler (score transform)
=========================================  ==========================================================================
``correction="none"``                      :class:`ExhaustiveSampler` (:class:`IdentityTransform`): stale cache
``correction="mlp"`` (default)             :class:`ExhaustiveSampler` (:class:`CorrectorTransform`)
``correction="linear"``                    :class:`ExhaustiveSampler` (:class:`LinearCorrectorTransform`, folded
                                           into the query)
``correction="nystrom"``                   :class:`ExhaustiveSampler` (:class:`NystromTransform`)
``candidate_index`` = flat / ivf / hnsw    :class:`TwoStageSampler` (same transforms)
``tele_negatives=True``                    :class:`TeleSampler` (same transforms for the in-between pools)
``tree_sampler=True``                      :class:`TreeSampler` (exact softmax sampling / top-k through a cluster
                                           tree; linear maps fold into the query, MLP via the corrected view)
=========================================  ==========================================================================

``negative_sampling`` (``topk`` / ``gumbel``) picks the rule inside the exhaustive and two-stage samplers. A
:class:`NegativeMiner` adds the data's own negatives (``hard_negatives``) and false-negative control
(``false_negative_*``) around any sampler. Write your own sampler by subclassing :class:`NegativeSampler` (see
:mod:`hf_corrector.negatives.base`) and pass it as ``CorrectorTrainer(..., sampler=...)``.

Example:
    >>> sampler = build_sampler(CorrectorTrainingArguments("out", correction="nystrom"), get_corrector)  # doctest: +SKIP
    >>> sampler.description  # doctest: +SKIP
    'exhaustive top-k over nystrom scores'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import NegativeSampler, SamplerContext, ScoreLimits, TrainingExamples
from .candidates import CandidateIndex, TwoStageSampler, ivf_nlist, require_faiss
from .exhaustive import ExhaustiveSampler
from .false_negatives import FalseNegativeFilter
from .miner import NegativeMiner
from .nystrom import NystromTransform, fit_nystrom_map
from .tele import TeleSampler
from .tree import ClusterTree, TreeSampler
from .topk import Selection, gumbel_noise, query_generator, select_negatives
from .transforms import (CorrectorTransform, IdentityTransform, LinearCorrectorTransform, ScoreTransform,
                         Transform)

__all__ = [
    "CandidateIndex",
    "ClusterTree",
    "CorrectorTransform",
    "ExhaustiveSampler",
    "FalseNegativeFilter",
    "IdentityTransform",
    "LinearCorrectorTransform",
    "NegativeMiner",
    "NegativeSampler",
    "NystromTransform",
    "SamplerContext",
    "ScoreLimits",
    "ScoreTransform",
    "Selection",
    "TeleSampler",
    "TrainingExamples",
    "TreeSampler",
    "Transform",
    "TwoStageSampler",
    "build_miner",
    "build_sampler",
    "build_transform",
    "fit_nystrom_map",
    "gumbel_noise",
    "ivf_nlist",
    "query_generator",
    "require_faiss",
    "select_negatives",
]


def build_transform(args: Any, get_corrector: Callable[[], Any]) -> ScoreTransform:
    """The score transform named by ``args.correction``."""
    if args.correction == "mlp":
        view_steps = getattr(args, "corrected_view_steps", 0)
        return CorrectorTransform(get_corrector, view_steps=view_steps, view_dtype=_scoring_dtype(args))
    if args.correction == "linear":
        return LinearCorrectorTransform(get_corrector)
    if args.correction == "nystrom":
        return NystromTransform(args.nystrom_landmarks, args.nystrom_landmark_selection, args.nystrom_ridge,
                                args.nystrom_rank, args.nystrom_refit_steps, args.nystrom_residual)
    return IdentityTransform()


def build_sampler(args: Any, get_corrector: Callable[[], Any]) -> NegativeSampler:
    """The sampler the arguments describe (see the module table); the only place the strategy is decided."""
    transform = build_transform(args, get_corrector)
    if args.tele_negatives:
        return TeleSampler(args.tele_pool_size, args.tele_momentum_weight, args.tele_lookahead_weight,
                           args.tele_use_ann, args.tele_use_lookahead, args.tele_use_momentum, args.tele_pool_steps,
                           transform=transform)
    if getattr(args, "tree_sampler", False):
        return TreeSampler(args.negative_sampling, args.sampling_temperature, transform=transform, mode=args.tree_mode,
                           num_clusters=args.tree_num_clusters, probe_mass=args.tree_probe_mass,
                           max_probe=args.tree_max_probe, rebuild_radius_factor=args.tree_rebuild_radius_factor)
    if args.candidate_index != "none":
        return TwoStageSampler(args.candidate_index, args.candidate_pool_size, args.candidate_nprobe,
                               args.negative_sampling, args.sampling_temperature, transform=transform)
    return ExhaustiveSampler(args.negative_sampling, args.sampling_temperature, transform=transform,
                             score_dtype=_scoring_dtype(args))


def _scoring_dtype(args: Any):
    """``args.scoring_dtype`` as a torch dtype (None: float32)."""
    import torch

    name = getattr(args, "scoring_dtype", "float32")
    return None if name == "float32" else getattr(torch, name)


def build_miner(args: Any, sampler: NegativeSampler | None, source: str) -> NegativeMiner:
    """The :class:`NegativeMiner` for ``args`` with ``source`` resolved (``hard_negatives="auto"`` decided by the
    trainer from the data)."""
    fn = FalseNegativeFilter(args.false_negative_skip_top, args.false_negative_margin, args.false_negative_max_score)
    return NegativeMiner(sampler if source != "dataset" else None, args.num_negatives, source, fn, seed=args.seed)
