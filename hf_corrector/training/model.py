"""The module the Trainer wraps: the retriever, the corrector and (optionally) a jointly trained reader, so that one
``forward`` carries every gradient (DDP / FSDP hooks see them all).

Example:
    >>> model = CorrectorTrainingModel(retriever, corrector)  # doctest: +SKIP
    >>> out = model(q_ids, q_mask, t_ids, t_mask, stale_target_embeddings=stale)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.corrector import CorrectorModel
from ..models.retriever import RetrieverModel


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

