"""Refuse to train when several processes were launched but training is not distributed.

``accelerate launch`` with a multi-process config (or ``torchrun``) starts N processes and sets ``WORLD_SIZE`` /
``LOCAL_RANK`` for them. If the training arguments then set up no process group (the usual case: a machine without
GPUs and ``use_cpu`` left ``False``, so accelerate picks ``DistributedType.NO``), every process trains on its own,
on all the data, and they overwrite each other's ``output_dir``, without any error. :func:`check_distributed_setup`
turns that into a :class:`~hf_corrector.errors.ConfigError` that names the fix.

Example:
    >>> from accelerate import PartialState
    >>> check_distributed_setup(PartialState())  # one process: nothing to check  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: environment variables through which launchers (torchrun / accelerate, MPI) tell a process the world size
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """How many processes the launcher says it started (1 when not launched by one).

    Example:
        >>> launched_world_size({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
        2
    """
    env = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARS:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _state_of(accelerator_or_state: Any) -> Any:
    """The accelerate ``PartialState``-like object behind an Accelerator, AcceleratorState, TrainingArguments..."""
    for attr in ("state", "distributed_state"):
        inner = getattr(accelerator_or_state, attr, None)
        if inner is not None and hasattr(inner, "num_processes"):
            return inner
    return accelerator_or_state


def check_distributed_setup(accelerator_or_state: Any = None, environ: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` when a launcher started several processes but training is not distributed.

    ``accelerator_or_state`` may be an ``accelerate.Accelerator``, an ``AcceleratorState`` / ``PartialState``,
    ``TrainingArguments`` (its ``distributed_state``), anything with ``num_processes``, or ``None`` (then only
    ``torch.distributed`` is consulted). Training counts as distributed when ``torch.distributed`` is initialised
    with the launched world size and the state reports that many processes.

    Example:
        >>> check_distributed_setup(trainer.accelerator)  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        hf_corrector.errors.ConfigError: 2 processes were launched (WORLD_SIZE=2) but training is not distributed ...
    """
    launched = launched_world_size(environ)
    if launched <= 1:
        return
    state = _state_of(accelerator_or_state) if accelerator_or_state is not None else None
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    group_size = torch.distributed.get_world_size() if initialised else 1
    state_size = int(getattr(state, "num_processes", group_size)) if state is not None else group_size
    kind = getattr(state, "distributed_type", None)
    if initialised and group_size == launched and state_size == launched:
        return
    found = (f"torch.distributed is {'initialised with ' + str(group_size) + ' process(es)' if initialised else 'not initialised'}"
             + (f", accelerate reports distributed_type={getattr(kind, 'value', kind)} with {state_size} process(es)"
                if state is not None else ""))
    raise ConfigError(
        f"{launched} processes were launched (WORLD_SIZE={launched}) but training is not distributed ({found}): "
        f"each process would train alone on all the data and overwrite the others' output_dir. "
        f"On a machine without GPUs pass `--use_cpu true` (TrainingArguments(use_cpu=True): the CPU processes then "
        f"form a gloo group); with GPUs make sure each process sees CUDA. Launch with `accelerate launch` and "
        f"a multi-process config (e.g. `--config_file recipes/accelerate/cpu_2proc.yaml`, or `--multi_gpu "
        f"--num_processes N`, i.e. distributed_type MULTI_GPU), or with torchrun. To train in one process, launch "
        f"with `python` or `--num_processes 1`."
    )


__all__ = ["check_distributed_setup", "launched_world_size"]
