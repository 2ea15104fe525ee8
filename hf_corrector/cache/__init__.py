"""The stale-cache store and its provenance fingerprints."""

from .provenance import (
    fingerprint_corpus,
    fingerprint_doc_ids,
    fingerprint_module,
    fingerprint_retriever,
    fingerprint_texts,
)
from .stale_cache import (
    INITIAL_STEP,
    StaleCache,
    atomic_replace_dir,
    check_finite,
    register_card_renderer,
    remove_leftovers,
    validate_info,
)

__all__ = [
    "INITIAL_STEP",
    "StaleCache",
    "atomic_replace_dir",
    "check_finite",
    "fingerprint_corpus",
    "fingerprint_doc_ids",
    "fingerprint_module",
    "fingerprint_retriever",
    "fingerprint_texts",
    "register_card_renderer",
    "remove_leftovers",
    "validate_info",
]
