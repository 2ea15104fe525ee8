"""Publishing a corrector network in its own model repo, with a card naming its retriever as ``base_model``.

Example:
    >>> push_corrector(corrector, "me/my-corrector", retriever_repo_id="me/my-retriever")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from huggingface_hub import HfApi

from .card_data import CardData, corrector_details, framework_versions
from .cards import render_corrector_card
from ..utils.hub_ids import is_hub_id, known_secrets

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


__all__ = ["push_corrector"]
