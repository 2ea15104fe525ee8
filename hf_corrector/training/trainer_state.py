"""The corrector trainer's own checkpoint state (beside Trainer's): cost counters, fallback and sampler state.

JSON in ``corrector_trainer_state.json`` and named tensors in ``corrector_trainer_tensors.safetensors``, each
written to a temporary file and renamed into place.

Example:
    >>> save_extra_state(folder, {"cost": {...}}, {"sampler.W": W})  # doctest: +SKIP
    >>> state, tensors = load_extra_state(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

EXTRA_STATE = "corrector_trainer_state.json"
EXTRA_TENSORS = "corrector_trainer_tensors.safetensors"


def save_extra_state(folder: Path, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write ``state`` (JSON-serialisable) and ``tensors`` into the checkpoint ``folder``."""
    folder = Path(folder)
    tmp = folder / f".{EXTRA_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, folder / EXTRA_STATE)
    if tensors:
        tmp = folder / (EXTRA_TENSORS + ".tmp")
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, folder / EXTRA_TENSORS)


def load_extra_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """What :func:`save_extra_state` wrote into ``folder`` (None when the folder has none)."""
    folder = Path(folder)
    if not (folder / EXTRA_STATE).exists():
        return None
    state = json.loads((folder / EXTRA_STATE).read_text())
    tensors = load_file(str(folder / EXTRA_TENSORS)) if (folder / EXTRA_TENSORS).exists() else {}
    return state, tensors
