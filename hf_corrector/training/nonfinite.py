"""What a step does with NaN or inf: stop naming the step, the tensor and the last good checkpoint, or skip it.

Example:
    >>> guard_step_tensor(torch.tensor([1.0, float("nan")]), "loss", step=3, action="raise", output_dir="out")  # doctest: +SKIP
    NonFiniteError: non-finite loss at step 4 (global_step 3); no complete checkpoint in out yet
"""

from __future__ import annotations

import logging

import torch

from ..errors import NonFiniteError
from .checkpoints import last_complete_checkpoint

logger = logging.getLogger(__name__)


class SkipStep(Exception):
    """Abandon the current micro-batch (``nonfinite_action="skip"``); raised before backward."""


def guard_step_tensor(tensor: torch.Tensor, name: str, step: int, action: str, output_dir: str,
                 look_for_checkpoint: bool = True) -> None:
    """Raise :class:`NonFiniteError` (``action="raise"``) or :class:`SkipStep` (``"skip"``) when ``tensor`` has a NaN
    or inf. The error names the tensor, the step and the last complete checkpoint to resume from."""
    if torch.isfinite(tensor.detach()).all():
        return
    message = f"non-finite {name} at step {step + 1} (global_step {step})"
    if action == "skip":
        logger.warning("%s (skipping the step)", message)
        raise SkipStep()
    last = last_complete_checkpoint(output_dir) if look_for_checkpoint else None
    raise NonFiniteError(f"{message}; " + (f"the last good checkpoint is {last}" if last else
                                            f"no complete checkpoint in {output_dir} yet"))
