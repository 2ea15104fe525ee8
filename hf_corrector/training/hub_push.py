"""The trainer's Hub side: our cards in place of ``Trainer.create_model_card`` and checkpoint pushes deferred until
the checkpoint is complete (mixed into the trainer like ``transformers``' ``PushToHubMixin``).

:func:`push_checkpoint` replaces ``Trainer._push_from_checkpoint`` (``hub_strategy`` ``every_save`` /
``checkpoint`` / ``all_checkpoints``): it pushes the whole saved model (retriever, ``corrector/``, tokenizer, cards)
and never the pickled ``training_args.bin``, which would carry ``hub_token`` to the Hub. It is not Trainer's own
because Trainer pushes from inside ``_save_checkpoint``, before our cache and the completion marker are written, and
its upload includes ``training_args.bin``.

Example:
    >>> trainer.push_to_hub()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..hub.card_data import CardData
from ..utils.hub_ids import known_secrets, redact
from .model_card import write_model_cards

if TYPE_CHECKING:
    from .trainer import CorrectorTrainer

logger = logging.getLogger(__name__)

# Files of a checkpoint folder that are training state, not the published model.
CHECKPOINT_ONLY = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                   "corrector_trainer_state.json", "corrector_trainer_tensors.safetensors", "stale_cache",
                   "checkpoint_complete.json"}
NEVER_PUSH = ["training_args.bin", "**/training_args.bin"]


def push_checkpoint(trainer: CorrectorTrainer, checkpoint_folder: str | os.PathLike) -> None:
    """``Trainer._push_from_checkpoint`` for a CorrectorTrainer (called once the checkpoint is complete).

    Copies the saved model (everything but the training state) from the checkpoint into ``output_dir``, writes the
    cards, and uploads ``output_dir`` in the background; with ``hub_strategy`` ``checkpoint`` or
    ``all_checkpoints`` the checkpoint folder (including its stale cache, so training can resume from the Hub) is
    uploaded too. ``training_args.bin`` is never written nor uploaded.
    """
    from transformers.trainer_utils import HubStrategy, SaveStrategy
    from transformers.utils.hub import PushInProgress, hf_api

    args = trainer.args
    if not trainer.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
        return
    if trainer.hub_model_id is None:
        return
    if not args.hub_always_push and trainer.push_in_progress is not None and not trainer.push_in_progress.is_done():
        return
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    checkpoint_folder = Path(checkpoint_folder)
    output_dir = Path(args.output_dir)
    for entry in checkpoint_folder.iterdir():
        if entry.name in CHECKPOINT_ONLY or entry.name.startswith(("rng_state", ".")):
            continue
        target = output_dir / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)
    try:
        write_model_cards(trainer, output_dir)
    except Exception as err:  # noqa: BLE001 - a card must not stop the push
        logger.warning("could not write the model cards (%s)", redact(str(err), known_secrets(args)))
    if args.save_strategy == SaveStrategy.STEPS:
        message = f"Training in progress, step {trainer.state.global_step}"
    else:
        message = f"Training in progress, epoch {int(trainer.state.epoch or 0)}"
    jobs = [hf_api().upload_folder(repo_id=trainer.hub_model_id, folder_path=str(output_dir), commit_message=message,
                                   token=args.hub_token, run_as_future=True, revision=args.hub_revision,
                                   ignore_patterns=["_*", "checkpoint-*", *NEVER_PUSH])]
    if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        path_in_repo = "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else checkpoint_folder.name
        jobs.append(hf_api().upload_folder(repo_id=trainer.hub_model_id, folder_path=str(checkpoint_folder),
                                           path_in_repo=path_in_repo, commit_message=message + ", checkpoint",
                                           token=args.hub_token, run_as_future=True, revision=args.hub_revision,
                                           ignore_patterns=NEVER_PUSH))
    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress(jobs)
    else:
        trainer.push_in_progress.jobs.extend(jobs)


class CorrectorHubMixin:
    """Hub methods of the corrector trainer (needs ``model_card_callback``, ``args`` and Trainer's Hub state)."""

    @property
    def model_card_data(self) -> CardData:
        """The :class:`~hf_corrector.hub.CardData` of the cards (set ``license``, ``cache_repo_id``... on it)."""
        return self.model_card_callback.card_data

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Our retriever card in ``output_dir/README.md`` and the corrector card in ``output_dir/corrector/README.md``."""
        if self.is_world_process_zero():
            write_model_cards(self, self.args.output_dir, language=language, license=license, tags=tags,
                              model_name=model_name, finetuned_from=finetuned_from, dataset=dataset)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Deferred to the end of ``_save_checkpoint`` (the cache and marker are written after Trainer calls this);
        see :func:`push_checkpoint`."""
        self._pending_hub_push = checkpoint_folder

    def _push_pending_checkpoint(self) -> None:
        folder, self._pending_hub_push = getattr(self, "_pending_hub_push", None), None
        if folder is not None and os.path.isdir(folder):
            push_checkpoint(self, folder)


__all__ = ["CorrectorHubMixin", "push_checkpoint"]
