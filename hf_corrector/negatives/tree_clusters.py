"""The tree sampler's cluster structure (Monath et al., AISTATS 2023): faiss k-means clusters of the cache rows with
centroid, members, count and covering radius ``R_c = max ||v - mu_c||``, and their in-place maintenance (row moves,
radius refreshes, local re-clustering). The bound ``<q, v> <= <q, mu_c> + ||q|| R_c`` holds for every member.

The rows themselves are not stored: every method takes the current (N, d) matrix (the cache or its corrected view).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .candidates import require_faiss


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
