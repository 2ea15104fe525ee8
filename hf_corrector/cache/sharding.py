"""A stale cache sharded by rows across processes (Atlas-style): each of W processes owns ~N/W contiguous rows.

``cache_sharding="sharded"`` (a training argument) makes the :class:`~hf_corrector.cache.manager.CacheManager` hold
only its process's rows (a zero-copy slice of a memory-mapped saved cache, or a copy of a built one). Per step:

* negative selection (:func:`~hf_corrector.negatives.topk.select_negatives_sharded`): the batch's query embeddings
  of every process are all-gathered, each process scores its own rows (corrected) and keeps its local top-k (or
  Gumbel-top-k: noise keyed by (seed, step, example, global row), so it does not depend on the sharding), and the
  (score, global row) pairs are gathered and merged: every process gets the same choice as one process over the
  whole cache;
* stale rows of arbitrary rows (the step's targets, landmarks) are looked up collectively (:meth:`rows`);
* write-back and refreshes touch only the owning process's rows.

A checkpoint gathers the shards into one :class:`~hf_corrector.cache.stale_cache.StaleCache` on the main process, so
a saved cache loads with any number of processes (resume included).

Example:
    >>> row_range(10, world=3, rank=1)
    (3, 6)
"""

from __future__ import annotations

from typing import Any

import torch

SHARDING_MODES = ("replicated", "sharded")


def row_range(num_rows: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` that process ``rank`` of ``world`` owns (sizes differ by at most 1)."""
    return num_rows * rank // world, num_rows * (rank + 1) // world


class Collectives:
    """The few collective operations the sharded cache needs, over an ``accelerate.Accelerator`` (or one process).

    Tensors travel through ``accelerator.gather`` (padded to equal shapes), Python objects through
    ``gather_object``. Every process must call each method in the same order.
    """

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """One tensor per process (all of the same shape), on the caller's device of ``tensor``."""
        if self.world == 1:
            return [tensor]
        acc = self.accelerator
        gathered = acc.gather(tensor.contiguous().to(acc.device)[None]).to(tensor.device)
        return list(gathered.unbind(0))

    def all_gather_rows(self, tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Concatenate every process's (n_r, ...) tensor along dim 0 (n_r may differ); returns it and the n_r."""
        if self.world == 1:
            return tensor, [tensor.shape[0]]
        counts = [int(c) for c in self.all_gather(torch.tensor([tensor.shape[0]], dtype=torch.long))]
        width = max(counts)
        pad = torch.zeros((width - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        parts = self.all_gather(torch.cat([tensor, pad]))
        return torch.cat([p[:c] for p, c in zip(parts, counts)]), counts

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.accelerator.device), reduction="sum").to(tensor.device)
