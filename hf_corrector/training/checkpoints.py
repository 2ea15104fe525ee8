"""Verifiably complete checkpoints.

``Trainer`` writes ``checkpoint-N/`` in place, file by file, so a process killed while saving leaves a partial
folder that ``transformers.trainer_utils.get_last_checkpoint`` would happily pick. :class:`CorrectorTrainer` ends
every checkpoint save by writing :data:`CHECKPOINT_MARKER` (the list of the folder's files with their sizes; written
to a temporary file, fsynced and renamed into place), and resumes only from folders whose marker is present and
whose files still match it.

Example:
    >>> last_complete_checkpoint("out")  # doctest: +SKIP
    'out/checkpoint-200'
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..atomic_io import atomic_replace_dir, fsync_dir, fsync_file, write_text_atomic
from ..errors import CacheCorruptError

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "checkpoint_complete.json"
MARKER_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _listing(folder: Path) -> dict[str, int]:
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # temporary files
        if path.is_file() and rel != CHECKPOINT_MARKER and not hidden:
            files[rel] = path.stat().st_size
    return files


def remove_checkpoint_marker(folder: str | os.PathLike) -> None:
    """Invalidate a checkpoint before rewriting it in place (a crash mid-rewrite must not look complete)."""
    marker = Path(folder) / CHECKPOINT_MARKER
    if marker.exists():
        marker.unlink()
        fsync_dir(marker.parent)


def write_checkpoint_marker(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Fsync every file of ``folder``, then atomically write the marker listing them (relative path -> size)."""
    folder = Path(folder)
    files = _listing(folder)
    for rel in files:
        fsync_file(folder / rel)
    for sub in {(folder / rel).parent for rel in files}:
        fsync_dir(sub)
    marker = {"format_version": MARKER_VERSION, "global_step": step, "files": files}
    return write_text_atomic(folder / CHECKPOINT_MARKER, json.dumps(marker, indent=1))


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` when its marker is present and its files match."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    marker = folder / CHECKPOINT_MARKER
    if not marker.is_file():
        return f"no {CHECKPOINT_MARKER} (the save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{CHECKPOINT_MARKER} is unreadable ({err})"
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the marker says {size}"
    return None


def verify_checkpoint(folder: str | os.PathLike) -> Path:
    """Raise :class:`~hf_corrector.errors.CacheCorruptError` naming ``folder`` unless it is a complete checkpoint."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        path = Path(folder)
        if (path / "config.json").is_file() and not (path / "trainer_state.json").exists():
            problem = ("it holds a model (as save_model / save_pretrained write it), not a checkpoint (no "
                       "trainer_state.json, optimizer or schedule): to train on from it, start a new run with "
                       f"model={str(path)!r}, corrector={str(path / 'corrector')!r} and cache={str(path / 'stale_cache')!r}"
                       " (where present), without resume_from_checkpoint")
        raise CacheCorruptError(f"cannot resume from {folder}: it is not a complete checkpoint: {problem}")
    return Path(folder)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` with a valid marker; incomplete ones are logged and skipped
    (never deleted)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a finished save from ``tmp_dir`` to ``final_dir``.

    Atomic (readers see the old or the new folder) when ``final_dir`` does not exist or holds nothing that the new
    save does not also hold (e.g. an earlier save of the same model). Otherwise, e.g. ``final_dir`` is the output
    folder with the checkpoints in it, the entries are moved in one by one (each file atomically) and everything
    else in ``final_dir`` is left alone.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    new = {p.name for p in tmp_dir.iterdir()}
    if not final_dir.exists() or {p.name for p in final_dir.iterdir()} <= new:
        atomic_replace_dir(tmp_dir, final_dir)
        return
    for entry in sorted(tmp_dir.iterdir()):
        target = final_dir / entry.name
        if entry.is_dir():
            if target.exists() and not target.is_dir():
                target.unlink()
            atomic_replace_dir(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    fsync_dir(final_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def checkpoint_global_step(folder: str | os.PathLike) -> int | None:
    """The optimizer steps done when ``folder`` was saved (``trainer_state.json``), or ``None`` if unknown."""
    from transformers.trainer import TRAINER_STATE_NAME

    path = Path(folder) / TRAINER_STATE_NAME
    try:
        return int(json.loads(path.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def planned_max_steps(trainer: Any) -> int:
    """The optimizer steps the whole run takes (``max_steps``, or epochs times batches), as Trainer computes it."""
    if trainer.args.max_steps > 0:
        return int(trainer.args.max_steps)
    return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])


def finish_if_complete(trainer: Any, checkpoint: str | os.PathLike | None) -> Any | None:
    """End a resumed run that has nothing left to do, exactly where the uninterrupted run ended.

    ``Trainer`` checks for the end of training only after an optimizer step: resumed from a checkpoint written at
    ``max_steps`` (a run killed after its last checkpoint, e.g. during the final ``save_model``), its loop skips
    ``global_step % steps_per_epoch`` batches of the last epoch and trains one more step before it stops, so the
    weights, the corrector and the cache end one step past the uninterrupted run's (unless ``max_steps`` ends an
    epoch, where the epoch loop is empty).

    If ``checkpoint``'s ``global_step >= max_steps``: load its weights and ``TrainerState`` (the caller has restored
    the cache and the extra state), run the ``on_train_begin`` / ``on_train_end`` callbacks and the best-model
    reload like Trainer's zero-step path, and return the ``TrainOutput`` (``training_loss`` 0.0, as Trainer reports
    for a call that trained no step). Otherwise return ``None``: train as usual.
    """
    if not checkpoint:
        return None
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput, speed_metrics

    step = checkpoint_global_step(checkpoint)
    max_steps = planned_max_steps(trainer)
    if step is None or step < max_steps:
        return None
    start = time.time()
    logger.info("checkpoint %s is at global step %d >= max_steps %d: training is complete; restoring it without "
                "training further", checkpoint, step, max_steps)
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    args = trainer.args
    trainer.control = trainer.callback_handler.on_train_begin(args, trainer.state, trainer.control)
    metrics = speed_metrics("train", start, num_samples=0, num_steps=0)
    metrics["total_flos"] = trainer.state.total_flos
    trainer.log(metrics)
    if args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
        trainer._load_best_model()
    trainer.control = trainer.callback_handler.on_train_end(args, trainer.state, trainer.control)
    return TrainOutput(trainer.state.global_step, 0.0, metrics)


__all__ = ["CHECKPOINT_MARKER", "checkpoint_global_step", "checkpoint_problem", "finish_if_complete",
           "last_complete_checkpoint", "planned_max_steps", "publish_dir", "remove_checkpoint_marker",
           "verify_checkpoint", "write_checkpoint_marker"]
