"""``RetrieverModel.push_to_hub``: the retriever alone, with the sentence-transformers card the README promises.

transformers' ``push_to_hub`` would publish its generic card (``library_name: transformers``) beside the
sentence-transformers layout that every ``save_pretrained`` writes. This push renders the retriever card from the
retriever itself (:func:`~hf_corrector.hub.cards.render_retriever_card`: ``library_name: sentence-transformers``,
its pooling, lengths and towers, how to load it with ``SentenceTransformer`` and hf-corrector) unless the repo
already has a card (kept, as transformers keeps it), and publishes everything in one commit. No local path is
published: the card names a local base model by its folder name, and so does every JSON file of the save
(``config.json`` with its ``encoder_config``, ``0_Transformer/config.json``).

Example:
    >>> retriever.push_to_hub("me/my-retriever")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from .card_data import CardData, framework_versions, pick_base_model, retriever_details
from .cards import render_retriever_card
from ..utils.hub_ids import known_secrets, public_model_id, public_name, scrub_local_paths

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel


def retriever_card(retriever: RetrieverModel, repo_id: str, tags: list[str] | None = None,
                   secrets: list[str] | None = None) -> str:
    """The README.md of ``retriever`` published alone at ``repo_id`` (no training run: no data or metrics)."""
    card = CardData(model_name=repo_id.split("/")[-1], repo_id=repo_id,
                    base_model=pick_base_model(retriever, exclude=repo_id), retriever=retriever_details(retriever),
                    framework_versions=framework_versions(), extra_tags=list(tags or []))
    return render_retriever_card(card, repo_id=repo_id, secrets=secrets)


def push_retriever(retriever: RetrieverModel, repo_id: str, *, commit_message: str | None = None,
                   commit_description: str | None = None, private: bool | None = None, token: str | None = None,
                   revision: str | None = None, create_pr: bool = False, max_shard_size: int | str | None = "50GB",
                   tags: list[str] | None = None, **save_kwargs: Any) -> Any:
    """Save ``retriever`` (its files and the sentence-transformers layout) and its card, and upload them in one
    commit; the arguments are those of transformers' ``push_to_hub``. Returns the commit's info."""
    api = HfApi(token=token if isinstance(token, str) else None)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    try:
        readme = str(ModelCard.load(repo_id, token=token if isinstance(token, str) else None))
    except (EntryNotFoundError, RepositoryNotFoundError):
        readme = retriever_card(retriever, repo_id, tags, secrets=[s for s in (token, *known_secrets())
                                                                   if isinstance(s, str) and s])
    cfg = retriever.config
    recorded = cfg.base_model_name_or_path
    with tempfile.TemporaryDirectory() as tmp:
        if public_model_id(recorded) is None:  # a local path must not be published in config.json
            cfg.base_model_name_or_path = public_name(recorded)
        try:
            retriever.save_pretrained(tmp, max_shard_size=max_shard_size, **save_kwargs)
        finally:
            cfg.base_model_name_or_path = recorded
        scrub_saved_paths(tmp, local_paths_of(retriever))
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as fh:
            fh.write(readme)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message or "Upload retriever",
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)


def local_paths_of(retriever: RetrieverModel) -> list[str]:
    """The local folders a retriever's configs may name: its own, its base model's, and its encoder towers'
    (``encoder_config._name_or_path`` in ``config.json``, ``_name_or_path`` of ``0_Transformer/config.json``)."""
    cfg = retriever.config
    names = [cfg.base_model_name_or_path, getattr(cfg, "name_or_path", None),
             (getattr(cfg, "encoder_config", None) or {}).get("_name_or_path")]
    for tower in (getattr(retriever, "encoder", None), getattr(retriever, "query_encoder", None)):
        names.append(getattr(getattr(tower, "config", None), "name_or_path", None))
    return [str(n) for n in names if n and public_model_id(n) is None]


def scrub_saved_paths(folder: str | os.PathLike, paths: list[str]) -> None:
    """Replace the local ``paths`` in every JSON file a save wrote under ``folder`` by their folder names."""
    if not paths:
        return
    for root, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".json"):
                continue
            file = os.path.join(root, name)
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
            scrubbed = scrub_local_paths(text, paths)
            if scrubbed != text:
                with open(file, "w", encoding="utf-8") as fh:
                    fh.write(scrubbed)


__all__ = ["local_paths_of", "push_retriever", "retriever_card", "scrub_saved_paths"]
