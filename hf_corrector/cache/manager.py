"""The cache manager: the one place that encodes targets for the cache, counts what that costs, and keeps the cache
in step with training (full refreshes, per-step write-back), telling the samplers what changed.

Samplers and score transforms read the cache through it (``rows``, ``read_chunk``, ``texts_of``) and subscribe to
its events with :meth:`CacheManager.add_listener`; an object may define either of:

* ``on_cache_refreshed(step)``: the whole cache was re-encoded at ``step``;
* ``on_targets(rows)``: the step's training targets (every process's, gathered once per step), after write-back.

Re-embedding cost is counted in target-encoder forward passes over corpus documents, the same number on every
process (a corpus pass sharded over W processes counts N, not N / W or N x W).

Example:
    >>> manager = CacheManager(cache, corpus_texts, encode_targets=retriever.encode_targets)  # doctest: +SKIP
    >>> manager.refresh(step=100)  # doctest: +SKIP
    >>> manager.cost.refresh_encodings  # doctest: +SKIP
    5183
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .stale_cache import StaleCache

logger = logging.getLogger(__name__)

EncodeFn = Callable[..., torch.Tensor]


@dataclasses.dataclass
class ReembeddingCost:
    """Target-encoder forward passes spent on corpus documents, by purpose."""

    initial_cache_encodings: int = 0
    step_target_encodings: int = 0
    refresh_encodings: int = 0
    num_refreshes: int = 0
    landmark_encodings: int = 0

    @property
    def total(self) -> int:
        """Every target encoding: initial cache + per-step targets + refreshes + landmarks."""
        return (self.initial_cache_encodings + self.step_target_encodings + self.refresh_encodings
                + self.landmark_encodings)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, int(value))


class CacheManager:
    """Owns a :class:`StaleCache` during training (see the module docstring).

    Args:
        cache: the stale cache (rows in corpus order).
        texts: the corpus texts, row by row.
        encode_targets: ``encode_targets(texts, show_progress_bar=..., desc=...) -> (n, d)`` with the *current*
            target encoder (a closure over the trainer's model, so it follows PEFT wrapping and checkpoint loads).
        accelerator: an ``accelerate.Accelerator`` for multi-process runs (None = one process).
        write_back: write each step's fresh target embeddings into the cache.
    """

    def __init__(self, cache: StaleCache, texts: Sequence[str], encode_targets: EncodeFn, accelerator: Any = None,
                 write_back: bool = False):
        self.cache = cache
        self.texts = list(texts)
        self.encode_targets = encode_targets
        self.accelerator = accelerator
        self.write_back = write_back
        self.cost = ReembeddingCost()
        self._listeners: list[Any] = []

    # -- reading ------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cache)

    @property
    def dim(self) -> int:
        return self.cache.dim

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` of the cache."""
        return self.cache.rows(index)

    def read_chunk(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` in the storage dtype (a view where possible)."""
        return self.cache.matrix()[start:stop]

    def texts_of(self, rows: Sequence[int] | torch.Tensor) -> list[str]:
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
        return [self.texts[i] for i in rows]

    # -- events ---------------------------------------------------------------------------------------------------------
    def add_listener(self, listener: Any) -> None:
        """Subscribe an object with ``on_cache_refreshed(step)`` and/or ``on_targets(rows)``."""
        self._listeners.append(listener)

    def _notify(self, event: str, *args: Any) -> None:
        for listener in self._listeners:
            handler = getattr(listener, event, None)
            if handler is not None:
                handler(*args)

    # -- encoding -------------------------------------------------------------------------------------------------------
    @property
    def num_processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    def _encode_sharded(self, rows: list[int], desc: str, show_progress_bar: bool) -> torch.Tensor:
        """Encode ``rows`` split round-robin over the processes, gathered in ``rows`` order on every process."""
        world = self.num_processes
        if world == 1:
            return self.encode_targets(self.texts_of(rows), show_progress_bar=show_progress_bar, desc=desc)
        rank = self.accelerator.process_index
        mine = rows[rank::world]
        emb = self.encode_targets(self.texts_of(mine), show_progress_bar=show_progress_bar and rank == 0, desc=desc)
        per = math.ceil(len(rows) / world)
        padded = torch.zeros(per, emb.shape[1], device=self.accelerator.device)
        padded[: emb.shape[0]] = emb.to(padded.device)
        gathered = self.accelerator.gather(padded).cpu().reshape(world, per, -1)
        full = torch.empty(len(rows), emb.shape[1])
        for r in range(world):
            n_r = len(rows[r::world])
            full[r::world] = gathered[r, :n_r]
        return full

    def encode_corpus(self, desc: str = "encoding the corpus", count_as: str | None = None) -> torch.Tensor:
        """The whole corpus encoded now (sharded over processes). ``count_as`` names the cost counter it adds to
        (``None``: evaluation, not counted)."""
        emb = self._encode_sharded(list(range(len(self.texts))), desc, show_progress_bar=True)
        if count_as is not None:
            setattr(self.cost, count_as, getattr(self.cost, count_as) + len(self.texts))
        return emb

    def encode_rows(self, rows: torch.Tensor | Sequence[int], count_as: str, desc: str = "encoding targets") -> torch.Tensor:
        """Fresh embeddings of some corpus rows (e.g. Nyström landmarks), counted under ``count_as``."""
        rows = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        emb = self._encode_sharded(rows, desc, show_progress_bar=False)
        setattr(self.cost, count_as, getattr(self.cost, count_as) + len(rows))
        return emb

    # -- keeping the cache in step --------------------------------------------------------------------------------------
    def refresh(self, step: int) -> None:
        """Re-embed the whole corpus into the cache (ANCE-style refresh) and tell the listeners."""
        self.cache.replace_all(self.encode_corpus("refreshing the cache"), step)
        self.cost.refresh_encodings += len(self.texts)
        self.cost.num_refreshes += 1
        self._notify("on_cache_refreshed", step)

    def record_step(self, targets: torch.Tensor, fresh: torch.Tensor, step: int) -> None:
        """After a step encoded ``targets`` (rows) to ``fresh``: count them, write them back (if enabled) and tell
        the listeners. Every process's rows are gathered once, so all processes hold the same cache and counts."""
        targets = targets.cpu()
        if self.num_processes > 1:
            acc = self.accelerator
            rows = acc.pad_across_processes(targets.to(acc.device), dim=0, pad_index=-1)
            rows = acc.gather(rows).cpu()
            keep = rows >= 0
            if self.write_back:
                emb = acc.gather(acc.pad_across_processes(fresh.float(), dim=0)).cpu()
                fresh = emb[keep]
            targets = rows[keep]
        self.cost.step_target_encodings += int(targets.numel())
        if self.write_back:
            self.cache.update(targets, fresh.float().cpu(), step)
        self._notify("on_targets", targets)
