"""Hub round trip: card data and rendering, corrector pushes, the cache's dataset card and sentence-transformers export.

Nothing here sees a trainer: the trainer-facing card and push code (``ModelCardCallback``, ``write_model_cards``,
checkpoint pushes) lives beside the trainer in :mod:`hf_corrector.training.model_card` and
:mod:`hf_corrector.training.hub_push`.

* ``CorrectorTrainer(..., args=CorrectorTrainingArguments(..., push_to_hub=True, hub_model_id="me/model"))`` then
  ``trainer.push_to_hub()`` publishes the retriever, ``corrector/`` and their cards in one repo;
  ``RetrieverModel.from_pretrained("me/model")`` and
  ``CorrectorModel.from_pretrained("me/model", subfolder="corrector")`` load them back.
* ``retriever.push_to_hub(repo)`` (:func:`push_retriever`) publishes a retriever alone with its sentence-transformers
  card.
* :func:`push_corrector` publishes a corrector in its own repo with a card naming its retriever as ``base_model``
  (loadable with ``AutoModel.from_pretrained`` once ``hf_corrector`` is imported).
* ``StaleCache.push_to_hub(repo)`` / ``StaleCache.load(repo)`` publish a cache as a dataset with its card
  (:func:`render_cache_card`).
* every saved retriever is a sentence-transformers model (``SentenceTransformer(repo)`` loads it without
  hf-corrector); :func:`export_sentence_transformers` writes a standalone sentence-transformers folder.
"""

from __future__ import annotations

from ..cache.card import push_cache_to_hub, render_cache_card
from .card_data import CITATIONS, CardData, non_default_hyperparameters
from .cards import render_corrector_card, render_retriever_card, template_path
from .corrector_push import push_corrector
from .retriever_push import push_retriever, retriever_card
from ..utils.hub_ids import public_model_id, public_name
from ..models.sentence_transformers_export import export_sentence_transformers, write_sentence_transformers_files

__all__ = [
    "CITATIONS",
    "CardData",
    "export_sentence_transformers",
    "non_default_hyperparameters",
    "public_model_id",
    "public_name",
    "push_cache_to_hub",
    "push_corrector",
    "push_retriever",
    "render_cache_card",
    "render_corrector_card",
    "render_retriever_card",
    "retriever_card",
    "template_path",
    "write_sentence_transformers_files",
]
