"""Provenance checks of a stale cache: does it belong to this corpus and to this target encoder?

:class:`ProvenanceChecks` is mixed into :class:`~hf_corrector.cache.StaleCache`; :class:`CacheHeader` carries the
same checks for a cache known only by its facts (ids, step markers, provenance), e.g. a sharded cache checked
from one process's rows. Fingerprints are computed in :mod:`hf_corrector.cache.provenance`.

Example:
    >>> cache.check_provenance(retriever, texts=corpus["text"], allow_other_weights=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import CacheMismatchError
from ..utils.arrow_column import ArrowColumn
from .provenance import SCHEME, TEXTS_KEY, WEIGHTS_KEY, fingerprint_retriever, fingerprint_texts, short
from .schema import INITIAL_STEP

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)


class ProvenanceChecks:
    """The checks, over ``doc_ids``, ``steps``, ``provenance``, ``dim``, ``source`` and ``len(self)``."""

    doc_ids: list[str]
    steps: torch.Tensor
    provenance: dict
    source: str | None

    def _where(self) -> str:
        return f"the stale cache at {self.source}" if self.source else "the stale cache"

    def check_corpus(self, doc_ids: Sequence[str]) -> None:
        """Raise :class:`CacheMismatchError` unless the cache rows are exactly ``doc_ids`` in order."""
        if len(doc_ids) != len(self):
            raise CacheMismatchError(f"cache has {len(self)} rows but the corpus has {len(doc_ids)} documents")
        for i, (a, b) in enumerate(zip(self.doc_ids, doc_ids)):
            if a != str(b):
                raise CacheMismatchError(f"cache row {i} is doc id {a!r} but corpus row {i} is {b!r}")

    def _check_encoding_settings(self, retriever: RetrieverModel) -> None:
        """Dimension, pooling and normalisation must agree (always; no cache of another kind can be corrected)."""
        prov = self.provenance
        if self.dim != retriever.embedding_dim:
            raise CacheMismatchError(f"cache dimension {self.dim} != retriever dimension {retriever.embedding_dim} "
                                     f"(cache encoder {prov.get('encoder')!r})")
        for key in ("pooling", "normalize"):
            mine, theirs = prov.get(key), retriever.provenance()[key]
            if mine is not None and mine != theirs:
                raise CacheMismatchError(f"cache was built with {key}={mine!r}, the retriever uses {key}={theirs!r}")

    def check_model(self, retriever: RetrieverModel, strict_encoder: bool = False) -> None:
        """Compare provenance with a retriever: dimension, pooling and normalisation must agree.

        With ``strict_encoder`` the encoder names must agree too (otherwise a different name only logs a warning,
        since fine-tuned checkpoints are expected to read a cache written by their base model). This does not compare
        weights; :meth:`check_provenance` does.
        """
        self._check_encoding_settings(retriever)
        prov = self.provenance
        if prov.get("encoder") and prov.get("encoder") != retriever.provenance()["encoder"]:
            msg = f"cache encoder {prov.get('encoder')!r} differs from retriever {retriever.provenance()['encoder']!r}"
            if strict_encoder:
                raise CacheMismatchError(msg)
            logger.warning(msg)

    def check_provenance(
        self,
        retriever: RetrieverModel | None = None,
        doc_ids: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
        allow_other_weights: bool = False,
        max_length: int | None = None,
    ) -> None:
        """Raise :class:`CacheMismatchError` unless this cache belongs to this corpus and this target encoder.

        * ``doc_ids``: the rows must be exactly these ids, in order (:meth:`check_corpus`).
        * ``texts``: the corpus texts in row order must be the ones the cache was built over. Never allowed to differ.
        * ``retriever``: dimension, pooling and normalisation must agree (never allowed to differ); the target
          tower's weights, the target max length (``max_length``, default the retriever's ``target_max_length``)
          and the target prefix must be the ones that built the cache, and no row may have been rewritten during
          training (``steps``), unless ``allow_other_weights=True`` says on purpose that this is the stale cache to
          correct (then the differences are logged). On resume from a checkpoint, whose cache was written by
          earlier weights by design, check without ``retriever`` (ids and texts only).

        A cache saved without fingerprints (before hf_corrector recorded them) cannot be verified: a warning is
        logged and only the checks its provenance allows are made.
        """
        if doc_ids is not None:
            self.check_corpus(doc_ids)
        if texts is not None:
            self._check_texts(texts)
        if retriever is not None:
            self._check_encoder(retriever, allow_other_weights, max_length)

    def _check_texts(self, texts: Sequence[str]) -> None:
        where = self._where()
        if len(texts) != len(self):
            raise CacheMismatchError(f"{where} has {len(self)} rows but {len(texts)} corpus texts were given")
        recorded = self.provenance.get(TEXTS_KEY)
        if not (isinstance(recorded, str) and recorded.startswith(f"{SCHEME}:")):
            logger.warning("%s records no fingerprint of its corpus texts (saved by an older hf_corrector): cannot "
                           "verify that it was built over these texts; rebuild it with StaleCache.build to record "
                           "one", where)
            return
        actual = fingerprint_texts(texts)
        if actual != recorded:
            raise CacheMismatchError(
                f"{where} was built over other corpus texts: the texts of its {len(self)} rows differ from the corpus "
                f"given (texts fingerprint: cache {short(recorded)}, corpus {short(actual)}). A cache of other texts "
                f"is never used, not even as the stale cache to correct: rebuild it with "
                f"StaleCache.build(corpus, retriever), or pass no cache and let the trainer build one")

    def _check_encoder(self, retriever: RetrieverModel, allow_other_weights: bool, max_length: int | None) -> None:
        where = self._where()
        self._check_encoding_settings(retriever)
        prov = self.provenance
        differences = []
        recorded = prov.get(WEIGHTS_KEY)
        verifiable = isinstance(recorded, str) and recorded.startswith(f"{SCHEME}:")
        if verifiable:
            actual = fingerprint_retriever(retriever)
            if actual != recorded:
                differences.append(f"target weights {short(recorded)} (cache, encoder {prov.get('encoder')!r}) vs "
                                   f"{short(actual)} (retriever, encoder {retriever.provenance()['encoder']!r})")
        rewritten = self.steps != INITIAL_STEP
        if bool(rewritten.any()):  # write-back / refresh: those rows come from later weights than the recorded ones
            written = self.steps[rewritten]
            differences.append(f"{int(rewritten.sum())} of {len(self)} rows were rewritten during training (steps "
                               f"{int(written.min())}..{int(written.max())}) by later weights")
        length = max_length or retriever.config.target_max_length
        if prov.get("target_max_length") is not None and length is not None and prov["target_max_length"] != length:
            differences.append(f"target max length {prov['target_max_length']} (cache) vs {length} (retriever)")
        if "target_prefix" in prov and prov["target_prefix"] != retriever.config.target_prefix:
            differences.append(f"target prefix {prov['target_prefix']!r} (cache) vs "
                               f"{retriever.config.target_prefix!r} (retriever)")
        if not verifiable:
            logger.warning("%s records no fingerprint of the weights that encoded it (saved by an older "
                           "hf_corrector): cannot verify that it belongs to this retriever (cache encoder %r, "
                           "retriever %r); rebuild it with StaleCache.build to record one", where,
                           prov.get("encoder"), retriever.provenance()["encoder"])
        if not differences:
            return
        if allow_other_weights:
            logger.info("%s was encoded differently from this retriever, used on purpose as the stale cache to "
                        "correct: %s", where, "; ".join(differences))
            return
        raise CacheMismatchError(
            f"{where} was encoded by another target encoder than this retriever's: {'; '.join(differences)}. If "
            f"this is on purpose (it is the stale cache the corrector should learn to correct), say so with "
            f"check_provenance(..., allow_other_weights=True) (the trainer's cache_from_other_weights=True); "
            f"otherwise rebuild the cache with StaleCache.build(corpus, retriever)")


class CacheHeader(ProvenanceChecks):
    """A cache's facts without its embeddings, for :meth:`check_provenance` (e.g. of a whole sharded cache)."""

    def __init__(self, doc_ids: Sequence[str], steps: torch.Tensor, provenance: dict, dim: int,
                 source: str | None = None):
        self.doc_ids = doc_ids if isinstance(doc_ids, ArrowColumn) else [str(d) for d in doc_ids]
        self.steps, self.provenance = steps, dict(provenance)
        self.dim, self.source = int(dim), source

    def __len__(self) -> int:
        return len(self.doc_ids)


__all__ = ["CacheHeader", "ProvenanceChecks"]
