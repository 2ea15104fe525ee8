"""Checks and records of the served vectors themselves: which retriever built them (refusing another) and which
faiss index kind serves them (their doc ids are unique: :class:`~hf_corrector.StaleCache` refuses repeats).

Example:
    >>> import torch
    >>> from hf_corrector import StaleCache
    >>> vectors = StaleCache(["a", "b"], torch.eye(2), provenance={"serving": {"index_kind": "flat"}})
    >>> served_as(vectors, "hnsw").provenance["serving"]
    {'index_kind': 'hnsw'}
"""

from __future__ import annotations

import logging
from typing import Any

from ..cache.provenance import fingerprint_module, short
from ..cache.stale_cache import StaleCache
from ..errors import CacheMismatchError

logger = logging.getLogger(__name__)

RETRIEVER_KEY = "retriever_weights_fingerprint"  # all of the retriever's weights (both towers)


def check_retriever(vectors: StaleCache, retriever: Any, allow_other: bool = False) -> None:
    """Refuse to search ``vectors`` with a retriever other than the one that built them (recorded weights), unless
    ``allow_other``; dimension, pooling and normalisation must always agree."""
    where = vectors._where().replace("the stale cache", "the served vectors")
    dim = getattr(retriever, "embedding_dim", None)
    if dim is not None and int(dim) != vectors.dim:
        raise CacheMismatchError(f"{where} have dimension {vectors.dim}, the retriever {dim}")
    prov = vectors.provenance
    config = getattr(retriever, "config", None)
    for key in ("pooling", "normalize"):
        mine, theirs = prov.get(key), getattr(config, key, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise CacheMismatchError(f"{where} were built with {key}={mine!r}, the retriever uses {key}={theirs!r}")
    recorded = prov.get("serving", {}).get(RETRIEVER_KEY)
    if recorded is None:
        if "serving" in prov:
            logger.warning("%s record no fingerprint of the retriever that built them (older hf_corrector): cannot "
                           "verify that this retriever is that one", where)
        return
    actual = fingerprint_module(retriever)
    if actual == recorded:
        return
    if allow_other:
        logger.info("%s were built by another retriever (%s) than this one (%s): used on purpose", where,
                    short(recorded), short(actual))
        return
    raise CacheMismatchError(
        f"{where} were built by another retriever (weights {short(recorded)}) than the one given ({short(actual)}): "
        f"its queries would be searched against vectors of another encoder. Pass the retriever that was trained "
        f"with this index, or allow_other_retriever=True if this is on purpose")


def served_as(vectors: StaleCache, index_kind: str) -> StaleCache:
    """``vectors`` recording ``index_kind`` in ``provenance["serving"]`` (the same storage, not a copy), so that a
    save, a card and :attr:`CorrectedIndex.serving_info` say which index serves them."""
    serving = vectors.provenance.get("serving")
    if not isinstance(serving, dict) or serving.get("index_kind") == index_kind:
        return vectors
    provenance = {**vectors.provenance, "serving": {**serving, "index_kind": index_kind}}
    return StaleCache(vectors.doc_ids, vectors.matrix(), steps=vectors.steps, provenance=provenance,
                      dtype=vectors.dtype, source=vectors.source, check_values=False)


__all__ = ["RETRIEVER_KEY", "check_retriever", "served_as"]
