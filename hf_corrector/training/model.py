"""The module the Trainer wraps: the retriever, the corrector and (optionally) a jointly trained reader, so that one
``forward`` carries every gradient (DDP / FSDP hooks see them all).

What Trainer users call on ``trainer.model`` means what they expect: ``config`` is the retriever's
:class:`RetrieverConfig`, and ``save_pretrained(folder)`` writes the trained retriever (merged with its PEFT
adapters, if any) so that ``RetrieverModel.from_pretrained(folder)`` loads it, with the corrector in ``corrector/``.

Example:
    >>> model = CorrectorTrainingModel(retriever, corrector)  # doctest: +SKIP
    >>> out = model(q_ids, q_mask, t_ids, t_mask, stale_target_embeddings=stale)  # doctest: +SKIP
    >>> trainer.model.save_pretrained("out/final")  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import ConfigError
from ..models.corrector import CorrectorModel
from ..models.retriever import RetrieverConfig, RetrieverModel
from .trainer_state import save_models
from .user_optim import is_peft


class CorrectorTrainingModel(nn.Module):
    """What the Trainer wraps: the retriever and the corrector, so one ``forward`` carries every gradient."""

    def __init__(self, retriever: RetrieverModel, corrector: CorrectorModel | None = None, reader: nn.Module | None = None):
        super().__init__()
        self.retriever = retriever
        self.corrector = corrector
        if reader is not None:  # a jointly trained reader's LM (issue 20): in the optimizer, group "reader"
            self.reader = reader

    def forward(self, query_input_ids: torch.Tensor, query_attention_mask: torch.Tensor, target_input_ids: torch.Tensor,
                target_attention_mask: torch.Tensor, stale_target_embeddings: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        out = self.retriever(query_input_ids, query_attention_mask, target_input_ids, target_attention_mask)
        result = {"query_embeddings": out.query_embeddings, "target_embeddings": out.target_embeddings}
        if self.corrector is not None and stale_target_embeddings is not None:
            result["corrected_embeddings"] = self.corrector(stale_target_embeddings)
        return result

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """What ``TrainingArguments(gradient_checkpointing=True)`` calls: checkpoint the encoder tower(s)."""
        for tower in (self.retriever.encoder, self.retriever.query_encoder):
            if tower is not None:
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    @property
    def config(self) -> RetrieverConfig:
        """The retriever's config (``trainer.model.config``)."""
        return self.retriever.config

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, **kwargs) -> None:
        """The trained retriever at ``save_directory`` (``RetrieverModel.from_pretrained``-loadable; merged plus
        ``peft_adapter/`` with PEFT) and the corrector in ``corrector/``, as ``trainer.save_model`` writes them
        (without the stale cache and the run's arguments: use ``trainer.save_model`` for those)."""
        if kwargs or not safe_serialization:
            raise ConfigError(f"trainer.model.save_pretrained: {sorted(kwargs) or ['safe_serialization=False']} not "
                              "supported (always safetensors); to push, use trainer.push_to_hub() or "
                              "trainer.save_model(folder) then retriever.push_to_hub(...)")
        if is_main_process:
            towers = [t for t in (self.retriever.encoder, self.retriever.query_encoder) if t is not None]
            save_models(save_directory, self.retriever, self.corrector, any(is_peft(t) for t in towers))
