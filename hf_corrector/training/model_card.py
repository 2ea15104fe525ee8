"""The trainer's model cards: collecting a :class:`~hf_corrector.hub.card_data.CardData` from a running
:class:`~hf_corrector.CorrectorTrainer`, the callback that keeps it current, and writing the cards into a folder.

The trainer-facing half of the cards, beside the trainer: :mod:`hf_corrector.hub` holds the card data and the
rendering and never sees a trainer. ``trainer.model_card_data`` is the callback's :class:`CardData`: set
``license``, ``cache_repo_id``, ``extra_tags`` or ``description`` on it before pushing.

Example:
    >>> card = card_data_from_trainer(trainer)  # doctest: +SKIP
    >>> write_model_cards(trainer, "out")       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ..hub.card_data import (CITATIONS, CardData, corrector_details, distinct_queries, framework_versions,
                             non_default_hyperparameters, pick_base_model, retriever_details, update_from_history,
                             widget_examples)
from ..hub.cards import render_corrector_card, render_retriever_card
from ..utils.hub_ids import is_hub_id, known_secrets

if TYPE_CHECKING:
    from ..negatives.miner import NegativeMiner
    from .strategy import NegativeStrategy
    from .trainer import CorrectorTrainer

logger = logging.getLogger(__name__)


def strategy_and_citations(strategy: NegativeStrategy, miner: NegativeMiner, num_refreshes: int = 0
                           ) -> tuple[str, list[str]]:
    """The training strategy in one line and the :data:`~hf_corrector.hub.card_data.CITATIONS` keys, asked of the
    :class:`~hf_corrector.training.strategy.NegativeStrategy` with the run's own miner (its sampler may be a user's);
    ANCE is cited when a full refresh ran."""
    keys = strategy.citations(miner, num_refreshes)
    unknown = [k for k in keys if k not in CITATIONS]
    if unknown:
        logger.warning("model card: no citation for %s (known: %s)", unknown, ", ".join(CITATIONS))
    return strategy.description(miner), [k for k in keys if k in CITATIONS]


def update_static(card: CardData, trainer: CorrectorTrainer) -> CardData:
    """Fill the fields that come from the trainer's objects and arguments (not from the logs)."""
    args = trainer.args
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id  # set by Trainer.init_hf_repo only
    card.repo_id = repo_id if is_hub_id(repo_id) else None
    card.model_name = (repo_id or "").split("/")[-1] or Path(args.output_dir).name
    retriever = trainer.retriever
    card.retriever = retriever_details(retriever)
    if card.base_model is None or card.base_model == card.repo_id:
        card.base_model = pick_base_model(retriever, exclude=card.repo_id)
    card.corrector = corrector_details(trainer.corrector)
    cost = trainer.cost
    card.strategy, keys = strategy_and_citations(trainer.strategy, trainer.negatives,
                                                 int(cost.get("num_refreshes", 0) or 0))
    card.hyperparameters = non_default_hyperparameters(args)
    card.num_docs = len(trainer.doc_ids)
    train = trainer.train_examples
    card.num_train_queries = distinct_queries(train)
    card.num_train_pairs = len(train) if train is not None else None
    card.num_eval_queries = distinct_queries(trainer.eval_queries)
    if not card.widget:
        card.widget = widget_examples(train, trainer.corpus_texts)
    total = trainer.total_reembedding_cost()
    card.reembedding_cost = {**cost, "total": total, "corpus_passes": round(total / max(len(trainer.doc_ids), 1), 3)}
    card.global_step = int(trainer.state.global_step)
    card.epoch = trainer.state.epoch
    card.framework_versions = framework_versions()
    card.citations = [CITATIONS[k] for k in keys]
    return card


def card_data_from_trainer(trainer: CorrectorTrainer, card: CardData | None = None) -> CardData:
    """A complete :class:`CardData` for a :class:`~hf_corrector.CorrectorTrainer` (its callback's, if registered)."""
    if card is None:
        callback = getattr(trainer, "model_card_callback", None)
        card = callback.card_data if callback is not None else CardData()
    update_static(card, trainer)
    update_from_history(card, trainer.state.log_history)
    return card


class ModelCardCallback(TrainerCallback):
    """Keeps :attr:`card_data` current during training: static facts at the start and end (from ``collect``),
    evaluation rows and staleness statistics as they are logged.

    Args:
        card_data: the :class:`CardData` to fill (the trainer's ``model_card_data``).
        collect: fills the static fields of a :class:`CardData` (the trainer passes :func:`update_static` bound to
            itself); the callback itself sees no trainer.
    """

    def __init__(self, card_data: CardData, collect: Callable[[CardData], Any]):
        self.card_data = card_data
        self._collect = collect

    def _static(self) -> None:
        try:
            self._collect(self.card_data)
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


__all__ = ["ModelCardCallback", "card_data_from_trainer", "strategy_and_citations", "update_static", "write_model_cards"]
