"""The cache manager: the one place that encodes targets for the cache, counts what that costs, and keeps the cache
in step with training (full refreshes, per-step write-back), telling the samplers what changed.

Samplers and score transforms read the cache through it (``rows``, ``read_chunk``, ``texts_of``) and subscribe to
its events with :meth:`CacheManager.add_listener`; an object may define either of:

* ``on_cache_refreshed(step)``: the whole cache was re-encoded at ``step``;
* ``on_targets(rows)``: the step's training targets (every process's, gathered once per step), after write-back.

Re-embedding cost is counted in target-encoder forward passes over corpus documents, the same number on every
process (a corpus pass sharded over W processes counts N, not N / W or N x W).

``sharding="sharded"`` holds only this process's ~N/W contiguous rows (:mod:`hf_corrector.cache.sharding`):
``len(manager)`` is still N and rows keep their global numbers; :meth:`read_chunk` serves the local rows
(:attr:`local_rows`), :meth:`rows` is then a collective lookup (every process must call it), refreshes encode and
write-backs write only the local rows, and :meth:`gathered` reassembles the whole cache (for checkpoints and
evaluation).

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
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..utils.arrow_column import ArrowColumn
from .sharded_store import finish_save, staging_dir, write_shard
from .sharding import SHARDING_MODES, Collectives, row_range
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
        cache: the stale cache (rows in corpus order), or a function returning it, called at the cache's first use
            (so that a trainer resuming from a checkpoint never encodes a cache it would throw away; setting
            :attr:`cache` before that replaces the function).
        texts: the corpus texts, row by row.
        encode_targets: ``encode_targets(texts, show_progress_bar=..., desc=...) -> (n, d)`` with the *current*
            target encoder (a closure over the trainer's model, so it follows PEFT wrapping and checkpoint loads).
        accelerator: an ``accelerate.Accelerator`` for multi-process runs (None = one process).
        write_back: write each step's fresh target embeddings into the cache.
        sharding: ``"replicated"`` (every process holds the whole cache) or ``"sharded"`` (each holds ~N/W rows).
    """

    def __init__(self, cache: StaleCache | Callable[[], StaleCache], texts: Sequence[str], encode_targets: EncodeFn,
                 accelerator: Any = None, write_back: bool = False, sharding: str = "replicated"):
        if sharding not in SHARDING_MODES:
            raise ConfigError(f"cache_sharding must be one of {SHARDING_MODES}, got {sharding!r}")
        self.texts = texts if isinstance(texts, ArrowColumn) else list(texts)  # a dataset column stays in place
        self.encode_targets = encode_targets
        self.accelerator = accelerator
        self.write_back = write_back
        self.collectives = Collectives(accelerator)
        #: the one definition of "sharded": rows split over more than one process (``sharding="sharded"`` in a
        #: single process holds every row and behaves as replicated)
        self.sharded = sharding == "sharded" and self.collectives.world > 1
        self.num_rows = len(self.texts)
        self.local_rows = (row_range(self.num_rows, self.collectives.world, self.collectives.rank) if self.sharded
                           else (0, self.num_rows))
        self._placement: tuple[torch.device, bool] | None = None  # cache_device (:meth:`place`)
        self._cache: StaleCache | None = None
        self._first_cache = cache if callable(cache) and not hasattr(cache, "matrix") else None
        if self._first_cache is None:
            self.cache = cache
        self.cost = ReembeddingCost()
        self._listeners: list[Any] = []

    @property
    def cache(self) -> StaleCache:
        """The cache this process holds: all rows, or (sharded) rows :attr:`local_rows` only."""
        if self._cache is None and self._first_cache is not None:
            first, self._first_cache = self._first_cache, None
            self.cache = first()
        return self._cache

    @property
    def ready(self) -> bool:
        """Whether the cache exists yet (False until the first use of a cache given as a function)."""
        return self._cache is not None

    @cache.setter
    def cache(self, cache: StaleCache) -> None:
        """Set the whole cache (sliced to this process's rows when sharded) or this process's shard."""
        lo, hi = self.local_rows
        offset = getattr(cache, "row_offset", 0)
        if len(cache) == self.num_rows and offset == 0:
            cache = cache.slice_rows(lo, hi) if self.sharded else cache
        elif not (offset == lo and len(cache) == hi - lo):
            raise ConfigError(f"a cache of {len(cache)} rows (from row {offset}) is neither the whole cache of "
                              f"{self.num_rows} rows nor this process's rows {lo}:{hi}")
        self._cache, self._first_cache = cache, None
        self._mirror = None  # the device copy (placement.py) is rebuilt from the new rows when next read

    # -- placement (cache_device) ---------------------------------------------------------------------------------------
    def place(self, device: torch.device, pin: bool = False) -> None:
        """Keep this process's rows on ``device`` (or ``pin`` them on the host) for scanning: :meth:`read_chunk`
        then serves views of that copy, kept in step by write-backs and refreshes. CPU without pinning: the
        cache's own memory, as before (no copy)."""
        self._placement = (torch.device(device), bool(pin))
        self._mirror = None

    @property
    def device(self) -> torch.device:
        """Where :meth:`read_chunk` rows live."""
        return self._placement[0] if self._placement is not None else torch.device("cpu")

    def _scan_matrix(self) -> torch.Tensor:
        placement = self._placement
        if placement is None or (placement[0].type == "cpu" and not placement[1]):
            return self.cache.matrix()
        if self._mirror is None:
            from .placement import DeviceRows

            self._mirror = DeviceRows(self.cache.matrix(), *placement)
        return self._mirror.matrix

    # -- reading ------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Rows of the whole cache (also when this process holds only its shard)."""
        return self.num_rows

    @property
    def dim(self) -> int:
        return self.cache.dim

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` (global row numbers) of the cache. Sharded: a collective (each process fills
        the rows it owns, then a sum over processes), so every process must call it, each with its own index."""
        if not self.sharded:
            return self.cache.rows(index)
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        everyone, counts = self.collectives.all_gather_rows(index)
        lo, hi = self.local_rows
        mine = (everyone >= lo) & (everyone < hi)
        out = torch.zeros(everyone.shape[0], self.dim)
        out[mine] = self.cache.rows(everyone[mine] - lo)
        out = self.collectives.sum(out)
        start = sum(counts[: self.collectives.rank])
        return out[start : start + index.shape[0]]

    def read_chunk(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (global numbers, inside :attr:`local_rows`) in the storage dtype (a view)."""
        lo, hi = self.local_rows
        if not lo <= start <= stop <= hi:
            raise ConfigError(f"rows {start}:{stop} are not held by this process (it holds rows {lo}:{hi} of a "
                              f"cache sharded across processes)")
        return self._scan_matrix()[start - lo : stop - lo]

    def local(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` (global numbers, inside :attr:`local_rows`) of this process's rows: no collective."""
        index = torch.as_tensor(index, dtype=torch.long)
        lo, hi = self.local_rows
        if index.numel() and (int(index.min()) < lo or int(index.max()) >= hi):
            raise ConfigError(f"rows outside {lo}:{hi} are not held by this process (a cache sharded across processes)")
        return self.cache.rows(index - lo)

    def local_matrix(self) -> torch.Tensor:
        """This process's rows (all rows unless sharded) as one matrix in the storage dtype (a view)."""
        return self.cache.matrix()

    def reader(self) -> CacheRows:
        """A :class:`CacheRows` view of this manager: what samplers may read, nothing else."""
        return CacheRows(self)

    def gathered(self, main_only: bool = False) -> StaleCache | None:
        """The whole cache: the cache itself when replicated; when sharded, the shards gathered (a collective:
        every process calls it). ``main_only``: only the main process gets it (others get None)."""
        if not self.sharded:
            return self.cache
        coll, part = self.collectives, self.cache
        emb, _ = coll.all_gather_rows(part.matrix().float())
        steps, _ = coll.all_gather_rows(part.steps)
        ids = coll.all_gather_object(part.doc_ids)
        if main_only and coll.rank != 0:
            return None
        full = StaleCache([d for chunk in ids for d in chunk], emb, steps=steps.numpy(), provenance=part.provenance,
                          dtype=part.dtype)
        return full

    def texts_of(self, rows: Sequence[int] | torch.Tensor) -> list[str]:
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
        return self.texts.take(rows) if isinstance(self.texts, ArrowColumn) else [self.texts[i] for i in rows]

    def prepare_save(self, final_dir: str | os.PathLike) -> None:
        """Before a save into ``final_dir`` (on every process). Sharded: each process writes its own shard into a
        staging folder next to ``final_dir`` (:mod:`~hf_corrector.cache.sharded_store`), then all wait, so the main
        process can install them (:meth:`save_into`); no process ever holds more than its rows."""
        self._staging = None
        if self.sharded:
            self._staging = staging_dir(final_dir)
            write_shard(self.cache, self._staging, self.collectives.rank, self.collectives.world)
            self.accelerator.wait_for_everyone()

    def save_into(self, folder: str | os.PathLike) -> None:
        """Main process: write the whole cache into ``folder`` (replicated: the cache itself; sharded: the shards
        :meth:`prepare_save` staged, moved into place, and the manifest written last)."""
        staging, self._staging = getattr(self, "_staging", None), None
        if not self.sharded:
            self.cache.save(folder)
            return
        if staging is None:
            raise ConfigError("a sharded cache is saved by every process: call trainer.save_model() / "
                              "trainer.save_cache(path) on every process (CacheManager.prepare_save first)")
        finish_save(staging, folder, self.collectives.world)

    def save(self, folder: str | os.PathLike) -> None:
        """Save the whole cache into ``folder`` (a collective when sharded: every process calls it)."""
        self.prepare_save(folder)
        if self.collectives.rank == 0:
            self.save_into(folder)
        if self.num_processes > 1:
            self.accelerator.wait_for_everyone()

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
        """Re-embed the whole corpus into the cache (ANCE-style refresh) and tell the listeners. Sharded: each
        process encodes and writes only its own rows."""
        if self.sharded:
            lo, hi = self.local_rows
            emb = self.encode_targets(self.texts[lo:hi], show_progress_bar=self.collectives.rank == 0,
                                      desc="refreshing the cache (this process's rows)")
            self.cache.replace_all(emb, step)
        else:
            self.cache.replace_all(self.encode_corpus("refreshing the cache"), step)
        self._mirror = None  # rebuilt from the refreshed rows
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
            lo, hi = self.local_rows
            written, fresh = last_of_repeats(targets, fresh)  # two processes may encode one row: write it once
            if self.sharded:  # only the rows this process owns
                mine = (written >= lo) & (written < hi)
                targets_mine, fresh_mine = written[mine] - lo, fresh.float().cpu()[mine]
            else:
                targets_mine, fresh_mine = written, fresh.float().cpu()
            self.cache.update(targets_mine, fresh_mine, step)
            if self._mirror is not None:
                self._mirror.update(targets_mine, fresh_mine)
        self._notify("on_targets", targets)


