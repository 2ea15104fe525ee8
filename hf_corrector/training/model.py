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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..errors import ConfigError
from ..models.corrector import CorrectorModel
from ..models.retriever import RetrieverConfig, RetrieverModel
from .losses import masked_logits
from .trainer_state import save_models
from .user_optim import is_peft


@dataclass
class CorrectorStepOutput(ModelOutput):
    """What ``model(**inputs)`` returns for a training batch (a ``compute_loss`` override as the Trainer docs write
    it): the step's loss, and the embeddings it came from (``target_embeddings``: the step's distinct targets)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  #: (B, U) scores / temperature, -inf outside each query's candidates
    labels: torch.Tensor | None = None  #: (B,) the column of each query's positive: the task loss is CE(logits, labels)
    query_embeddings: torch.Tensor | None = None
    target_embeddings: torch.Tensor | None = None
    corrected_embeddings: torch.Tensor | None = None


def step_output(loss: torch.Tensor, out: dict, temperature: float) -> CorrectorStepOutput:
    """The :class:`CorrectorStepOutput` of a step's loss and its outputs (``target_batch``: its TargetBatch)."""
    batch = out.get("target_batch")
    q, t = out.get("query_embeddings"), out.get("target_embeddings")
    logits = masked_logits(q, t, batch.mask, temperature) if batch is not None else None
    return CorrectorStepOutput(loss=loss, logits=logits, labels=batch.labels if batch is not None else None,
                               query_embeddings=q, target_embeddings=t, corrected_embeddings=out.get("corrected_embeddings"))


class CorrectorTrainingModel(nn.Module):
    """What the Trainer wraps: the retriever and the corrector, so one ``forward`` carries every gradient.

    Called with a training batch (``model(**inputs)``: the collator's keys, no targets) it runs the whole step the
    trainer set with :meth:`set_step` (negatives chosen, targets encoded, loss) and returns a
    :class:`CorrectorStepOutput`."""

    accepts_loss_kwargs = False  # Trainer: the loss is a per-batch mean (forward's **batch is not loss kwargs)

    def __init__(self, retriever: RetrieverModel, corrector: CorrectorModel | None = None, reader: nn.Module | None = None):
        super().__init__()
        self.retriever = retriever
        self.corrector = corrector
        self._step: Callable[[dict], CorrectorStepOutput] | None = None
        if reader is not None:  # a jointly trained reader's LM (issue 20): in the optimizer, group "reader"
            self.reader = reader

    def set_step(self, step: Callable[[dict], CorrectorStepOutput]) -> None:
        """What ``model(**inputs)`` runs for a training batch (the trainer's own step)."""
        self._step = step

    def forward(self, query_input_ids: torch.Tensor, query_attention_mask: torch.Tensor,
                target_input_ids: torch.Tensor | None = None, target_attention_mask: torch.Tensor | None = None,
                stale_target_embeddings: torch.Tensor | None = None, **batch: torch.Tensor
                ) -> dict[str, torch.Tensor] | CorrectorStepOutput:
        if target_input_ids is None:  # model(**inputs) on a training batch: the whole step
            if self._step is None or "positive_rows" not in batch:
                raise ConfigError("CorrectorTrainingModel needs target_input_ids / target_attention_mask, or a "
                                  "training batch of a CorrectorTrainer (model(**inputs) inside compute_loss)")
            return self._step({"query_input_ids": query_input_ids, "query_attention_mask": query_attention_mask,
                               **batch})
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

    def push_to_hub(self, *args, **kwargs) -> None:
        """Refused: the trainer pushes the retriever, ``corrector/`` and their cards together."""
        raise ConfigError("trainer.model.push_to_hub: use trainer.push_to_hub() (the retriever, corrector/ and the "
                          "model cards in one repo), or trainer.retriever.push_to_hub(repo_id) for the retriever alone")
