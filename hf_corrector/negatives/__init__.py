"""Negative samplers: how each step's hard negatives are chosen from the stale cache.

The strategy is chosen once, from the arguments, by :class:`hf_corrector.training.strategy.NegativeStrategy`
(``NegativeStrategy.from_args(args).build_sampler(get_corrector)``; samplers are registered there by name):

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
    >>> strategy = NegativeStrategy.from_args(CorrectorTrainingArguments("out", correction="nystrom"))  # doctest: +SKIP
    >>> strategy.build_sampler(get_corrector).description  # doctest: +SKIP
    'exhaustive top-k over nystrom scores'
"""

from __future__ import annotations

from .base import NegativeSampler, ScoreLimits
from .context import CacheReader, SamplerContext, TrainingExamples
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
    "CacheReader",
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
    "fit_nystrom_map",
    "gumbel_noise",
    "ivf_nlist",
    "query_generator",
    "require_faiss",
    "select_negatives",
]
