"""ANCE-Tele negatives (Sun et al., EMNLP 2022): per-query pools of ANN, lookahead and momentum negatives.

With ``tele_negatives=True`` the trainer no longer scores the cache every step. Pools are built per training
example (a query and one of its positives) at the start of training, after each cache refresh (``on_refresh``)
and, if ``tele_pool_steps > 0``, every ``tele_pool_steps`` steps in between; those in-between pools are computed
from the *corrected* cache when the run has a corrector (``trainer.score_transform()``: the MLP / linear
corrector, or the Nyström map), so the pools follow the encoder without re-embedding.

* **ANN negatives**: the top-``tele_pool_size`` cache rows for the query, encoded now with f, against the (refreshed
  or corrected) cache, positives removed.
* **Lookahead negatives**: the top-``tele_pool_size`` cache rows for the query's positive passage, using its
  (corrected) cache row as the query, positives removed: the query will move towards its positive, so the
  positive's neighbours are its future hard negatives.
* **Momentum negatives**: the previous pool of the example carried forward (the previous ANN and lookahead pools,
  then the older momentum pool: recursive as in the official code), capped at ``2 * tele_pool_size`` rows, most
  recent first. The first build has no momentum pool.

Training negatives (the ``select`` hook): ``num_negatives`` per query, drawn without replacement, uniformly within
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
    >>> trainer.method_state["tele"].pools("0")  # doctest: +SKIP
    {'ann': [...], 'lookahead': [...], 'momentum': [...]}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..training.sampling import query_generator, select_negatives
from .base import Method

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


class TeleNegatives(Method):
    """ANCE-Tele negative pools (``tele_negatives=True``); see the module docstring.

    Args:
        trainer: the :class:`~hf_corrector.CorrectorTrainer` (its ``train_examples`` define the pools).

    Attributes:
        ann, lookahead, momentum: (E, width) pools of cache rows per training example (-1 = padding), rows in
            ``trainer.train_examples`` order.
        built_step: the step of the last build (None before the first).
    """

    name = "tele"

    def __init__(self, trainer: Any, **overrides: Any):
        args = trainer.args
        if trainer.train_examples is None:
            raise ConfigError("tele_negatives needs training examples")
        self.trainer = trainer
        self.pool_size = int(overrides.get("pool_size", args.tele_pool_size))
        self.momentum_weight = float(overrides.get("momentum_weight", args.tele_momentum_weight))
        self.lookahead_weight = float(overrides.get("lookahead_weight", args.tele_lookahead_weight))
        self.use_ann = bool(overrides.get("use_ann", args.tele_use_ann))
        self.use_lookahead = bool(overrides.get("use_lookahead", args.tele_use_lookahead))
        self.use_momentum = bool(overrides.get("use_momentum", args.tele_use_momentum))
        self.pool_steps = int(overrides.get("pool_steps", args.tele_pool_steps))
        if self.pool_size < 1:
            raise ConfigError(f"tele_pool_size must be >= 1, got {self.pool_size}")
        if not (self.use_ann or self.use_lookahead or self.use_momentum):
            raise ConfigError("tele_negatives needs at least one of tele_use_ann / tele_use_lookahead / "
                              "tele_use_momentum")
        ex = trainer.train_examples
        self.example_ids: list[int] = [int(e) for e in ex["example_id"]]
        self.index_of = {str(e): i for i, e in enumerate(self.example_ids)}
        self.query_ids: list[str] = list(ex["query_id"])
        self.positive_row: list[int] = [int(r) for r in ex["positive_row"]]
        self.positive_rows: list[list[int]] = [[int(r) for r in rows] for rows in ex["positive_rows"]]
        queries = list(ex["query"])
        self.unique_queries: list[str] = []
        self.query_slot: list[int] = []
        slot_of: dict[str, int] = {}
        for qid, text in zip(self.query_ids, queries):
            if qid not in slot_of:
                slot_of[qid] = len(self.unique_queries)
                self.unique_queries.append(text)
            self.query_slot.append(slot_of[qid])
        empty = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        self.ann, self.lookahead, self.momentum = empty, empty.clone(), empty.clone()
        self.built_step: int | None = None
        self.num_builds = 0

    # -- building the pools -----------------------------------------------------------------------------------------
    def _top(self, vectors: torch.Tensor, exclude: list[list[int]], k: int, transform) -> torch.Tensor:
        trainer = self.trainer
        out = []
        vectors = vectors.to(trainer.args.device)  # where the corrector (if any) lives
        for start in range(0, vectors.shape[0], QUERY_BLOCK):
            stop = start + QUERY_BLOCK
            sel = select_negatives(vectors[start:stop], trainer.cache_rows, k, exclude=exclude[start:stop],
                                   method="topk", num_rows=len(trainer.cache),
                                   chunk_size=trainer.args.corrector_chunk_size, transform=transform)
            out.append(sel.indices.cpu())
        return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)

    @torch.no_grad()
    def build(self, step: int) -> None:
        """Rebuild every example's pools from the current (corrected) cache; the old pool becomes momentum."""
        trainer = self.trainer
        args = trainer.args
        n = len(trainer.cache)
        k = min(self.pool_size, n - max(len(p) for p in self.positive_rows))
        if k < 1:
            raise ConfigError(f"the corpus ({n} rows) is too small for tele pools")
        transform = trainer.score_transform()
        need_ann = self.use_ann or not self.use_lookahead  # momentum-only runs carry ANN pools forward
        new_ann = new_la = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        if need_ann:
            q = trainer.retriever.encode_queries(self.unique_queries, batch_size=args.eval_batch_size_encode,
                                                 max_length=args.query_max_length, device=args.device,
                                                 show_progress_bar=False).float()
            # the same query has the same ANN pool for each of its examples: score once per query
            first = {}
            for i, s in enumerate(self.query_slot):
                first.setdefault(s, i)
            top = self._top(q, [self.positive_rows[first[s]] for s in range(len(self.unique_queries))], k, transform)
            new_ann = top[torch.as_tensor(self.query_slot, dtype=torch.long)]
        if self.use_lookahead:
            pos = trainer.cache.rows(torch.as_tensor(self.positive_row, dtype=torch.long))
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

    def sample(self, key: str, k: int, exclude: Sequence[int], step: int) -> list[int]:
        """``k`` negatives for example ``key`` at ``step`` (deterministic given seed, step and key)."""
        i = self.index_of[str(key)]
        gen = query_generator(self.trainer.args.seed, step, f"tele:{key}")
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
            n = len(self.trainer.cache)
            draw(torch.randperm(n, generator=gen).tolist(), k - len(chosen))
        if len(chosen) < k:
            raise ConfigError(f"cannot choose {k} negatives for example {key}: too few non-positive rows")
        return chosen

    def select(self, q: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str]) -> torch.Tensor:
        """The trainer's ``select`` hook: (B, num_negatives) rows from the pools (building them if needed)."""
        if self.built_step is None:
            self.build(self.trainer.state.global_step)
        step = self.trainer.state.global_step
        k = self.trainer.args.num_negatives
        return torch.as_tensor([self.sample(key, k, ex, step) for key, ex in zip(keys, exclude)], dtype=torch.long)

    # -- events -----------------------------------------------------------------------------------------------------
    def on_refresh(self, step: int) -> None:
        self.build(step)

    def on_step_end(self, step: int) -> None:
        if self.pool_steps and step % self.pool_steps == 0 and step != self.built_step:
            self.build(step)

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state = {"built_step": self.built_step, "num_builds": self.num_builds, "example_ids": self.example_ids}
        tensors = {name: t.clone() for name, t in (("ann", self.ann), ("lookahead", self.lookahead),
                                                   ("momentum", self.momentum)) if t.numel()}
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if state.get("example_ids") is not None and list(state["example_ids"]) != self.example_ids:
            raise ConfigError("the checkpoint's ANCE-Tele pools belong to other training examples")
        self.built_step = state.get("built_step")
        self.num_builds = int(state.get("num_builds", 0))
        empty = torch.zeros((len(self.example_ids), 0), dtype=torch.long)
        self.ann = tensors.get("ann", empty).long()
        self.lookahead = tensors.get("lookahead", empty.clone()).long()
        self.momentum = tensors.get("momentum", empty.clone()).long()
