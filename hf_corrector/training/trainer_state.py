"""What a corrector run saves besides Trainer's own files.

* :func:`save_model_files` / :func:`load_model_weights`: the retriever (merged and as PEFT adapters when LoRA is
  on), the corrector in ``corrector/``, the arguments and the re-embedding cost;
* :func:`save_extra_state` / :func:`load_extra_state`: the trainer's checkpoint state (cost counters, fallback and
  sampler state): JSON in ``corrector_trainer_state.json`` and named tensors in
  ``corrector_trainer_tensors.safetensors``, each written to a temporary file and renamed into place.

Example:
    >>> save_extra_state(folder, {"cost": {...}}, {"sampler.W": W})  # doctest: +SKIP
    >>> state, tensors = load_extra_state(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic_io import write_text_atomic
from ..errors import CacheMismatchError
from ..utils.hub_ids import public_model_id
from .checkpoints import publish_dir
from .peft_utils import load_peft_retriever, save_peft_retriever

EXTRA_STATE = "corrector_trainer_state.json"
EXTRA_TENSORS = "corrector_trainer_tensors.safetensors"


def save_extra_state(folder: Path, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write ``state`` (JSON-serialisable) and ``tensors`` into the checkpoint ``folder``."""
    folder = Path(folder)
    write_text_atomic(folder / EXTRA_STATE, json.dumps(state, indent=2))
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


def save_models(output_dir: str | os.PathLike, retriever: Any, corrector: Any, uses_peft: bool) -> None:
    """The retriever (merged plus adapters with PEFT; ``RetrieverModel.from_pretrained``-loadable) at the root and
    the corrector in ``corrector/``."""
    os.makedirs(output_dir, exist_ok=True)
    if uses_peft:
        save_peft_retriever(retriever, output_dir)
    else:
        retriever.save_pretrained(output_dir)
    if corrector is not None:
        corrector.config.retriever_name_or_path = public_model_id(retriever.config.base_model_name_or_path)
        corrector.save_pretrained(os.path.join(output_dir, "corrector"))


def save_model_files(output_dir: str, retriever: Any, corrector: Any, uses_peft: bool, args_json: str,
                     cost: dict[str, int]) -> None:
    """The published model: retriever (``from_pretrained``-loadable), ``corrector/``, arguments and cost (JSON)."""
    save_models(output_dir, retriever, corrector, uses_peft)
    Path(output_dir, "training_args.json").write_text(args_json)
    Path(output_dir, "reembedding_cost.json").write_text(json.dumps(cost, indent=2))


def load_model_weights(folder: Path, retriever: Any, corrector: Any, uses_peft: bool) -> None:
    """Load a checkpoint's retriever (or its PEFT adapters) and corrector weights in place."""
    if uses_peft:
        load_peft_retriever(retriever, folder)
    else:
        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = retriever.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise CacheMismatchError(f"{folder}: retriever weights do not match (missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]})")
    if corrector is not None:
        check_checkpoint_corrector(folder, corrector)
        corrector.load_state_dict(load_file(str(folder / "corrector" / "model.safetensors")))


CORRECTOR_SHAPE = ("architecture", "embedding_dim", "hidden_dim", "num_layers")


def check_checkpoint_corrector(folder: Path, corrector: Any) -> None:
    """Refuse to resume from ``folder`` with a corrector of another shape than the checkpoint's (torch's "Error(s)
    in loading state_dict" otherwise, naming neither), or with one where the checkpoint has none."""
    file = folder / "corrector" / "config.json"
    if not file.is_file():
        if corrector is not None and (folder / "model.safetensors").is_file():
            raise CacheMismatchError(f"{folder}: the checkpoint has no corrector/, this run has a corrector "
                                     f"(correction={corrector.config.architecture!r}); resume with the correction the "
                                     f"checkpoint was trained with, or start a new output_dir")
        return
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the weights load reports the damage
    if corrector is None:
        raise CacheMismatchError(f"{folder}: the checkpoint holds a {saved.get('architecture')!r} corrector, this run "
                                 f"has none; resume with the correction the checkpoint was trained with, or start a "
                                 f"new output_dir")
    mine = {key: getattr(corrector.config, key, None) for key in CORRECTOR_SHAPE}
    theirs = {key: saved.get(key) for key in CORRECTOR_SHAPE}
    if mine != theirs:
        def shape(c: dict) -> str:
            return (f"{c['architecture']!r} (embedding_dim {c['embedding_dim']}, hidden_dim {c['hidden_dim']}, "
                    f"num_layers {c['num_layers']})")
        raise CacheMismatchError(f"{folder / 'corrector'}: the checkpoint's corrector is {shape(theirs)}, this run's "
                                 f"is {shape(mine)}; resume with the arguments the checkpoint was trained with "
                                 f"(correction=, corrector_hidden_dim=, ...) or start a new output_dir")


def publish_model(output_dir: Path, write: Callable[[str], None]) -> None:
    """Run ``write(folder)`` into a temporary sibling of ``output_dir`` and move the result into place (atomically
    unless ``output_dir`` holds other things, such as checkpoints: see :func:`~.checkpoints.publish_dir`)."""
    final = Path(output_dir).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(str(tmp))
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
