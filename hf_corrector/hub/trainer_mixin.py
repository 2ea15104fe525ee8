"""The Hub side of :class:`~hf_corrector.CorrectorTrainer`: model cards and checkpoint pushes.

Mixed into the trainer (like ``transformers``' ``PushToHubMixin``): the card data it fills while training, our
cards in place of ``Trainer.create_model_card``, and checkpoint pushes deferred until the checkpoint is complete.
"""

from __future__ import annotations

import os

from .callbacks import push_checkpoint, write_model_cards


class CorrectorHubMixin:
    """Hub methods of the corrector trainer (needs ``model_card_callback``, ``args`` and Trainer's Hub state)."""

    @property
    def model_card_data(self):
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
        see :func:`hf_corrector.hub.callbacks.push_checkpoint`."""
        self._pending_hub_push = checkpoint_folder

    def _push_pending_checkpoint(self) -> None:
        folder, self._pending_hub_push = getattr(self, "_pending_hub_push", None), None
        if folder is not None and os.path.isdir(folder):
            push_checkpoint(self, folder)
