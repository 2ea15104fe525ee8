"""The selection strategies measured on the testbed, each built from the library's real samplers.

A strategy is one entry of :data:`STRATEGIES`: a function ``(testbed, options) -> Built`` registered with
:func:`register`. ``Built.sampler`` is set up over a real cache manager (:mod:`hf_corrector.testbed.adapter`);
``Built.reembeddings`` counts target-encoder forwards on corpus rows spent by the strategy *beyond* the initial
cache (refreshes, Nyström landmarks, fresh encodings for the oracle; the step targets that every strategy encodes
are counted apart, in ``Built.step_targets``).

Add a strategy::

    @register("my-sampler", stochastic=False)
    def _mine(tb, opts):
        manager = stale_manager(tb)
        return Built(setup_sampler(MySampler(), manager, seed=tb.seed), manager=manager)

Example:
    >>> from hf_corrector.testbed import make_testbed
    >>> built = build_strategy("stale-topk", make_testbed(N=500, drift=2, pretrain_steps=2))
    >>> built.sampler.description
    'exhaustive top-k over identity scores'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..cache.manager import CacheManager
from ..errors import ConfigError
from ..models.corrector import CorrectorConfig, CorrectorModel
from ..negatives import (CorrectorTransform, ExhaustiveSampler, IdentityTransform, LinearCorrectorTransform,
                         NegativeSampler, NystromTransform, TeleSampler, TreeSampler, TwoStageSampler)
from ..training.losses import corrector_loss
from .adapter import setup_sampler, tensor_cache_manager
from .evaluate import draw_rows, evaluate_sampler
from .ground_truth import Testbed


@dataclass
class StrategyOptions:
    """Knobs of the strategies (defaults used by ``benchmarks/synthetic.py``).

    Attributes:
        k: negatives per query (also used while training the corrector).
        corrector_steps / corrector_batch / corrector_lr: training of h on the step's targets (θ fixed).
        corrector_loss: ``ce``, ``mse`` or ``ce+mse`` (the library's :func:`corrector_loss`).
        corrector_hidden / corrector_layers: width and depth of the MLP corrector.
        nystrom_landmarks: landmarks re-encoded for the Nyström map.
        refresh_every: R (in drift steps) for ``refresh``: the cache is as refreshed R/2 drift steps ago (the mean
            age over a refresh cycle), costing N per refresh over the drift.
        pool_size: candidates of the two-stage faiss sampler; tele_pool_size: ANCE-Tele pool per source.
    """

    k: int = 16
    corrector_steps: int = 200
    corrector_batch: int = 64
    corrector_lr: float = 1e-3
    corrector_loss: str = "ce+mse"
    corrector_hidden: int | None = None
    corrector_layers: int = 2
    nystrom_landmarks: int = 256
    refresh_every: int | None = None
    pool_size: int = 256
    candidate_index: str = "ivf"
    tele_pool_size: int = 64
    seed: int = 0


@dataclass
class Built:
    """A strategy ready to measure: its set-up sampler and what it cost."""

    sampler: NegativeSampler
    reembeddings: int = 0
    stochastic: bool = False
    step_targets: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: the cache manager the sampler reads (record_step, cost); None for samplers outside the registry
    manager: CacheManager | None = None


Factory = Callable[[Testbed, StrategyOptions], Built]
STRATEGIES: dict[str, Factory] = {}
STOCHASTIC: set[str] = set()


def register(name: str, stochastic: bool = False) -> Callable[[Factory], Factory]:
    """Decorator: add a strategy factory under ``name``."""

    def deco(fn: Factory) -> Factory:
        STRATEGIES[name] = fn
        if stochastic:
            STOCHASTIC.add(name)
        return fn

    return deco


def build_strategy(name: str, testbed: Testbed, options: StrategyOptions | None = None, **overrides: Any) -> Built:
    """Build strategy ``name`` (see :data:`STRATEGIES`) on ``testbed``."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    opts = replace(options or StrategyOptions(seed=testbed.seed), **overrides)
    built = STRATEGIES[name](testbed, opts)
    built.stochastic = name in STOCHASTIC
    return built


# -- helpers --------------------------------------------------------------------------------------------------------
def stale_manager(tb: Testbed, matrix: torch.Tensor | None = None) -> CacheManager:
    """A cache manager over the stale cache (or ``matrix``) whose re-encodings use the current θ."""
    return tensor_cache_manager(tb.stale if matrix is None else matrix, tb.encode_targets)


def _setup(sampler: NegativeSampler, tb: Testbed, manager: CacheManager, positives=None) -> NegativeSampler:
    return setup_sampler(sampler, manager, encode_queries=lambda idx: tb.encode_queries(tb.train_queries[idx]),
                         seed=tb.seed, positives=positives)


def make_corrector(tb: Testbed, opts: StrategyOptions, architecture: str = "mlp") -> CorrectorModel:
    torch.manual_seed(opts.seed)
    return CorrectorModel(CorrectorConfig(embedding_dim=tb.dim, architecture=architecture,
                                          hidden_dim=opts.corrector_hidden, num_layers=opts.corrector_layers)).eval()


def train_corrector(tb: Testbed, manager: CacheManager, sampler: NegativeSampler, corrector: CorrectorModel,
                    opts: StrategyOptions) -> int:
    """Train h as in training, with θ fixed: each step the sampler (through h) chooses k negatives for a batch
    of training queries, the step's targets (positives and negatives) are encoded fresh, and h takes an Adam step
    on the library's corrector loss between fresh and corrected embeddings of those targets. Returns the number
    of target encodings h was trained on."""
    if opts.corrector_steps <= 0:
        return 0
    opt = torch.optim.Adam(corrector.parameters(), lr=opts.corrector_lr)
    gen = torch.Generator().manual_seed(opts.seed + 7919)
    seen = 0
    for step in range(opts.corrector_steps):
        idx = torch.randint(tb.train_queries.shape[0], (opts.corrector_batch,), generator=gen)
        q, pos = tb.encode_queries(tb.train_queries[idx]), tb.train_positives[idx]
        rows = draw_rows(sampler, q, [[int(p)] for p in pos], [f"h{int(i)}" for i in idx], opts.k, -1 - step)
        targets = torch.unique(torch.cat([pos, rows.reshape(-1)]))
        fresh = tb.encode_targets(targets)
        corrector.train()
        corrected = corrector(manager.rows(targets))
        mask = torch.ones(q.shape[0], targets.numel(), dtype=torch.bool)
        loss = corrector_loss(q, fresh, corrected, mask, 1.0 / tb.beta, kind=opts.corrector_loss)["corrector"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        corrector.eval()
        manager.record_step(targets, fresh, step)
        seen += int(targets.numel())
    return seen


def _corrected(tb: Testbed, opts: StrategyOptions, architecture: str, sampler_of: Callable) -> Built:
    corrector = make_corrector(tb, opts, architecture)
    transform_cls = LinearCorrectorTransform if architecture == "linear" else CorrectorTransform
    transform = transform_cls(lambda: corrector)
    manager = stale_manager(tb)
    sampler = _setup(sampler_of(transform), tb, manager)
    seen = train_corrector(tb, manager, sampler, corrector, opts)
    return Built(sampler, 0, step_targets=seen, extra={"corrector": corrector}, manager=manager)


# -- the strategies -------------------------------------------------------------------------------------------------
@register("stale-topk")
def _stale_topk(tb: Testbed, opts: StrategyOptions) -> Built:
    manager = stale_manager(tb)
    return Built(_setup(ExhaustiveSampler("topk"), tb, manager), manager=manager)


@register("stale-gumbel", stochastic=True)
def _stale_gumbel(tb: Testbed, opts: StrategyOptions) -> Built:
    manager = stale_manager(tb)
    return Built(_setup(ExhaustiveSampler("gumbel", 1.0 / tb.beta), tb, manager), manager=manager)


def _corrector_strategy(loss: str, architecture: str = "mlp") -> Factory:
    def factory(tb: Testbed, opts: StrategyOptions) -> Built:
        return _corrected(tb, replace(opts, corrector_loss=loss), architecture,
                          lambda t: ExhaustiveSampler("topk", transform=t))

    return factory


for _loss in ("ce", "mse", "ce+mse"):
    register(f"corrector-mlp-{_loss}")(_corrector_strategy(_loss))
register("corrector-linear")(_corrector_strategy("ce+mse", "linear"))


@register("nystrom")
def _nystrom(tb: Testbed, opts: StrategyOptions) -> Built:
    transform = NystromTransform(opts.nystrom_landmarks, "uniform", ridge=1e-3, residual=True)
    manager = stale_manager(tb)
    sampler = _setup(ExhaustiveSampler("topk", transform=transform), tb, manager)
    transform.fit(0)
    return Built(sampler, manager.cost.landmark_encodings, manager=manager)


@register("refresh")
def _refresh(tb: Testbed, opts: StrategyOptions) -> Built:
    drift = tb.info["drift"]
    if not tb.trajectory:
        raise ConfigError("refresh needs a drift trajectory (drift_kind='sgd')")
    every = opts.refresh_every or max(1, drift // 2)
    age = every // 2
    manager = stale_manager(tb, tb.embeddings_at(drift - age))
    return Built(_setup(ExhaustiveSampler("topk"), tb, manager), tb.num_targets * (drift // every),
                 extra={"refresh_every": every, "age": age}, manager=manager)


@register("two-stage")
def _two_stage(tb: Testbed, opts: StrategyOptions) -> Built:
    return _corrected(tb, opts, "mlp", lambda t: TwoStageSampler(opts.candidate_index, opts.pool_size, transform=t))


@register("ance-tele")
def _tele(tb: Testbed, opts: StrategyOptions) -> Built:
    positives = tb.train_positives.tolist()
    sampler = TeleSampler(opts.tele_pool_size, transform=IdentityTransform())
    manager = stale_manager(tb)
    return Built(_setup(sampler, tb, manager, positives=positives), 0, extra={"keys": "example index"},
                 manager=manager)


@register("oracle-topk")
def _oracle(tb: Testbed, opts: StrategyOptions) -> Built:
    manager = tensor_cache_manager(tb.fresh, tb.encode_targets)
    return Built(_setup(ExhaustiveSampler("topk"), tb, manager), tb.num_targets, manager=manager)


@register("exact-softmax", stochastic=True)
def _exact_softmax(tb: Testbed, opts: StrategyOptions) -> Built:
    manager = tensor_cache_manager(tb.fresh, tb.encode_targets)
    return Built(_setup(ExhaustiveSampler("gumbel", 1.0 / tb.beta), tb, manager), tb.num_targets, manager=manager)


# -- the dynamic-index tree sampler (AISTATS 2023): exact draws from the softmax over all N of its scores ----------
@register("tree-stale", stochastic=True)
def _tree_stale(tb: Testbed, opts: StrategyOptions) -> Built:
    """Exact Gumbel-top-k draws from softmax(β · stale score) through the cluster tree (the distribution of
    ``stale-gumbel``, at sub-linear cost)."""
    manager = stale_manager(tb)
    return Built(_setup(TreeSampler("gumbel", 1.0 / tb.beta), tb, manager), manager=manager)


@register("tree-nystrom", stochastic=True)
def _tree_nystrom(tb: Testbed, opts: StrategyOptions) -> Built:
    """The paper's method: the tree over the stale cache, the Nyström map folded into the query, exact draws from
    softmax(β · Nyström-corrected score)."""
    transform = NystromTransform(opts.nystrom_landmarks, "uniform", ridge=1e-3, residual=True)
    manager = stale_manager(tb)
    sampler = _setup(TreeSampler("gumbel", 1.0 / tb.beta, transform=transform), tb, manager)
    transform.fit(0)
    return Built(sampler, manager.cost.landmark_encodings, manager=manager)


@register("tree-corrector-linear", stochastic=True)
def _tree_corrector(tb: Testbed, opts: StrategyOptions) -> Built:
    """A linear corrector (trained as ``corrector-linear``) folded into the query; the tree is untouched."""
    return _corrected(tb, opts, "linear", lambda t: TreeSampler("gumbel", 1.0 / tb.beta, transform=t))


@register("tree-fresh", stochastic=True)
def _tree_fresh(tb: Testbed, opts: StrategyOptions) -> Built:
    """The tree over the fresh embeddings: the same distribution as ``exact-softmax`` (a check of exactness)."""
    manager = tensor_cache_manager(tb.fresh, tb.encode_targets)
    return Built(_setup(TreeSampler("gumbel", 1.0 / tb.beta), tb, manager), tb.num_targets, manager=manager)


def evaluate_strategy(name: str, testbed: Testbed, k: int = 16, num_queries: int = 256, draws: int = 8,
                      options: StrategyOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Build strategy ``name`` and measure it (:func:`~hf_corrector.testbed.evaluate.evaluate_sampler`): ``kl``,
    ``recall_at_k``, ``grad_cos``, ``grad_rel_err`` and the rest, plus its cost (``reembeddings`` beyond the
    initial cache, ``step_targets`` encoded to train a corrector) and times. Stochastic strategies are drawn
    ``draws`` times (bias and variance), deterministic ones once.

    Example:
        >>> from hf_corrector.testbed import make_testbed
        >>> m = evaluate_strategy("oracle-topk", make_testbed(N=500, drift=2, pretrain_steps=2), k=4, num_queries=8)
        >>> m["recall_at_k"], m["reembeddings"]
        (1.0, 500)
    """
    start = time.perf_counter()
    built = build_strategy(name, testbed, options, **{"k": k, **overrides})
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_sampler(built.sampler, testbed, k=k, num_queries=num_queries,
                               draws=draws if built.stochastic else 1)
    metrics.update({"strategy": name, "reembeddings": built.reembeddings, "step_targets": built.step_targets,
                    "build_seconds": build_s, "eval_seconds": time.perf_counter() - start,
                    **{key: v for key, v in built.extra.items() if isinstance(v, (int, float, str))}})
    return metrics
