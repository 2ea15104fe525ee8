"""Hub round trip: model cards, the trainer's card callback, corrector pushes and sentence-transformers export.

* ``CorrectorTrainer(..., args=CorrectorTrainingArguments(..., push_to_hub=True, hub_model_id="me/model"))`` then
  ``trainer.push_to_hub()`` publishes the retriever, ``corrector/`` and their cards in one repo;
  ``RetrieverModel.from_pretrained("me/model")`` and
  ``CorrectorModel.from_pretrained("me/model", subfolder="corrector")`` load them back.
* :func:`push_corrector` publishes a corrector in its own repo with a card naming its retriever as ``base_model``
  (loadable with ``AutoModel.from_pretrained`` once ``hf_corrector`` is imported).
* ``StaleCache.push_to_hub(repo)`` / ``StaleCache.load(repo)`` publish a cache as a dataset with its card
  (:func:`render_cache_card`).
* every saved retriever is a sentence-transformers model (``SentenceTransformer(repo)`` loads it without
  hf-corrector); :func:`export_sentence_transformers` writes a standalone sentence-transformers folder.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from .cache_card import push_cache_to_hub, render_cache_card
from .callbacks import ModelCardCallback, push_checkpoint, write_model_cards
from .cards import (
    CardData,
    card_data_from_trainer,
    non_default_hyperparameters,
    public_name,
    render_corrector_card,
    render_retriever_card,
    strategy_and_citations,
    template_path,
)
from .sentence_transformers_export import export_sentence_transformers, write_sentence_transformers_files

if TYPE_CHECKING:
    from ..models.corrector import CorrectorModel


def push_corrector(
    corrector: CorrectorModel,
    repo_id: str,
    retriever_repo_id: str | None = None,
    card_data: CardData | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload corrector network",
) -> str:
    """Publish ``corrector`` (weights, config and a card) to its own model repo in one commit; returns the repo id.

    The card's ``base_model`` is ``retriever_repo_id`` (default: ``corrector.config.retriever_name_or_path``).
    """
    from huggingface_hub import HfApi

    from .cards import corrector_details, framework_versions, is_hub_id, known_secrets

    retriever_repo_id = retriever_repo_id or corrector.config.retriever_name_or_path
    card = card_data if card_data is not None else CardData()
    card.corrector = card.corrector or corrector_details(corrector)
    card.framework_versions = card.framework_versions or framework_versions()
    card.model_name = card.model_name or repo_id.split("/")[-1]
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        recorded = corrector.config.retriever_name_or_path
        if not is_hub_id(recorded):  # a local path must not be published in config.json
            corrector.config.retriever_name_or_path = None
        try:
            corrector.save_pretrained(tmp)
        finally:
            corrector.config.retriever_name_or_path = recorded
        readme = render_corrector_card(card, retriever_repo_id=retriever_repo_id, repo_id=repo_id,
                                       secrets=[s for s in (token, *known_secrets()) if s])
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as fh:
            fh.write(readme)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return repo_id


__all__ = [
    "CardData",
    "ModelCardCallback",
    "card_data_from_trainer",
    "export_sentence_transformers",
    "non_default_hyperparameters",
    "public_name",
    "push_cache_to_hub",
    "push_checkpoint",
    "push_corrector",
    "render_cache_card",
    "render_corrector_card",
    "render_retriever_card",
    "strategy_and_citations",
    "template_path",
    "write_model_cards",
    "write_sentence_transformers_files",
]
