"""Trainer-side Hub integration: the model-card callback, card writing and checkpoint pushes.

:class:`ModelCardCallback` is registered by :class:`~hf_corrector.CorrectorTrainer`; it keeps a
:class:`~hf_corrector.hub.cards.CardData` up to date while training (arguments, corrector size, re-embedding cost,
staleness statistics, evaluation table). ``trainer.model_card_data`` is that object: set ``license``,
``cache_repo_id``, ``extra_tags`` or ``description`` on it before pushing.

:func:`write_model_cards` is what ``CorrectorTrainer.create_model_card`` does: the retriever card in
``output_dir/README.md`` and the corrector card in ``output_dir/corrector/README.md``.

:func:`push_checkpoint` replaces ``Trainer._push_from_checkpoint`` (``hub_strategy`` ``every_save`` /
``checkpoint`` / ``all_checkpoints``): it pushes the whole saved model (retriever, ``corrector/``, tokenizer, cards)
and never the pickled ``training_args.bin``, which would carry ``hub_token`` to the Hub.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .cards import (
    CardData,
    card_data_from_trainer,
    dataset_name,
    known_secrets,
    redact,
    render_corrector_card,
    render_retriever_card,
    update_from_history,
    update_static,
)

if TYPE_CHECKING:
    from ..training.trainer import CorrectorTrainer

logger = logging.getLogger(__name__)

# Files of a checkpoint folder that are training state, not the published model.
CHECKPOINT_ONLY = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                   "corrector_trainer_state.json", "corrector_trainer_tensors.safetensors", "stale_cache",
                   "checkpoint_complete.json"}
NEVER_PUSH = ["training_args.bin", "**/training_args.bin"]


class ModelCardCallback(TrainerCallback):
    """Fills :attr:`card_data` during training (static facts at the start and end, logs as they come).

    Args:
        trainer: the :class:`~hf_corrector.CorrectorTrainer`.
        train_data / eval_data: the datasets given to the trainer (only their names are kept).
    """

    def __init__(self, trainer: CorrectorTrainer, train_data: Any = None, eval_data: Any = None):
        self.trainer = trainer
        self.card_data = CardData(train_dataset_name=dataset_name(train_data),
                                  eval_dataset_name=dataset_name(eval_data))

    def refresh(self) -> CardData:
        """Bring :attr:`card_data` up to date with the trainer (arguments, models, cost, logs) and return it."""
        return card_data_from_trainer(self.trainer, self.card_data)

    def _static(self) -> None:
        try:
            update_static(self.card_data, self.trainer)
        except Exception as err:  # noqa: BLE001 - a card must never break training
            logger.warning("model card: could not collect training facts (%s)", err)

    def on_train_begin(self, args, state, control, **kwargs):
        self._static()
        update_from_history(self.card_data, state.log_history)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        update_from_history(self.card_data, state.log_history)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        update_from_history(self.card_data, state.log_history)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._static()
        update_from_history(self.card_data, state.log_history)
        return control


def write_model_cards(trainer: CorrectorTrainer, output_dir: str | os.PathLike | None = None,
                      **overrides: Any) -> Path:
    """Render the retriever card into ``output_dir/README.md`` and the corrector card into ``corrector/README.md``.

    ``overrides`` are ``Trainer.create_model_card``'s arguments: ``license``, ``language``, ``tags``,
    ``model_name``, ``finetuned_from`` (the base model) and ``dataset`` (training data name) are honoured.
    """
    output_dir = Path(output_dir or trainer.args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    callback = getattr(trainer, "model_card_callback", None)
    card = card_data_from_trainer(trainer, callback.card_data if callback is not None else CardData())
    if overrides.get("license"):
        card.license = overrides["license"]
    if overrides.get("language"):
        card.language = overrides["language"]
    if overrides.get("finetuned_from"):
        card.base_model = overrides["finetuned_from"]
    if overrides.get("dataset"):
        ds = overrides["dataset"]
        card.train_dataset_name = ds if isinstance(ds, str) else ds[0]
    tags = overrides.get("tags")
    if tags:
        for tag in [tags] if isinstance(tags, str) else tags:
            if tag not in card.extra_tags:
                card.extra_tags.append(tag)
    if overrides.get("model_name") and not card.repo_id:
        card.model_name = overrides["model_name"]
    # a saved retriever carries the sentence-transformers modules (RetrieverModel.save_pretrained); not saved yet: it will
    card.sentence_transformers = (output_dir / "modules.json").is_file() or not (output_dir / "config.json").is_file()
    secrets = known_secrets(trainer.args)
    (output_dir / "README.md").write_text(render_retriever_card(card, secrets=secrets), encoding="utf-8")
    if trainer.corrector is not None:
        (output_dir / "corrector").mkdir(exist_ok=True)
        (output_dir / "corrector" / "README.md").write_text(
            render_corrector_card(card, retriever_repo_id=card.repo_id, subfolder="corrector", secrets=secrets),
            encoding="utf-8")
    return output_dir / "README.md"


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


__all__ = ["ModelCardCallback", "push_checkpoint", "write_model_cards"]
