"""One query's draw for the tree sampler: best-bound-first probing, the rejection envelope over the unprobed
clusters, exact draws from the softmax over all N rows and the certified bound on the unexamined mass (see
:mod:`hf_corrector.negatives.tree` for the method).
"""

from __future__ import annotations

import torch

from .tree_clusters import ClusterTree


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
