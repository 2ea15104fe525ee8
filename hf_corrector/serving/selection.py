"""Which corpus rows to re-encode at deployment for a budget of ``round(budget * N)`` rows.

* ``random``: a uniform sample (seeded).
* ``retrieved``: the rows most often in the top-``k`` of a set of queries (e.g. the training queries encoded with
  the new query encoder) over the corrected corpus, ties and leftover budget filled at random. These are the rows a
  served query is likely to see near the top, so serving them fresh fixes the ranking where it counts.

Example:
    >>> import torch
    >>> rows = select_rows(100, 0.05, "random", seed=0)
    >>> len(rows), len(set(rows.tolist()))
    (5, 5)
"""

from __future__ import annotations

import logging

import torch

from ..errors import ConfigError
from ..evaluation.metrics import exact_search

logger = logging.getLogger(__name__)

SELECTIONS = ("random", "retrieved")


def budget_rows(n: int, budget: float) -> int:
    """Number of rows a budget (a fraction of the corpus in [0, 1]) re-encodes."""
    if not 0.0 <= float(budget) <= 1.0:
        raise ConfigError(f"reencode_budget is a fraction of the corpus in [0, 1], got {budget!r}")
    return min(n, int(round(float(budget) * n)))


def select_rows(n: int, budget: float, selection: str = "random", seed: int = 0, queries: torch.Tensor | None = None,
                corpus: torch.Tensor | None = None, k: int = 10) -> torch.Tensor:
    """Sorted rows to re-encode. ``retrieved`` needs ``queries`` (B, d) and the served ``corpus`` (N, d)."""
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    m = budget_rows(n, budget)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, generator=gen)  # random order, and the tie-breaker of `retrieved`
    if m == 0:
        return torch.zeros(0, dtype=torch.long)
    if selection == "random" or queries is None or corpus is None or queries.shape[0] == 0:
        if selection == "retrieved":
            logger.warning("selection='retrieved' without queries: re-encoding a random sample instead")
        return torch.sort(torch.argsort(noise)[:m]).values
    _, idx = exact_search(queries.float(), corpus.float(), min(k, n))
    counts = torch.bincount(idx.reshape(-1), minlength=n).float()
    order = torch.argsort(counts + 0.5 * noise, descending=True)  # noise < 1 only breaks ties
    return torch.sort(order[:m]).values
