"""ANCE-Tele negatives (Sun et al., EMNLP 2022): per-query pools of ANN, lookahead and momentum negatives.

With ``tele_negatives=True`` the trainer no longer scores the cache every step. Pools are built per training
example (a query and one of its positives) at the start of training, after each cache refresh (``on_refresh``)
and, if ``tele_pool_steps > 0``, every ``tele_pool_steps`` steps in between; those in-between pools are computed
from the *corrected* cache when the run has a corrector (the sampler's score transform: the MLP / linear
corrector, or the Nyström map), so the pools follow the encoder without re-embedding.

* **ANN negatives**: the top-``tele_pool_size`` cache rows for the query, encoded now with f, against the (refreshed
  or corrected) cache, positives removed.
* **Lookahead negatives**: the top-``tele_pool_size`` cache rows for the query's positive passage, using its
  (corrected) cache row as the query, positives removed: the query will move towards its positive, so the
  positive's neighbours are its future hard negatives.
* **Momentum negatives**: the previous pool of the example carried forward (the previous ANN and lookahead pools,
  then the older momentum pool: recursive as in the official code), capped at ``2 * tele_pool_size`` rows, most
  recent first. The first build has no momentum pool.

Training negatives (:meth:`TeleSampler.sample`): ``num_negatives`` per query, drawn without replacement, uniformly within
each part. A share ``tele_momentum_weight`` comes from the momentum pool; of the rest, a share
``tele_lookahead_weight`` from the lookahead pool and the remainder from the ANN pool (the paper's 0.5 / 0.5).
Counts are rounded; a part that is switched off (``tele_use_ann`` / ``tele_use_lookahead`` /
``tele_use_momentum``) or empty gives its share to the others, a part that runs short is topped up from the union
of the pools, and only if the union is too small from random non-positive rows. With only momentum switched on,
the first pool (which has no momentum yet) and the pools carried forward are ANN pools. Draws use a generator
keyed by ``(seed, step, example id)`` (:func:`~hf_corrector.training.sampling.query_generator`), so they do not
depend on batch composition or resumption. Pools are saved in checkpoints.

Pools are built with exact, chunked scoring (memory bounded by ``corrector_chunk_size`` x 256 queries at a time),
not with the candidate index; the cost is one query encoding of every training query per build (not counted as
target re-embedding: no target is encoded).

Example:
    >>> args = CorrectorTrainingArguments("out", tele_negatives=True, tele_pool_size=200,  # doctest: +SKIP
    ...                                   cache_refresh_steps=500, correction="none")
    >>> trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=data)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.sampler.pools("0")  # doctest: +SKIP
    {'ann': [...], 'lookahead': [...], 'momentum': [...]}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .base import NegativeSampler, ScoreLimits, TrainingExamples
from .topk import Selection, query_generator, select_negatives
from .transforms import ScoreTransform

logger = logging.getLogger(__name__)

QUERY_BLOCK = 256


def _pad(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r[:width], dtype=torch.long)
    return out


def _rows(t: torch.Tensor, i: int) -> list[int]:
    if t.numel() == 0:
        return []
    row = t[i]
    return row[row >= 0].tolist()


class TeleSampler(NegativeSampler):
    """ANCE-Tele negative pools (``tele_negatives=True``); see the module docstring.

    Args:
        pool_size, momentum_weight, lookahead_weight, use_ann, use_lookahead, use_momentum, pool_steps: the
            ``tele_*`` training arguments.
        transform: the score transform the in-between pools are built with (corrector or Nyström).

    Attributes:
        ann, lookahead, momentum: (E, width) pools of cache rows per training example (-1 = padding), rows in
            training-example order.
        built_step: the step of the last build (None before the first).
    """

    name = "ance-tele"
    citation = "ance-tele"

    def __init__(self, pool_size: int = 200, momentum_weight: float = 0.5, lookahead_weight: float = 0.5,
                 use_ann: bool = True, use_lookahead: bool = True, use_momentum: bool = True, pool_steps: int = 0,
                 transform: ScoreTransform | None = None):
        super().__init__(transform)
        self.pool_size = int(pool_size)
        self.momentum_weight = float(momentum_weight)
        self.lookahead_weight = float(lookahead_weight)
        self.use_ann, self.use_lookahead, self.use_momentum = bool(use_ann), bool(use_lookahead), bool(use_momentum)
        self.pool_steps = int(pool_steps)
        if self.pool_size < 1:
            raise ConfigError(f"tele_pool_size must be >= 1, got {self.pool_size}")
        if not (self.use_ann or self.use_lookahead or self.use_momentum):
            raise ConfigError("tele_negatives needs at least one of tele_use_ann / tele_use_lookahead / "
                              "tele_use_momentum")
        self.built_step: int | None = None
        self.num_builds = 0

    @property
    def description(self) -> str:
        parts = [n for n, on in (("ANN", self.use_ann), ("lookahead", self.use_lookahead),
                                 ("momentum", self.use_momentum)) if on]
        return f"ANCE-Tele pools ({' + '.join(parts)}, {self.pool_size} per pool; {self.transform.name} scores)"

    def setup(self, context) -> None:
        super().setup(context)
        if context.examples is None:
            raise ConfigError("tele_negatives needs training examples")
        ex: TrainingExamples = context.examples
        self.example_ids: list[int] = list(ex.example_ids)
        self.index_of = {str(e): i for i, e in enumerate(self.example_ids)}
        self.query_ids: list[str] = list(ex.query_ids)
        self.positive_row: list[int] = list(ex.positive_row)
        self.positive_rows: list[list[int]] = [list(r) for r in ex.positive_rows]
        self.unique_queries: list[str] = []
        self.query_slot: list[int] = []
        slot_of: dict[str, int] = {}
        for qid, text in zip(self.query_ids, ex.queries):
            if qid not in slot_of:
                slot_of[qid] = len(self.unique_queries)
                self.unique_queries.append(text)
            self.query_slot.append(slot_of[qid])
        empty = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        self.ann, self.lookahead, self.momentum = empty, empty.clone(), empty.clone()

    # -- building the pools -----------------------------------------------------------------------------------------
    def _top(self, vectors: torch.Tensor, exclude: list[list[int]], k: int, transform) -> torch.Tensor:
        ctx = self.ctx
        out = []
        vectors = vectors.to(ctx.device)  # where the corrector (if any) lives
        for start in range(0, vectors.shape[0], QUERY_BLOCK):
            stop = start + QUERY_BLOCK
            sel = select_negatives(vectors[start:stop], ctx.cache.read_chunk, k, exclude=exclude[start:stop],
                                   method="topk", num_rows=len(ctx.cache), chunk_size=ctx.chunk_size,
                                   transform=transform)
            out.append(sel.indices.cpu())
        return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)

    @torch.no_grad()
    def build(self, step: int) -> None:
        """Rebuild every example's pools from the current (corrected) cache; the old pool becomes momentum."""
        ctx = self.ctx
        n = len(ctx.cache)
        k = min(self.pool_size, n - max(len(p) for p in self.positive_rows))
        if k < 1:
            raise ConfigError(f"the corpus ({n} rows) is too small for tele pools")
        transform = self.transform.function(step)
        need_ann = self.use_ann or not self.use_lookahead  # momentum-only runs carry ANN pools forward
        new_ann = new_la = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        if need_ann:
            q = ctx.encode_queries(self.unique_queries).float()
            # the same query has the same ANN pool for each of its examples: score once per query
            first = {}
            for i, s in enumerate(self.query_slot):
                first.setdefault(s, i)
            top = self._top(q, [self.positive_rows[first[s]] for s in range(len(self.unique_queries))], k, transform)
            new_ann = top[torch.as_tensor(self.query_slot, dtype=torch.long)]
        if self.use_lookahead:
            pos = ctx.cache.rows(torch.as_tensor(self.positive_row, dtype=torch.long))
            if transform is not None:
                pos = torch.cat([transform(pos[s:s + QUERY_BLOCK]).float().cpu()
                                 for s in range(0, len(pos), QUERY_BLOCK)])
            new_la = self._top(pos, self.positive_rows, k, transform)
        if self.use_momentum and self.built_step is not None:
            cap = 2 * self.pool_size
            carried = []
            for i in range(len(self.example_ids)):
                seen: dict[int, None] = {}
                for r in _rows(self.ann, i) + _rows(self.lookahead, i) + _rows(self.momentum, i):
                    seen.setdefault(r, None)
                carried.append(list(seen)[:cap])
            self.momentum = _pad(carried)
        self.ann, self.lookahead = new_ann, new_la
        self.built_step = step
        self.num_builds += 1
        logger.info("step %d: built ANCE-Tele pools for %d examples (ANN %d, lookahead %d, momentum %d per example; "
                    "%s cache)", step, len(self.example_ids), self.ann.shape[1], self.lookahead.shape[1],
                    self.momentum.shape[1], "corrected" if transform is not None else "uncorrected")

    def pools(self, key: str | int) -> dict[str, list[int]]:
        """The ``ann``, ``lookahead`` and ``momentum`` pools of an example id."""
        i = self.index_of[str(key)]
        return {"ann": _rows(self.ann, i), "lookahead": _rows(self.lookahead, i), "momentum": _rows(self.momentum, i)}

    def union(self, key: str | int) -> set[int]:
        """All rows negatives can be drawn from for an example (the enabled parts)."""
        return set().union(*self._parts(self.index_of[str(key)]).values())

    def _parts(self, i: int) -> dict[str, list[int]]:
        ann = _rows(self.ann, i) if self.use_ann else []
        la = _rows(self.lookahead, i) if self.use_lookahead else []
        mom = _rows(self.momentum, i) if self.use_momentum else []
        if not (ann or la) and not mom:  # momentum-only, first pool: bootstrap from ANN
            ann = _rows(self.ann, i)
        return {"momentum": mom, "lookahead": la, "ann": ann}

    # -- sampling ---------------------------------------------------------------------------------------------------
    def counts(self, k: int, parts: dict[str, list[int]]) -> dict[str, int]:
        """How many of ``k`` negatives each part contributes (before top-ups)."""
        have_mom = bool(parts["momentum"])
        have_new = bool(parts["ann"] or parts["lookahead"])
        k_mom = (round(self.momentum_weight * k) if have_new else k) if have_mom else 0
        k_new = k - k_mom
        if parts["ann"] and parts["lookahead"]:
            k_la = round(self.lookahead_weight * k_new)
        else:
            k_la = k_new if parts["lookahead"] else 0
        return {"momentum": k_mom, "lookahead": k_la, "ann": k_new - k_la}

    def draw(self, key: str, k: int, exclude: Sequence[int], step: int) -> list[int]:
        """``k`` negatives for example ``key`` at ``step`` (deterministic given seed, step and key)."""
        i = self.index_of[str(key)]
        gen = query_generator(self.ctx.seed, step, f"tele:{key}")
        banned = set(int(r) for r in exclude) | set(self.positive_rows[i])
        parts = self._parts(i)
        chosen: list[int] = []
        taken: set[int] = set()

        def draw(pool: list[int], count: int) -> None:
            avail = [r for r in pool if r not in banned and r not in taken]
            if count <= 0 or not avail:
                return
            perm = torch.randperm(len(avail), generator=gen)[:count].tolist()
            for j in perm:
                chosen.append(avail[j])
                taken.add(avail[j])

        for name, count in self.counts(k, parts).items():
            draw(parts[name], count)
        if len(chosen) < k:  # a part ran short: top up from the whole union
            draw(list(dict.fromkeys(parts["momentum"] + parts["lookahead"] + parts["ann"])), k - len(chosen))
        if len(chosen) < k:  # the union is too small: random non-positive rows
            n = len(self.ctx.cache)
            draw(torch.randperm(n, generator=gen).tolist(), k - len(chosen))
        if len(chosen) < k:
            raise ConfigError(f"cannot choose {k} negatives for example {key}: too few non-positive rows")
        return chosen

    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        """``k`` rows per example from its pools (building the pools first if there are none)."""
        if self.built_step is None:
            self.build(step)
        dropped = torch.zeros(len(keys), dtype=torch.long)
        if limits is not None and (limits.max_scores is not None or limits.skip_top):
            exclude, dropped = self._limited(queries, exclude, keys, step, limits)
        rows = torch.as_tensor([self.draw(key, k, ex, step) for key, ex in zip(keys, exclude)], dtype=torch.long)
        return Selection(indices=rows, scores=self.score_rows(queries, rows, step), dropped=dropped)

    def _limited(self, queries, exclude, keys, step, limits: ScoreLimits) -> tuple[list[list[int]], torch.Tensor]:
        """``exclude`` plus the pool rows a false-negative limit drops (above the ceiling, or in the top ranks),
        and how many were dropped per query."""
        out = []
        dropped = torch.zeros(len(keys), dtype=torch.long)
        for qi, (key, ex) in enumerate(zip(keys, exclude)):
            pool = sorted(self.union(key) - set(ex))
            if not pool:
                out.append(list(ex))
                continue
            scores = self.score_rows(queries[qi : qi + 1], torch.as_tensor([pool]), step)[0]
            drop = set()
            if limits.skip_top:
                drop.update(pool[j] for j in scores.topk(min(limits.skip_top, len(pool))).indices.tolist())
            if limits.max_scores is not None:
                drop.update(r for r, s in zip(pool, scores.tolist()) if s > float(limits.max_scores[qi]))
            dropped[qi] = len(drop)
            out.append(list(ex) + sorted(drop))
        return out, dropped

    # -- events -----------------------------------------------------------------------------------------------------
    def on_cache_refreshed(self, step: int) -> None:
        super().on_cache_refreshed(step)
        self.build(step)

    def on_step_end(self, step: int) -> None:
        super().on_step_end(step)
        if self.pool_steps and step % self.pool_steps == 0 and step != self.built_step:
            self.build(step)

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = super().state_dict()
        state.update({"built_step": self.built_step, "num_builds": self.num_builds, "example_ids": self.example_ids})
        tensors.update({name: t.clone() for name, t in (("ann", self.ann), ("lookahead", self.lookahead),
                                                        ("momentum", self.momentum)) if t.numel()})
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state, tensors)
        if state.get("example_ids") is not None and list(state["example_ids"]) != self.example_ids:
            raise ConfigError("the checkpoint's ANCE-Tele pools belong to other training examples")
        self.built_step = state.get("built_step")
        self.num_builds = int(state.get("num_builds", 0))
        empty = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        self.ann = tensors.get("ann", empty).long()
        self.lookahead = tensors.get("lookahead", empty.clone()).long()
        self.momentum = tensors.get("momentum", empty.clone()).long()
