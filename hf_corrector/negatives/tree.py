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

Example:
    >>> sampler = TreeSampler(method="gumbel", temperature=0.05)  # doctest: +SKIP
    >>> trainer = CorrectorTrainer(..., sampler=sampler)  # or CorrectorTrainingArguments(..., tree_sampler=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import NegativeSampler, SamplerContext, ScoreLimits
from .candidates import require_faiss
from .topk import Selection, query_generator
from .transforms import ScoreTransform

logger = logging.getLogger(__name__)

METHODS = ("topk", "gumbel")
MODES = ("exact", "truncated")


def default_num_clusters(n: int) -> int:
    """About ``4 sqrt(N)`` clusters (at least 1, at most N)."""
    return max(1, min(n, int(round(4 * math.sqrt(n)))))


class ClusterTree:
    """Clusters of row vectors with centroids, members, counts and covering radii (host memory).

    The vectors are not stored: every method takes the current (N, d) matrix (the cache or its corrected view).

    Example:
        >>> import torch
        >>> v = torch.randn(1000, 8)
        >>> tree = ClusterTree.build(v, num_clusters=16, seed=0)
        >>> bool(((v - tree.centroids[tree.assign]).norm(dim=1) <= tree.radius[tree.assign] + 1e-5).all())
        True
    """

    def __init__(self, centroids: torch.Tensor, assign: torch.Tensor, radius: torch.Tensor,
                 base_radius: torch.Tensor | None = None):
        self.centroids = centroids.float().contiguous()
        self.assign = assign.long()
        self.radius = radius.float()
        self.base_radius = (base_radius if base_radius is not None else radius).float().clone()
        self.members = self._members_from_assign()
        self._counts: torch.Tensor | None = None

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def counts(self) -> torch.Tensor:
        """(C,) members per cluster."""
        if self._counts is None:
            self._counts = torch.tensor([m.numel() for m in self.members], dtype=torch.long)
        return self._counts

    def _members_from_assign(self) -> list[torch.Tensor]:
        order = torch.argsort(self.assign, stable=True)
        sizes = torch.bincount(self.assign, minlength=self.centroids.shape[0]).tolist()
        return list(torch.split(order, sizes))

    # -- building ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: torch.Tensor, num_clusters: int, seed: int = 0, niter: int = 20,
              two_level_rows: int = 200_000) -> ClusterTree:
        """faiss k-means over ``vectors`` (two-level above ``two_level_rows`` rows), then exact assignment and radii."""
        faiss = require_faiss()
        x = np.ascontiguousarray(vectors.float().cpu().numpy())
        n, d = x.shape
        c = max(1, min(int(num_clusters), n))
        if n > two_level_rows and c >= 16:
            from faiss.contrib.clustering import two_level_clustering

            centroids, _ = two_level_clustering(x, int(round(math.sqrt(c))), c, clustering_niter=niter, seed=seed)
        else:
            km = faiss.Kmeans(d, c, niter=niter, seed=seed, max_points_per_centroid=256, min_points_per_centroid=1)
            km.train(x)
            centroids = km.centroids
        centroids_t = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
        assign = nearest_centroid(vectors, centroids_t)
        radius = covering_radii(vectors, centroids_t, assign)
        return cls(centroids_t, assign, radius)

    # -- maintenance ------------------------------------------------------------------------------------------------
    def refresh_radii(self, vectors: torch.Tensor) -> None:
        """Every vector may have changed: recompute every radius (assignments kept; O(N d))."""
        self.radius = covering_radii(vectors, self.centroids, self.assign)

    def update_rows(self, vectors: torch.Tensor, rows: torch.Tensor) -> int:
        """Rows ``rows`` changed in place: move each to its nearest centroid, recompute the touched radii.

        Returns the number of rows that changed cluster."""
        rows = torch.unique(rows.long().cpu())
        if not rows.numel():
            return 0
        old = self.assign[rows]
        new = nearest_centroid(vectors[rows], self.centroids)
        moved = rows[old != new]
        self.assign[rows] = new
        touched = torch.unique(torch.cat([old, new]))
        self._counts = None
        for c in torch.unique(torch.cat([old[old != new], new[old != new]])).tolist():
            self.members[c] = torch.nonzero(self.assign == c).flatten() if moved.numel() > 64 else \
                self._moved_members(c, moved)
        self._recompute_radii(vectors, touched)
        return int(moved.numel())

    def _moved_members(self, c: int, moved: torch.Tensor) -> torch.Tensor:
        keep = self.members[c][~torch.isin(self.members[c], moved)]
        joined = moved[self.assign[moved] == c]
        return torch.sort(torch.cat([keep, joined])).values

    def _recompute_radii(self, vectors: torch.Tensor, clusters: torch.Tensor) -> None:
        for c in clusters.tolist():
            m = self.members[c]
            self.radius[c] = (vectors[m].float() - self.centroids[c]).norm(dim=1).max() if m.numel() else 0.0

    def rebuild_local(self, vectors: torch.Tensor, c: int, neighbours: int = 4, seed: int = 0, niter: int = 10
                      ) -> list[int]:
        """Re-cluster cluster ``c`` with its ``neighbours - 1`` nearest clusters (same number of clusters, new
        centroids and assignments, radii reset as the new base). Returns the clusters rebuilt."""
        faiss = require_faiss()
        dist = (self.centroids - self.centroids[c]).norm(dim=1)
        group = torch.argsort(dist)[: max(1, min(neighbours, self.num_clusters))]
        rows = torch.cat([self.members[g] for g in group.tolist()])
        if rows.numel() < group.numel():  # too few rows to split: just reset the base radius
            self.base_radius[group] = self.radius[group]
            return group.tolist()
        x = np.ascontiguousarray(vectors[rows].float().cpu().numpy())
        km = faiss.Kmeans(x.shape[1], int(group.numel()), niter=niter, seed=seed, max_points_per_centroid=1 << 20,
                          min_points_per_centroid=1)
        km.train(x)
        self.centroids[group] = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))
        local = nearest_centroid(vectors[rows], self.centroids[group])
        self.assign[rows] = group[local]
        for g in group.tolist():
            self.members[g] = torch.sort(rows[self.assign[rows] == g]).values
        self._counts = None
        self._recompute_radii(vectors, group)
        self.base_radius[group] = self.radius[group]
        return group.tolist()

    # -- bounds -----------------------------------------------------------------------------------------------------
    def bounds(self, q: torch.Tensor) -> torch.Tensor:
        """(B, C) upper bounds ``<q, mu_c> + ||q|| R_c`` of every member's score (-inf for empty clusters)."""
        ub = q.float() @ self.centroids.T + q.float().norm(dim=1, keepdim=True) * self.radius[None, :]
        return ub.masked_fill((self.counts == 0)[None, :], float("-inf"))

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.centroids.clone(), "assign": self.assign.clone(), "radius": self.radius.clone(),
                "base_radius": self.base_radius.clone()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ClusterTree:
        return cls(tensors["centroids"], tensors["assign"], tensors["radius"], tensors["base_radius"])


