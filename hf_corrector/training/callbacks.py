"""Periodic work of a corrector run, each a :class:`~transformers.TrainerCallback` with its own cadence in optimizer
steps (like TRL's ``SyncRefModelCallback``). Each holds the one object it maintains, never the trainer.

* :class:`CacheRefreshCallback`: re-embeds the corpus every ``cache_refresh_steps`` steps (ANCE-style).
* :class:`SamplerMaintenanceCallback`: the sampler's periodic work (Nyström refits, ANCE-Tele pool rebuilds).
* :class:`CorrectorFallbackCallback`: scores with uncorrected embeddings while the corrector makes them worse.

They run in this order at the end of every optimizer step (the trainer adds them in this order).

Example:
    >>> trainer.add_callback(CacheRefreshCallback(trainer.cache_manager, every=500))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

logger = logging.getLogger(__name__)


class CacheRefreshCallback(TrainerCallback):
    """Calls ``cache_manager.refresh(step)`` every ``every`` optimizer steps (0 = never).

    ``skip_final_step=True`` skips a refresh on the last step, where nothing trains on it any more.
    """

    def __init__(self, cache_manager: Any, every: int, skip_final_step: bool = False):
        self.cache_manager = cache_manager
        self.every = int(every)
        self.skip_final_step = skip_final_step

    def due(self, step: int, max_steps: int) -> bool:
        if not self.every or step <= 0 or step % self.every:
            return False
        return not (self.skip_final_step and step >= max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.due(state.global_step, state.max_steps):
            self.cache_manager.refresh(state.global_step)
        return control


class SamplerMaintenanceCallback(TrainerCallback):
    """Calls ``sampler.on_step_end(step)`` after every optimizer step (the sampler keeps its own cadence)."""

    def __init__(self, sampler: Any):
        self.sampler = sampler

    def on_step_end(self, args, state, control, **kwargs):
        self.sampler.on_step_end(state.global_step)
        return control


class CorrectorHealth:
    """Per-step staleness of the step's targets: mean cos(g', g) and cos(h(g'), g), summed over micro-batches."""

    def __init__(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # cos_stale, cos_corrected, count

    def record(self, cos_stale: float, cos_corrected: float) -> None:
        self.sums += torch.tensor([cos_stale, cos_corrected, 1.0], dtype=torch.float64)

    def take(self, accelerator: Any = None) -> tuple[float, float] | None:
        """The step's means, averaged over every process (the same numbers on every rank); resets."""
        sums, self.sums = self.sums, torch.zeros(3, dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        if sums[2] == 0:
            return None
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])


class CorrectorFallbackCallback(TrainerCallback):
    """Warns when the corrector makes the step's target embeddings worse than the stale ones (cos(h(g'), g) <
    cos(g', g)) for ``patience`` optimizer steps in a row (3 when ``patience=0``); with ``patience > 0`` it also sets
    ``transform.bypassed`` (scoring with uncorrected embeddings) until a step where the corrector is no worse.
    Decided from statistics reduced over all processes, so every rank decides the same.
    """

    def __init__(self, health: CorrectorHealth, transform: Any, patience: int = 0, warmup_steps: int = 0,
                 accelerator: Any = None):
        self.health = health
        self.transform = transform
        self.patience = int(patience)
        self.warmup_steps = int(warmup_steps)
        self.accelerator = accelerator
        self.bad_steps = 0

    @property
    def falling_back(self) -> bool:
        return bool(self.transform.bypassed)

    def on_step_end(self, args, state, control, **kwargs):
        stats = self.health.take(self.accelerator)
        step = state.global_step
        if stats is None or step < self.warmup_steps:
            return control
        cos_stale, cos_corrected = stats
        worse = cos_corrected < cos_stale
        self.bad_steps = self.bad_steps + 1 if worse else 0
        if worse and self.bad_steps >= (self.patience or 3):
            logger.warning("step %d: the corrector makes embeddings worse (cos(h(g'), g)=%.4f < cos(g', g)=%.4f) for "
                           "%d steps", step, cos_corrected, cos_stale, self.bad_steps)
            if self.patience and not self.transform.bypassed:
                logger.warning("falling back to uncorrected scores until the corrector recovers")
                self.transform.bypassed = True
        elif not worse and self.transform.bypassed:
            logger.info("step %d: corrector recovered; using corrected scores again", step)
            self.transform.bypassed = False
        return control

    def state_dict(self) -> dict[str, Any]:
        return {"bad_steps": self.bad_steps, "bypassed": bool(self.transform.bypassed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_steps = int(state.get("bad_steps", 0))
        self.transform.bypassed = bool(state.get("bypassed", False))


class RetrieverCallbackHandler(CallbackHandler):
    """Trainer's callback handler, except that callbacks get the retriever (``encode_*``, ``save_pretrained``,
    ``config``) as ``model`` instead of the trainer's internal wrapper, whatever Trainer assigns (it re-assigns
    ``model`` when training starts, possibly DDP-wrapped)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "model" and value is not None:
            value = getattr(getattr(value, "module", value), "retriever", value)
        super().__setattr__(name, value)
