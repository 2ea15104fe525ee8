"""The stale-cache store and its provenance fingerprints (one job per module; see :mod:`.stale_cache`)."""

from ..atomic_io import atomic_replace_dir
from .folder import remove_leftovers
from .provenance import (
    fingerprint_corpus,
    fingerprint_doc_ids,
    fingerprint_module,
    fingerprint_retriever,
    fingerprint_texts,
)
from .schema import INITIAL_STEP, validate_info
from .stale_cache import StaleCache, check_finite

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
    "remove_leftovers",
    "validate_info",
]
