"""Tree sampler: exact sampling from the softmax over all N cache rows with cluster bounds (Monath et al., AISTATS
2023, the dynamic index of its title), built on faiss k-means and maintained in place.

The rows are clustered once (``faiss.Kmeans``; faiss' two-level clustering above ``two_level_rows`` rows). Every
cluster c keeps its centroid ``mu_c``, its members, their count ``n_c`` and its radius ``R_c = max ||v - mu_c||``,
so for any query q and every member v:  ``<q, v> <= <q, mu_c> + ||q|| R_c = ub_c``.

Drawing for one query at inverse temperature ``beta`` (``1 / sampling_temperature``):

1. the bounds ``ub_c`` of all clusters are computed (C x d work); clusters are *probed* best bound first: their
   members are scored exactly (mass ``Z_p = sum exp(beta s)``), until the bound mass of the others,
   ``U = sum_c n_c exp(beta ub_c)``, is at most ``probe_mass`` of ``Z_p`` (and at least ``min_probe`` clusters);
2. a draw is exact rejection sampling from the envelope "exact weight on probed rows, ``exp(beta ub_c)`` on every
   unprobed member": with probability ``Z_p / (Z_p + U)`` a probed row ∝ its weight, otherwise a cluster
   ∝ ``n_c exp(beta ub_c)``, a uniform member v, accepted with probability ``exp(beta (s_v - ub_c))``. Accepted
   draws follow the softmax over all N rows exactly (whatever the clustering: a poor one only lowers acceptance).
   After ``max_attempts`` rejections the best-bounded unprobed cluster is scored exactly (the envelope shrinks;
   still exact, as in adaptive rejection sampling);
3. ``k`` negatives without replacement are ``k`` sequential draws, each from the softmax over the rows not yet
   drawn (= the Gumbel-top-k distribution of :class:`~hf_corrector.negatives.ExhaustiveSampler`);
   :meth:`TreeSampler.draw_iid` gives i.i.d. draws.

``U / (Z_p + U)`` certifies, per query, an upper bound on the softmax mass outside the probed clusters
(``last_stats["unexamined_bound"]``). ``mode="truncated"`` draws only from the probed clusters (no rejection
stage) and reports the same bound: its draws are within that total variation of the exact softmax.
``negative_sampling="topk"`` gives the exact top-k by branch and bound (probing until the k-th best score beats
every unprobed bound). False-negative limits are exact: ``skip_top`` rows are the exact best rows, rows above
``max_scores`` are never drawn.

Maintenance (no full rebuild): write-backs (``on_targets``), refreshes (``on_cache_refreshed``) and a recomputed
corrected view update the vectors in place; a changed row moves to its nearest centroid and the radii of the
clusters it touched are recomputed (a refresh recomputes every radius, O(N d)). A cluster whose radius grew past
``rebuild_radius_factor`` times its radius at (re)build, or whose acceptance rate fell below ``min_acceptance``, is
re-clustered locally with its nearest neighbours (``on_step_end``, at most ``max_rebuilds_per_step`` per step).
A linear corrector or a Nyström map folds into the query (``<q, W v> = <W^T q, v>``): the tree is untouched. An
MLP corrector is indexed through its materialised corrected view (``corrected_view_steps > 0``).

The tree and the rows stay in host memory; the tree holds no copy of the rows (it reads the cache, or the view,
in place): centroids (C x d), one row-to-cluster map and member lists (N integers).

Modules: the cluster structure and its maintenance in :mod:`~hf_corrector.negatives.tree_clusters`, one query's
probing, envelope and draws in :mod:`~hf_corrector.negatives.tree_draw`, the ``NegativeSampler`` adapter here.

Example:
    >>> sampler = TreeSampler(method="gumbel", temperature=0.05)  # doctest: +SKIP
    >>> trainer = CorrectorTrainer(..., sampler=sampler)  # or CorrectorTrainingArguments(..., tree_sampler=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .base import NegativeSampler, SamplerContext, ScoreLimits
from .topk import Selection, query_generator
from .transforms import ScoreTransform
from .tree_clusters import ClusterTree, covering_radii, default_num_clusters, nearest_centroid
from .tree_draw import _QueryDraw

__all__ = ["METHODS", "MODES", "ClusterTree", "TreeSampler", "covering_radii", "default_num_clusters",
           "nearest_centroid"]

logger = logging.getLogger(__name__)

METHODS = ("topk", "gumbel")
MODES = ("exact", "truncated")


class TreeSampler(NegativeSampler):
    """Negatives drawn exactly from the softmax over all cache rows through a cluster tree (see the module docstring).

    Args:
        method: ``gumbel`` (k draws without replacement from ``softmax(score / temperature)``) or ``topk`` (exact
            top-k by branch and bound).
        temperature: the softmax temperature (inverse temperature ``beta = 1 / temperature``).
        mode: ``exact`` or ``truncated`` (probed clusters only; the certified bound is reported either way).
        num_clusters: clusters (default about ``4 sqrt(N)``).
        min_probe / probe_mass / max_probe: probing stops after at least ``min_probe`` clusters once the unprobed
            bound mass is at most ``probe_mass`` of the probed mass (or at ``max_probe`` clusters in truncated mode).
        rebuild_radius_factor, min_acceptance, max_rebuilds_per_step, rebuild_neighbours: local re-clustering.
    """

    name = "tree"
    citation = "nystrom"  # the key of monath2023improving (AISTATS 2023): the dynamic-index paper, tree and Nyström
    supports_sharding = False

    def __init__(self, method: str = "gumbel", temperature: float = 1.0, transform: ScoreTransform | None = None,
                 mode: str = "exact", num_clusters: int | None = None, min_probe: int = 4, probe_mass: float = 0.1,
                 max_probe: int = 32, rebuild_radius_factor: float = 1.5, min_acceptance: float = 0.02,
                 max_rebuilds_per_step: int = 8, rebuild_neighbours: int = 4, niter: int = 20):
        super().__init__(transform)
        if method not in METHODS:
            raise ConfigError(f"negative_sampling must be one of {METHODS} with the tree sampler, got {method!r}")
        if mode not in MODES:
            raise ConfigError(f"tree_mode must be one of {MODES}, got {mode!r}")
        if temperature <= 0:
            raise ConfigError(f"sampling_temperature must be > 0, got {temperature}")
        if rebuild_radius_factor <= 1.0:
            raise ConfigError(f"tree_rebuild_radius_factor must be > 1, got {rebuild_radius_factor}")
        self.method, self.mode, self.temperature = method, mode, float(temperature)
        self.num_clusters = num_clusters
        self.min_probe, self.probe_mass, self.max_probe = int(min_probe), float(probe_mass), int(max_probe)
        self.rebuild_radius_factor, self.min_acceptance = float(rebuild_radius_factor), float(min_acceptance)
        self.max_rebuilds_per_step, self.rebuild_neighbours = int(max_rebuilds_per_step), int(rebuild_neighbours)
        self.niter = int(niter)
        self.tree: ClusterTree | None = None
        self._source: tuple | None = None  # (kind, data_ptr, shape) of the vectors the radii were computed on
        self._view: torch.Tensor | None = None  # the corrected view indexed (kind "view")
        self.stats = {"proposals": 0, "accepted": 0, "exact_rows": 0, "draws": 0, "local_rebuilds": 0,
                      "row_updates": 0, "rows_moved": 0, "radius_refreshes": 0}
        self._cluster_proposals: torch.Tensor | None = None
        self._cluster_accepts: torch.Tensor | None = None
        self.last_stats: dict[str, Any] = {}

    def setup(self, context: SamplerContext) -> None:
        """As every sampler; the tree and the rows it reads stay in host memory (the paper's setting)."""
        if context.cache.device.type != "cpu":
            raise ConfigError(f"the tree sampler reads the cache in host memory, but cache_device put it on "
                              f"{context.cache.device}: set cache_device='cpu' with tree_sampler=True")
        super().setup(context)

    @property
    def beta(self) -> float:
        return 1.0 / self.temperature

    @property
    def description(self) -> str:
        kind = "exact top-k" if self.method == "topk" else f"{self.mode} softmax sampling (temperature {self.temperature:g})"
        return f"tree {kind} over {self.transform.name} scores"

    # -- the scores the sampler sees --------------------------------------------------------------------------------
    def _scoring(self, queries: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, str]:
        """(folded queries, the (N, d) vectors to index, per-query offset, kind of vectors)."""
        cache, n = self.ctx.cache, len(self.ctx.cache)
        q, offset = queries.float().cpu(), None
        view = self.transform.view(step)
        if view is not None:  # an MLP corrector through its materialised corrected view
            return q, view(0, n), None, "view"
        fn = self.transform.function(step)  # fits a Nyström map when due
        matrix = self.transform.query_map() if (fn is not None or self.transform.folds_into_query) else None
        if fn is not None and matrix is None:
            raise ConfigError("the tree sampler indexes fixed vectors: an MLP corrector needs its materialised view "
                              "(corrected_view_steps > 0); a linear corrector or a Nyström map folds into the query")
        if matrix is not None:
            q = q @ matrix.to(torch.float32).cpu().T
            offset = self.transform.query_offset(queries)
        return q, cache.read_chunk(0, n), offset, "cache"

    def _sync(self, vectors: torch.Tensor, kind: str, step: int) -> None:
        """Build the tree on first use; recompute radii in place when the indexed vectors were replaced."""
        key = (kind, vectors.data_ptr(), tuple(vectors.shape))
        if self.tree is None:
            c = self.num_clusters or default_num_clusters(vectors.shape[0])
            self.tree = ClusterTree.build(vectors, c, seed=self.ctx.seed, niter=self.niter)
            self._reset_counters()
            logger.info("tree sampler: %d clusters over %d rows (max radius %.4f)", self.tree.num_clusters,
                        vectors.shape[0], float(self.tree.radius.max()))
        elif key != self._source:
            self.tree.refresh_radii(vectors)
            self.stats["radius_refreshes"] += 1
        self._source = key
        self._view = vectors if kind == "view" else None

    def _reset_counters(self) -> None:
        c = self.tree.num_clusters
        self._cluster_proposals = torch.zeros(c, dtype=torch.long)
        self._cluster_accepts = torch.zeros(c, dtype=torch.long)

    # -- choosing ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        limits = limits or ScoreLimits()
        q, vectors, offset, kind = self._scoring(queries, step)
        self._sync(vectors, kind, step)
        max_scores = limits.max_scores
        if max_scores is not None:
            max_scores = max_scores.float().cpu() - (offset.float().cpu() if offset is not None else 0.0)
        ub = self.tree.bounds(q)
        indices = torch.empty(q.shape[0], k, dtype=torch.long)
        scores = torch.empty(q.shape[0], k)
        dropped = torch.zeros(q.shape[0], dtype=torch.long)
        bounds, exact_rows, proposals = [], [], []
        for i in range(q.shape[0]):
            gen = query_generator(self.ctx.seed, step, f"tree:{keys[i]}")
            ms = None if max_scores is None else float(max_scores[i])
            d = _QueryDraw(self.tree, vectors, q[i], ub[i], self.beta, set(int(r) for r in exclude[i]), ms, gen)
            top = k if self.method == "topk" else 0
            d.probe_until(self.min_probe, self.probe_mass, self.max_probe if self.mode == "truncated" else None,
                          top, limits.skip_top)
            if ms is not None:  # rows above the ceiling, positives aside (all of them were probed)
                dropped[i] = int(((d.scores > ms) & ~torch.isin(d.rows, torch.as_tensor(list(exclude[i]),
                                                                                       dtype=torch.long))).sum())
            skipped = d.drop_best(limits.skip_top)
            dropped[i] += int(skipped.numel())
            if self.method == "topk":
                allowed = torch.nonzero(d.weights > 0).flatten()
                if allowed.numel() < k:
                    raise ValueError(f"not enough non-positive rows to choose {k} negatives per query "
                                     f"(cache has {len(self.ctx.cache)} rows)")
                best = allowed[d.scores[allowed].topk(k).indices]
                indices[i], scores[i] = d.rows[best], d.scores[best].float()
            else:
                for j in range(k):
                    indices[i, j], scores[i, j] = d.draw(self.mode == "exact", replace=False)
            bounds.append(d.unexamined_bound)
            exact_rows.append(int(d.rows.numel()) + d.proposals)
            proposals.append(d.proposals)
            self._record(d, k)
        if offset is not None:
            scores = scores + offset.float().cpu()[:, None]
        self.last_stats = {"unexamined_bound": bounds, "exact_rows": exact_rows, "proposals": proposals}
        return Selection(indices=indices.to(queries.device), scores=scores.to(queries.device), dropped=dropped)

    def _record(self, d: _QueryDraw, draws: int) -> None:
        self.stats["proposals"] += d.proposals
        self.stats["accepted"] += d.accepted
        self.stats["exact_rows"] += int(d.rows.numel()) + d.proposals
        self.stats["draws"] += draws
        self._cluster_proposals += d.cluster_proposals
        self._cluster_accepts += d.cluster_accepts

    @torch.no_grad()
    def draw_iid(self, queries: torch.Tensor, num: int, step: int = 0, keys: Sequence[str] | None = None,
                 exclude: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, list[float]]:
        """(B, num) i.i.d. draws from ``softmax(beta * score)`` over the allowed rows, and each query's certified
        unexamined-mass bound (truncated mode: draws from the probed clusters only)."""
        q, vectors, _, kind = self._scoring(queries, step)
        self._sync(vectors, kind, step)
        ub = self.tree.bounds(q)
        out = torch.empty(q.shape[0], num, dtype=torch.long)
        bounds = []
        for i in range(q.shape[0]):
            gen = query_generator(self.ctx.seed, step, f"tree-iid:{keys[i] if keys else i}")
            blocked = set(int(r) for r in exclude[i]) if exclude else set()
            d = _QueryDraw(self.tree, vectors, q[i], ub[i], self.beta, blocked, None, gen)
            d.probe_until(self.min_probe, self.probe_mass, self.max_probe if self.mode == "truncated" else None, 0, 0)
            out[i] = d.draw_many(num, self.mode == "exact")
            bounds.append(d.unexamined_bound)
            self._record(d, num)
        return out, bounds

    # -- maintenance ------------------------------------------------------------------------------------------------
    def _current_vectors(self) -> torch.Tensor | None:
        """The vectors the radii were computed on, while they are still the indexed ones (None: replaced)."""
        if self.tree is None or self._source is None:
            return None
        if self._source[0] == "view":  # the materialised view (the transform updates it in place on write-backs)
            return self._view
        vectors = self.ctx.cache.read_chunk(0, len(self.ctx.cache))
        return vectors if vectors.data_ptr() == self._source[1] else None

    def on_targets(self, rows: torch.Tensor) -> None:
        """Rows written back (or re-corrected in the view): update them in place."""
        super().on_targets(rows)
        if not self.ctx.cache.write_back:
            return
        vectors = self._current_vectors()
        if vectors is None:  # the vectors were replaced: the next draw recomputes every radius
            return
        self.stats["rows_moved"] += self.tree.update_rows(vectors, rows)
        self.stats["row_updates"] += int(rows.numel())

    def on_cache_refreshed(self, step: int) -> None:
        """Every row changed: recompute every radius in place now (degraded clusters are rebuilt at step end)."""
        super().on_cache_refreshed(step)
        if self._source is not None and self._source[0] == "view":  # the transform drops its view: so does the tree
            self._view, self._source = None, None
            return  # radii are recomputed on the new view at the next draw
        vectors = self._current_vectors()
        if vectors is None:
            return
        self.tree.refresh_radii(vectors)
        self.stats["radius_refreshes"] += 1

    def degraded_clusters(self) -> list[int]:
        """Clusters whose radius grew past ``rebuild_radius_factor`` x its base, or whose acceptance rate (over at
        least 50 proposals) fell below ``min_acceptance``; worst first."""
        t = self.tree
        grown = t.radius / t.base_radius.clamp_min(1e-12)
        rate = self._cluster_accepts.double() / self._cluster_proposals.double().clamp_min(1)
        bad = (grown > self.rebuild_radius_factor) | ((self._cluster_proposals >= 50) & (rate < self.min_acceptance))
        bad &= t.counts > 1
        order = torch.argsort(grown, descending=True)
        return [int(c) for c in order.tolist() if bad[c]]

    def on_step_end(self, step: int) -> None:
        super().on_step_end(step)
        if self.tree is None:
            return
        vectors = self._current_vectors()
        if vectors is None:
            return
        done: set[int] = set()
        for c in self.degraded_clusters():
            if len(done) >= self.max_rebuilds_per_step:
                break
            if c in done:
                continue
            seed = self.ctx.seed + 7919 * (self.stats["local_rebuilds"] + 1)
            group = self.tree.rebuild_local(vectors, c, self.rebuild_neighbours, seed=seed)
            done.update(group)
            self._cluster_proposals[group] = 0
            self._cluster_accepts[group] = 0
            self.stats["local_rebuilds"] += 1
        if done:
            logger.info("step %d: tree sampler re-clustered %d clusters locally", step, len(done))
        if self.stats["proposals"] and (done or step % 50 == 0):
            logger.info("tree sampler: acceptance %.3f over %d proposals, %d local rebuilds", self.acceptance_rate,
                         self.stats["proposals"], self.stats["local_rebuilds"])

    @property
    def acceptance_rate(self) -> float:
        return self.stats["accepted"] / max(self.stats["proposals"], 1)

    def log_metrics(self) -> dict[str, float]:
        """Since the start of training: rejection proposals and their acceptance rate (absent while no proposal was
        made: every draw came from probed clusters), exactly scored rows per draw, local rebuilds, radius refreshes;
        and the largest certified unexamined-mass bound of the last batch (the trainer's logs)."""
        draws = max(self.stats["draws"], 1)
        out = {"tree_proposals": float(self.stats["proposals"]),
               "tree_exact_rows_per_draw": self.stats["exact_rows"] / draws,
               "tree_local_rebuilds": float(self.stats["local_rebuilds"]),
               "tree_radius_refreshes": float(self.stats["radius_refreshes"]),
               "tree_unexamined_bound_max": float(max(self.last_stats.get("unexamined_bound", [0.0])))}
        if self.stats["proposals"]:
            out["tree_acceptance_rate"] = self.acceptance_rate
        return out

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = super().state_dict()
        state["tree_stats"] = dict(self.stats)
        if self.tree is not None:
            state["tree_source_kind"] = self._source[0] if self._source else None
            tensors.update({f"tree.{k}": v for k, v in self.tree.tensors().items()})
            tensors["tree.cluster_proposals"] = self._cluster_proposals.clone()
            tensors["tree.cluster_accepts"] = self._cluster_accepts.clone()
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state, tensors)
        self.stats.update(state.get("tree_stats", {}))
        tree = {k[len("tree."):]: v for k, v in tensors.items() if k.startswith("tree.")}
        if "centroids" in tree:
            self.tree = ClusterTree.from_tensors(tree)
            self._cluster_proposals = tree["cluster_proposals"].long()
            self._cluster_accepts = tree["cluster_accepts"].long()
            self._source = None  # radii are recomputed on the restored vectors at the next draw (same values)
