"""Rendering model cards: a :class:`~hf_corrector.hub.card_data.CardData` through the Jinja templates.

Cards are Jinja templates (``model_cards/*.md.j2``, shipped in the wheel as ``hf_corrector.model_cards``) rendered
with :meth:`huggingface_hub.ModelCard.from_template`; the YAML header is a :class:`huggingface_hub.ModelCardData`
(tags, ``base_model``, ``datasets`` and a ``model-index`` built from :class:`huggingface_hub.EvalResult`). A saved
retriever is a sentence-transformers model, so its card reads like one (``library_name: sentence-transformers``,
``pipeline_tag: sentence-similarity``, a ``widget``); the corrector's card has ``library_name: hf-corrector``.

Cards never show a local path: a base model or dataset that is not a Hub id is named by its folder name only, a
local copy of a Hub model in the Hugging Face cache (``models--org--name/snapshots/...``) by its Hub id (see
:mod:`hf_corrector.utils.hub_ids`), and every snippet in a card runs as written (tested against a local Hub).

Example:
    >>> data = CardData(model_name="my-retriever", base_model="org/base-encoder")  # doctest: +SKIP
    >>> print(render_retriever_card(data, repo_id="me/my-retriever"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_data import LIBRARY_NAME, ST_LIBRARY_NAME, ST_TAGS, TAGS, CardData, eval_columns, eval_results, metric_label
from ..utils.card_text import CACHE_TEMPLATE, format_value, repo_link, template_path
from ..utils.hub_ids import is_hub_id, known_secrets, public_model_id, public_name, redact, scrub_local_paths

RETRIEVER_TEMPLATE = "retriever.md.j2"
CORRECTOR_TEMPLATE = "corrector.md.j2"


def _tags(card: CardData, extra: list[str] | None = None, first: bool = False) -> list[str]:
    """Our tags, the card's ``extra_tags`` and ``extra`` (``first``: ``extra`` leads, as ST tags do)."""
    tags = list(extra or []) + list(TAGS) if first else list(TAGS)
    for tag in list(card.extra_tags) + list(extra or []):
        if tag not in tags:
            tags.append(tag)
    return tags


def _model_card_data(card: CardData, base_model: str | None, tags: list[str], eval_results_: list[EvalResult] | None,
                     model_name: str | None, datasets_: list[str] | None, sentence_transformers: bool = False
                     ) -> ModelCardData:
    extra: dict[str, Any] = {}
    if sentence_transformers and card.widget:
        extra["widget"] = card.widget
    return ModelCardData(
        library_name=ST_LIBRARY_NAME if sentence_transformers else LIBRARY_NAME,
        tags=tags,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[d for d in (datasets_ or []) if is_hub_id(d)] or None,
        eval_results=eval_results_ or None,
        model_name=model_name if eval_results_ else None,
        license=card.license,
        language=card.language,
        pipeline_tag="sentence-similarity" if sentence_transformers else "feature-extraction",
        **extra,
    )


def _local_paths(card: CardData) -> list[str | None]:
    """Local paths a card must not show (scrubbed from the rendered text as a last resort)."""
    return [card.base_model, card.train_dataset_name, card.eval_dataset_name, os.getcwd(), tempfile.gettempdir(),
            os.path.expanduser("~")]


def _public_card(card: CardData) -> dict[str, Any]:
    """``card`` as the templates see it: names are Hub ids or bare folder names, never local paths."""
    data = card.to_dict()
    for key in ("base_model", "train_dataset_name", "eval_dataset_name"):
        data[key] = public_name(data[key])
    data["retriever"] = dict(data["retriever"] or {})
    if "base_model_name_or_path" in data["retriever"]:
        data["retriever"]["base_model_name_or_path"] = public_name(data["retriever"]["base_model_name_or_path"])
    return data


def render_retriever_card(card: CardData, repo_id: str | None = None, secrets: list[str] | None = None) -> str:
    """The retriever's README.md (YAML metadata + Markdown): a sentence-transformers card (unless
    ``card.sentence_transformers`` is off) whose snippets run as written once the model is at ``repo_id``."""
    repo_id = repo_id or card.repo_id
    load_id = repo_id or card.model_name or "path/to/model"
    results = eval_results(card)
    model_name = card.model_name or (repo_id or "retriever").split("/")[-1]
    datasets_ = [d for d in (card.train_dataset_name,) if d]
    extra = ST_TAGS if card.sentence_transformers else ["sentence-embeddings"]
    base_model = public_model_id(card.base_model)
    data = _model_card_data(card, base_model if base_model != repo_id else None, _tags(card, extra, first=True),
                            results, model_name, datasets_, sentence_transformers=card.sentence_transformers)
    rows = card.eval_rows
    columns = eval_columns(rows)
    c = _public_card(card)
    text = ModelCard.from_template(
        data, template_path=str(template_path(RETRIEVER_TEMPLATE)),
        c=c, repo_id=repo_id, load_id=load_id, model_title=model_name,
        eval_columns=[(name, metric_label(name)) for name in columns], eval_rows=rows,
        has_corrector=card.corrector is not None, fmt=format_value, cost=card.reembedding_cost,
        base_model_link=repo_link(base_model),
        base_model_name=c["base_model"] or c["retriever"].get("base_model_name_or_path"),
        st=card.sentence_transformers,
    ).content
    return redact(scrub_local_paths(text, _local_paths(card)), secrets or known_secrets())


def corrector_base_model(card: CardData, retriever_repo_id: str | None, home_repo_id: str | None) -> str | None:
    """What the corrector card names as ``base_model``: the retriever whose cache it corrects when that is another
    repo, else the model the retriever was trained from; never the repo the corrector itself lives in."""
    for candidate in (retriever_repo_id, public_model_id(card.base_model)):
        if is_hub_id(candidate) and candidate != home_repo_id:
            return candidate
    return None


def render_corrector_card(card: CardData, retriever_repo_id: str | None = None, repo_id: str | None = None,
                          subfolder: str | None = None, secrets: list[str] | None = None) -> str:
    """The corrector's README.md; ``base_model`` names the retriever whose cache it corrects (or, in the retriever's
    own repo, the retriever's base model), never the corrector's own repo.

    ``repo_id``/``subfolder``: where the corrector lives (its own repo, or ``corrector/`` in the retriever's).
    """
    retriever_repo_id = retriever_repo_id or card.repo_id
    home = repo_id or (retriever_repo_id if subfolder else None)
    load_id = repo_id or retriever_repo_id or card.model_name or "path/to/model"
    retriever_load_id = retriever_repo_id if is_hub_id(retriever_repo_id) else (load_id if subfolder else None)
    title = f"Corrector network for {public_name(retriever_repo_id) or card.model_name or 'a dense retriever'}"
    base_model = corrector_base_model(card, retriever_repo_id, home)
    data = _model_card_data(card, base_model, _tags(card, ["corrector"]), None, None,
                            [d for d in (card.train_dataset_name,) if d])
    text = ModelCard.from_template(
        data, template_path=str(template_path(CORRECTOR_TEMPLATE)),
        c=_public_card(card), retriever_repo_id=retriever_repo_id, load_id=load_id, subfolder=subfolder,
        retriever_load_id=retriever_load_id, model_title=title, fmt=format_value, retriever_link=repo_link(retriever_repo_id),
    ).content
    return redact(scrub_local_paths(text, _local_paths(card)), secrets or known_secrets())


__all__ = ["CACHE_TEMPLATE", "CORRECTOR_TEMPLATE", "RETRIEVER_TEMPLATE", "corrector_base_model", "format_value",
           "render_corrector_card", "render_retriever_card", "repo_link", "template_path"]