def last_of_repeats(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` and their ``values`` with each repeated row kept once, at its last occurrence (the highest rank
    after a gather), so a write-back never names a row twice (:meth:`StaleCache.update` refuses that). Rows without
    repeats are returned as they are (the same tensors)."""
    if rows.numel() < 2 or torch.unique(rows).numel() == rows.numel():
        return rows, values
    unique, inverse = torch.unique(rows, return_inverse=True)
    positions = torch.arange(rows.numel(), device=inverse.device)
    last = torch.full((unique.numel(),), -1, dtype=torch.long, device=inverse.device).scatter_reduce_(
        0, inverse, positions, reduce="amax")
    last = last.sort().values  # the gathered order of the rows kept
    return rows[last], values[last.to(values.device)]


class CacheRows:
    """The :class:`~hf_corrector.negatives.context.CacheReader` view of a :class:`CacheManager` handed to samplers:
    row reading, a few facts, the collectives, counted encoding and events; not the manager's internals.

    Example:
        >>> reader = CacheRows(manager)  # doctest: +SKIP
        >>> reader.rows(torch.tensor([0, 5])).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """

    def __init__(self, manager: CacheManager):
        self._manager = manager

    def __len__(self) -> int:
        return self._manager.num_rows

    def __repr__(self) -> str:
        return f"CacheRows(num_rows={self.num_rows}, dim={self.dim}, sharded={self.sharded})"

    @property
    def num_rows(self) -> int:
        return self._manager.num_rows

    @property
    def dim(self) -> int:
        return self._manager.dim

    @property
    def sharded(self) -> bool:
        return self._manager.sharded

    @property
    def local_rows(self) -> tuple[int, int]:
        return self._manager.local_rows

    @property
    def write_back(self) -> bool:
        return self._manager.write_back

    @property
    def collectives(self) -> Collectives:
        return self._manager.collectives

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self._manager.rows(index)

    def read_chunk(self, start: int, stop: int) -> torch.Tensor:
        return self._manager.read_chunk(start, stop)

    def local(self, index: torch.Tensor) -> torch.Tensor:
        return self._manager.local(index)

    def local_matrix(self) -> torch.Tensor:
        return self._manager.local_matrix()

    @property
    def device(self) -> torch.device:
        """Where :meth:`read_chunk` rows live (``cache_device``)."""
        return self._manager.device

    def encode_rows(self, rows: torch.Tensor | Sequence[int], count_as: str, desc: str = "encoding targets"
                    ) -> torch.Tensor:
        return self._manager.encode_rows(rows, count_as, desc)

    def add_listener(self, listener: Any) -> None:
        self._manager.add_listener(listener)
