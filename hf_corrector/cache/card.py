"""The dataset card of a published stale cache, and publishing a cache with it.

``cache.push_to_hub(repo_id)`` publishes this card by default; :func:`push_cache_to_hub` does the same explicitly.
Nothing is registered at import time.

Example:
    >>> from hf_corrector.cache.card import render_cache_card  # doctest: +SKIP
    >>> print(render_cache_card(cache, keep_existing_metadata=False)[:40])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from huggingface_hub import DatasetCard, DatasetCardData

from ..utils.card_text import CACHE_TAGS, CACHE_TEMPLATE, CITATIONS, format_value, repo_link, template_path
from ..utils.hub_ids import known_secrets, redact
from .schema import INITIAL_STEP

if TYPE_CHECKING:
    from .stale_cache import StaleCache

logger = logging.getLogger(__name__)


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "n>1B"


def _existing_dataset_metadata(repo_id: str, token: str | None = None) -> dict[str, Any]:
    """``configs``/``dataset_info`` that ``datasets.push_to_hub`` wrote into the repo's README ({} if none)."""
    try:
        existing = DatasetCard.load(repo_id, repo_type="dataset", token=token)
    except Exception as err:  # noqa: BLE001 - no card yet, offline, or no access: the card is still valid without
        logger.debug("no existing dataset card for %s (%s)", repo_id, err)
        return {}
    data = existing.data.to_dict()
    return {k: data[k] for k in ("configs", "dataset_info") if k in data}


def render_cache_card(cache: StaleCache, repo_id: str | None = None, token: str | None = None,
                      keep_existing_metadata: bool = True) -> str:
    """The dataset card of a published stale cache: provenance, rows, step statistics and how to load it.

    With ``keep_existing_metadata`` the ``configs`` / ``dataset_info`` sections that ``datasets`` wrote when the
    table was pushed are read back from ``repo_id`` and kept (they describe the parquet files and features).
    """
    info = cache.info()
    steps = cache.steps
    written = steps[steps != INITIAL_STEP]
    step_stats = {"initial_rows": int((steps == INITIAL_STEP).sum()), "updated_rows": int(written.numel()),
                  "min_step": int(steps.min()) if len(cache) else None,
                  "max_step": int(steps.max()) if len(cache) else None,
                  "distinct_steps": int(steps.unique().numel()) if len(cache) else 0}
    prov = dict(cache.provenance)
    encoder = prov.get("encoder")
    extra = _existing_dataset_metadata(repo_id, token) if (repo_id and keep_existing_metadata) else {}
    data = DatasetCardData(
        tags=list(CACHE_TAGS),
        size_categories=_size_category(len(cache)),
        pretty_name=f"Stale embedding cache ({encoder})" if encoder else "Stale embedding cache",
        **extra,
    )
    text = DatasetCard.from_template(
        data, template_path=str(template_path(CACHE_TEMPLATE)),
        repo_id=repo_id, load_id=repo_id or "path/to/cache", info=info, provenance=prov,
        step_stats=step_stats, encoder_link=repo_link(encoder) if encoder else None,
        fmt=format_value, num_rows=len(cache), dim=cache.dim, dtype=cache.dtype,
        nbytes=cache.nbytes, corrector_citation=CITATIONS["corrector"],
    ).content
    return redact(text, known_secrets())


def push_cache_to_hub(cache: StaleCache, repo_id: str, private: bool | None = None, token: str | None = None,
                      commit_message: str = "Upload stale cache") -> str:
    """Publish ``cache`` as a dataset repo with its card (:func:`render_cache_card`); returns the repo id."""
    return cache.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)

__all__ = ["push_cache_to_hub", "render_cache_card"]