def nearest_centroid(vectors: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(N,) index of the nearest centroid (Euclidean) of every row, in chunks."""
    out = torch.empty(vectors.shape[0], dtype=torch.long)
    half_sq = 0.5 * (centroids * centroids).sum(1)
    for s in range(0, vectors.shape[0], chunk):
        v = vectors[s : s + chunk].float()
        out[s : s + chunk] = (v @ centroids.T - half_sq).argmax(1)  # argmin ||v - c||^2 = argmax <v,c> - |c|^2/2
    return out


def covering_radii(vectors: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor, chunk: int = 65536
                   ) -> torch.Tensor:
    """(C,) ``max ||v - mu_c||`` over each cluster's rows (0 for empty clusters), in chunks."""
    radius = torch.zeros(centroids.shape[0])
    for s in range(0, vectors.shape[0], chunk):
        a = assign[s : s + chunk]
        d = (vectors[s : s + chunk].float() - centroids[a]).norm(dim=1)
        radius.scatter_reduce_(0, a, d, reduce="amax")
    # float rounding: a member's recomputed distance may exceed the stored max by an ulp; pad relatively
    return radius * (1 + 1e-6) + 1e-7


class _QueryDraw:
    """One query's probed set, envelope and draws (see the module docstring)."""

    def __init__(self, tree: ClusterTree, vectors: torch.Tensor, q: torch.Tensor, ub: torch.Tensor, beta: float,
                 blocked: set[int], max_score: float | None, gen: torch.Generator):
        self.tree, self.vectors, self.q, self.beta, self.gen = tree, vectors, q, beta, gen
        self.blocked = blocked
        self.max_score = max_score
        self.ub = ub.double()
        self.order = torch.argsort(ub, descending=True).tolist()
        self.counts = tree.counts.double()
        self.shift = float(ub.max())  # every score <= shift: weights exp(beta (s - shift)) <= 1
        self.probed: list[int] = []
        self.unprobed = torch.ones(tree.num_clusters, dtype=torch.bool)
        self.unprobed[self.counts == 0] = False
        # envelope mass of each cluster, zeroed once probed (U = its sum, recomputed exactly, never updated by
        # subtraction: the envelope must stay an upper bound)
        self.env = torch.where(self.unprobed, self.counts * torch.exp(self.beta * (self.ub - self.shift)),
                               torch.zeros_like(self.ub))
        self.rows = torch.zeros(0, dtype=torch.long)
        self.scores = torch.zeros(0, dtype=torch.float64)
        self.weights = torch.zeros(0, dtype=torch.float64)
        self.next = 0
        self.proposals = 0
        self.accepted = 0
        self.cluster_proposals = torch.zeros(tree.num_clusters, dtype=torch.long)
        self.cluster_accepts = torch.zeros(tree.num_clusters, dtype=torch.long)

    def allowed(self, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Rows that may be drawn: not blocked (positives, rows drawn before, skipped best rows), under the ceiling."""
        ok = ~torch.isin(rows, torch.tensor(sorted(self.blocked), dtype=torch.long)) if self.blocked else \
            torch.ones(rows.shape[0], dtype=torch.bool)
        if self.max_score is not None:
            ok &= scores <= self.max_score
        return ok

    # -- probing ----------------------------------------------------------------------------------------------------
    def probe(self, clusters: list[int]) -> None:
        """Score the members of ``clusters`` exactly (they leave the envelope)."""
        members = [self.tree.members[c] for c in clusters]
        rows = members[0] if len(members) == 1 else torch.cat(members)
        s = (self.vectors[rows].float() @ self.q).double()
        w = torch.exp(self.beta * (s - self.shift))
        ok = self.allowed(rows, s)
        self.rows = torch.cat([self.rows, rows])
        self.scores = torch.cat([self.scores, s])
        self.weights = torch.cat([self.weights, torch.where(ok, w, torch.zeros_like(w))])
        self.probed.extend(clusters)
        index = torch.as_tensor(clusters, dtype=torch.long)
        self.unprobed[index] = False
        self.env[index] = 0.0

    def _skip_probed(self) -> None:
        while self.next < len(self.order) and not self.unprobed[self.order[self.next]]:
            self.next += 1

    def probe_next(self, count: int = 1) -> bool:
        """Probe the ``count`` unprobed clusters of best bound; False when none is left."""
        chosen: list[int] = []
        while len(chosen) < count:
            self._skip_probed()
            if self.next >= len(self.order):
                break
            chosen.append(self.order[self.next])
            self.next += 1
        if chosen:
            self.probe(chosen)
        return bool(chosen)

    def best_unprobed_bound(self) -> float:
        self._skip_probed()
        return float(self.ub[self.order[self.next]]) if self.next < len(self.order) else float("-inf")

    @property
    def bound_mass(self) -> float:
        """``U``: the envelope mass of the unprobed clusters (shifted)."""
        return float(self.env.sum())

    @property
    def unexamined_bound(self) -> float:
        """Certified upper bound on the softmax mass (over allowed rows) outside the probed clusters."""
        u, z = self.bound_mass, float(self.weights.sum())
        return 1.0 if z + u == 0 else u / (z + u)

    def probe_until(self, min_probe: int, probe_mass: float, max_probe: int | None, top: int, skip_top: int) -> None:
        """Probe best-bound-first until the bound mass is small, and the ``top`` best probed scores (of allowed rows)
        and the ``skip_top`` best (of all rows) are certified to be the best of all N."""
        while True:
            n = len(self.probed)
            if max_probe is not None and n >= max_probe:
                return
            done = n >= min_probe and self.bound_mass <= probe_mass * float(self.weights.sum())
            if done and (top or skip_top):  # the best top + skip_top allowed rows are certified the best of all
                need = top + skip_top
                allowed = self.scores[self.weights > 0]
                done = allowed.numel() >= need and float(allowed.topk(need).values[-1]) >= self.best_unprobed_bound()
            if done and self.max_score is not None:
                done = self.best_unprobed_bound() <= self.max_score  # rows above the ceiling all seen (exact count)
            # probe in groups growing with the probed set (a quarter of it): overshoot at most 25%, few Python rounds
            step = max(1, n // 4) if max_probe is None else max(1, min(n // 4, max_probe - n))
            if done or not self.probe_next(step):
                return

    def drop_best(self, skip_top: int) -> torch.Tensor:
        """Block the ``skip_top`` best allowed rows (certified the best of all by :meth:`probe_until`), as the
        exhaustive scan does (positives and rows above the ceiling are not counted among them)."""
        if not skip_top:
            return self.rows[:0]
        allowed = torch.nonzero(self.weights > 0).flatten()
        best = allowed[self.scores[allowed].topk(min(skip_top, allowed.numel())).indices]
        self.weights[best] = 0.0
        rows = self.rows[best]
        self.blocked.update(rows.tolist())
        return rows

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _propose_unprobed(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` envelope proposals from the unprobed clusters: (cluster, row, score, accepted)."""
        unprobed = torch.nonzero(self.unprobed).flatten()
        env = self.env[unprobed]
        cl = unprobed[torch.multinomial(env.float(), n, replacement=True, generator=self.gen)]
        sizes = self.counts[cl]
        pos = torch.minimum((torch.rand(n, generator=self.gen, dtype=torch.float64) * sizes).long(),
                            (sizes - 1).long())
        rows = torch.stack([self.tree.members[c][p] for c, p in zip(cl.tolist(), pos.tolist())])
        s = (self.vectors[rows].float() @ self.q).double()
        accept_p = torch.exp(self.beta * (s - self.ub[cl])).clamp(max=1.0)
        acc = self.allowed(rows, s) & (torch.rand(n, generator=self.gen, dtype=torch.float64) < accept_p)
        return cl, rows, s, acc

    def draw_many(self, num: int, exact: bool, batch: int = 4096) -> torch.Tensor:
        """``num`` i.i.d. rows ∝ exp(beta s) over the allowed rows (vectorised rejection; the envelope tightens
        by probing the next cluster when a round accepts less than a tenth of its proposals)."""
        out, got = [], 0
        while got < num:
            z = float(self.weights.sum())
            u = self.bound_mass if exact else 0.0
            if z + u <= 0:
                if exact and self.probe_next():
                    continue
                raise ValueError("no allowed row left to draw")
            from_probed = torch.rand(batch, generator=self.gen, dtype=torch.float64) * (z + u) < z
            n_p = int(from_probed.sum())
            row = torch.empty(batch, dtype=torch.long)
            ok = from_probed.clone()
            if n_p:
                row[from_probed] = self.rows[torch.multinomial(self.weights.float(), n_p, replacement=True,
                                                               generator=self.gen)]
            if batch - n_p:
                cl, rows, _, acc = self._propose_unprobed(batch - n_p)
                row[~from_probed], ok[~from_probed] = rows, acc
                self.proposals += batch - n_p
                self.accepted += int(acc.sum())
                self.cluster_proposals.index_add_(0, cl, torch.ones_like(cl))
                self.cluster_accepts.index_add_(0, cl[acc], torch.ones_like(cl[acc]))
            out.append(row[ok])
            got += int(ok.sum())
            if int(ok.sum()) < batch // 10:  # tighten the envelope (groups growing with the probed set)
                self.probe_next(max(1, len(self.probed) // 4))
        return torch.cat(out)[:num]

    def draw(self, exact: bool, replace: bool, batch: int = 64, max_attempts: int = 256) -> tuple[int, float]:
        """One row ∝ exp(beta s) over the allowed rows (not yet drawn unless ``replace``); returns (row, score)."""
        attempts = 0
        while True:
            z = float(self.weights.sum())
            u = self.bound_mass if exact else 0.0
            if z + u <= 0:
                if exact and self.probe_next():
                    continue
                raise ValueError("no allowed row left to draw")
            if attempts >= max_attempts and self.probe_next(max(1, len(self.probed) // 4)):  # tighten (still exact)
                attempts = 0
                continue
            coin = torch.rand(batch, generator=self.gen, dtype=torch.float64) * (z + u)
            from_probed = coin < z
            n_probed = int(from_probed.sum())
            picks_p = torch.multinomial(self.weights.float(), n_probed, replacement=True,
                                        generator=self.gen) if n_probed else None
            n_rest = batch - n_probed
            result = None
            if n_rest:
                cl, rows, s, acc = self._propose_unprobed(n_rest)
            # attempts in order: the probed ones are always accepted; take the first accepted attempt
            ip, ir = 0, 0
            for is_probed in from_probed.tolist():
                if is_probed:
                    j = int(picks_p[ip]); ip += 1
                    result = (int(self.rows[j]), float(self.scores[j]), j, None)
                    break
                c = int(cl[ir])
                self.proposals += 1
                attempts += 1
                self.cluster_proposals[c] += 1
                if bool(acc[ir]):
                    self.accepted += 1
                    self.cluster_accepts[c] += 1
                    result = (int(rows[ir]), float(s[ir]), None, c)
                    break
                ir += 1
            if result is None:
                continue
            row, score, j, _ = result
            if not replace:
                if j is not None:
                    self.weights[j] = 0.0
                self.blocked.add(row)
            return row, score


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
        """Acceptance rate, exactly scored rows per draw and rebuild counts (for the training logs)."""
        draws = max(self.stats["draws"], 1)
        return {"tree_acceptance_rate": self.acceptance_rate, "tree_exact_rows_per_draw": self.stats["exact_rows"] / draws,
                "tree_local_rebuilds": float(self.stats["local_rebuilds"]),
                "tree_unexamined_bound_max": max(self.last_stats.get("unexamined_bound", [0.0]))}

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
