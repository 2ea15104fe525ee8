"""Each step's hard negatives, from one place: the data's own negatives, a sampler over the cache, or both.

``hard_negatives`` (a training argument) picks the source:

* ``cache``: the sampler chooses ``k`` rows per query from the (corrected) cache;
* ``dataset``: ``k`` of the example's negatives given by the data (sentence-transformers ``negative*`` columns,
  Tevatron ``negative_passages``, BEIR-style ``negative_ids``), drawn at random per step when there are more;
* ``dataset+cache``: the data's negatives first (up to ``k``), the rest from the sampler (never a given one twice).

The false-negative filter (:mod:`~hf_corrector.negatives.false_negatives`) applies to the sampler's choice, and
the number of rows it dropped is kept for the logs.

Example:
    >>> miner = NegativeMiner(sampler, k=7, source="cache")  # doctest: +SKIP
    >>> rows = miner.choose(q, positives, exclude, keys, given=None, step=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..utils.running_means import RunningMeans
from .base import NegativeSampler
from .false_negatives import FalseNegativeFilter
from .topk import query_generator

SOURCES = ("cache", "dataset", "dataset+cache")


class NegativeMiner:
    """Chooses ``k`` negatives per query each step (see the module docstring).

    Args:
        sampler: the cache sampler (None for ``source="dataset"``).
        k: negatives per query (``num_negatives``): the only place it is kept.
        source: ``cache``, ``dataset`` or ``dataset+cache``.
        false_negatives: the false-negative filter (default: off).
        seed: keys the draws among given negatives.
    """

    def __init__(self, sampler: NegativeSampler | None, k: int, source: str = "cache",
                 false_negatives: FalseNegativeFilter | None = None, seed: int = 0):
        if source not in SOURCES:
            raise ConfigError(f"hard_negatives must be one of {SOURCES}, got {source!r}")
        if sampler is None and source != "dataset":
            raise ConfigError(f"hard_negatives={source!r} needs a sampler over the cache")
        self.sampler = sampler
        self.k = int(k)
        self.source = source
        self.false_negatives = false_negatives or FalseNegativeFilter()
        self.seed = seed
        # per batch: mean rows dropped per query by the false-negative filter, summed until the trainer logs them
        self.dropped = RunningMeans()

    @property
    def uses_cache(self) -> bool:
        return self.source != "dataset"

    @property
    def uses_dataset(self) -> bool:
        return self.source != "cache"

    def describe(self) -> str:
        """One line for model cards and logs."""
        parts = []
        if self.uses_dataset:
            parts.append("negatives given by the training data")
        if self.uses_cache:
            parts.append(self.sampler.description)
        text = " + ".join(parts) + f", {self.k} per query"
        fn = self.false_negatives.describe()
        return text + (f"; false-negative control: {fn}" if fn else "")

    @property
    def citations(self) -> list[str]:
        return self.sampler.citations if self.uses_cache else []

    def check_examples(self, given_counts: Sequence[int], query_ids: Sequence[str]) -> None:
        """With ``source="dataset"`` every example needs ``k`` given negatives: name the first that has fewer."""
        if self.source != "dataset":
            return
        for qid, n in zip(query_ids, given_counts):
            if n < self.k:
                raise ConfigError(f"hard_negatives='dataset' needs num_negatives={self.k} negatives per example, but "
                                  f"query {qid!r} has {n} in the data; lower num_negatives or use "
                                  f"hard_negatives='dataset+cache' to top up from the cache")

    def choose(self, queries: torch.Tensor, positives: torch.Tensor, exclude: list[list[int]], keys: list[str],
               given: torch.Tensor | None, step: int) -> torch.Tensor:
        """(B, k) cache rows: the negatives of the batch's queries at ``step``.

        Args:
            queries: (B, d) query embeddings (for the sampler and the false-negative limits).
            positives: (B,) the examples' positive rows.
            exclude: per query, rows never to choose (all its positives).
            keys: per query, the example id (keys noise and draws).
            given: (B, m) rows of the data's negatives per example (-1 = padding), or None.
        """
        b = len(keys)
        picked = [self._given(given[i] if given is not None else None, keys[i], step) for i in range(b)]
        if not self.uses_cache:
            return torch.as_tensor(picked, dtype=torch.long).reshape(b, self.k)
        need = [self.k - len(p) for p in picked]
        if max(need) == 0 and not self.sampler.ctx.cache.sharded:  # a sharded scan is a collective: every rank must take part
            return torch.as_tensor(picked, dtype=torch.long)
        blocked = [list(ex) + p for ex, p in zip(exclude, picked)]
        limits = None
        if self.false_negatives.active:
            pos_scores = None
            if self.false_negatives.needs_positive_scores:
                pos_scores = self.sampler.score_rows(queries, positives.reshape(-1, 1), step)[:, 0]
            limits = self.false_negatives.limits(pos_scores, batch_size=b)
        selection = self.sampler.sample(queries, blocked, keys, max(max(need), 1), step, limits=limits)
        if self.false_negatives.active:
            self.dropped.add("false_negatives_dropped",
                             float(selection.dropped.float().mean()) if selection.dropped.numel() else 0.0)
        rows = selection.indices.cpu().tolist()
        return torch.as_tensor([p + r[:n] for p, r, n in zip(picked, rows, need)], dtype=torch.long)

    def _given(self, row: torch.Tensor | None, key: str, step: int) -> list[int]:
        """Up to ``k`` of the example's given negatives (all of them in a per-step random order when more)."""
        if not self.uses_dataset or row is None:
            return []
        given = [int(r) for r in row.tolist() if r >= 0]
        if len(given) > self.k:
            order = torch.randperm(len(given), generator=query_generator(self.seed, step, f"given:{key}")).tolist()
            given = [given[j] for j in order[: self.k]]
        return given
