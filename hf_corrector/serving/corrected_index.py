"""A deployable corrected index: serve a trained retriever without re-encoding the whole corpus.

After training, the stale cache g'(y) (written by the starting encoder) is mapped to an estimate of the current
g(y) and indexed with faiss; queries are encoded with the *new* query encoder. The served vectors are stored as a
:class:`~hf_corrector.StaleCache` (Arrow, with provenance under ``provenance["serving"]``: which map, which
corrector, which budget, which rows were re-encoded), so they save, load, push and pull like the cache.

How a row is served (``method``, see :mod:`hf_corrector.serving.maps`):

* a budget of ``reencode_budget * N`` rows (chosen by ``selection``, default a random sample) is re-encoded with
  the trained target encoder;
* a deployment map is fitted on those (stale, fresh) pairs (``corrector_ridge``: the trained corrector followed
  by a ridge-regressed linear residual, lambda by 5-fold CV; the default) and applied to every stale row;
* the re-encoded rows are served as their fresh vectors (``serve_fresh=True``), rows are L2-normalised when the
  retriever normalises its embeddings (worth about 2 nDCG@10 points over the raw corrector output).

The defaults (``corrector_ridge``, 5%, ``random``) are the best configuration measured within a 5% budget by
``benchmarks/serving.py`` (mean fraction of fresh nDCG@10 over SciFact S2L and the stdlib main job, 3 seeds each;
see BENCHMARKS.md). How close it gets depends on the drift: when the stale embeddings still hold what the new encoder
sees it serves about 99% of a fresh re-encoding; when the encoder drifted far (S2L, cos(g', g) = 0.78), no map of
g' gets past about 87% of fresh even fitted on the whole corpus, and only re-encoding more rows helps.

Column ``step`` tells the rows apart: :data:`CORRECTED_STEP` (-2) for mapped rows, the training step for rows
re-encoded at deployment.

Example:
    >>> index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.05)  # doctest: +SKIP
    >>> scores, doc_ids = index.search(["how do I sort a list"], k=10)  # doctest: +SKIP
    >>> index.save("served"); CorrectedIndex.load("served", retriever=trainer.retriever)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic_io import write_bytes_durably
from ..cache.card import render_cache_card
from ..cache.provenance import fingerprint_module, fingerprint_retriever
from ..cache.stale_cache import StaleCache
from ..errors import CacheCorruptError, CacheMismatchError, ConfigError
from ..negatives.candidates import INDEX_KINDS, CandidateIndex
from . import hub_io, storage
from .inputs import (check_bool, check_budget, check_choice, check_positive_int, check_query_embeddings,
                     check_query_texts)
from .maps import MAP_METHODS, fit_map, serve_matrix
from .search import search_rows
from .served_vectors import RETRIEVER_KEY, check_retriever, served_as
from .selection import SELECTIONS, select_rows

logger = logging.getLogger(__name__)

CORRECTED_STEP = -2  # ``step`` of a row served as map(g'(y))
VECTORS_DIR = storage.VECTORS_DIR
INDEX_FILE = storage.INDEX_FILE
DEFAULT_METHOD = "corrector_ridge"
DEFAULT_BUDGET = 0.05
DEFAULT_SELECTION = "random"


class CorrectedIndex:
    """Served corpus vectors (a :class:`StaleCache` with serving provenance) plus a faiss index over them.

    Args:
        vectors: the served vectors with provenance (as built by :func:`build_corrected_index`).
        retriever: the trained retriever whose query encoder searches the index (optional for pure vector search).
        index_kind: faiss index ``flat`` (exact), ``ivf`` or ``hnsw``.
        allow_other_retriever: search with a retriever other than the one that built the vectors (recorded in
            their provenance). Refused by default: its queries would live in another space than the vectors.

    Example:
        >>> index = build_corrected_index(retriever, corrector, cache, reencode_budget=0.05)  # doctest: +SKIP
        >>> scores, ids = index.search(["query text"], k=5)  # doctest: +SKIP
    """

    def __init__(self, vectors: StaleCache, retriever: Any = None, index_kind: str = "flat",
                 faiss_index: CandidateIndex | None = None, show_progress_bar: bool = True,
                 allow_other_retriever: bool = False):
        if not isinstance(vectors, StaleCache):
            raise ConfigError(f"vectors must be a StaleCache (as build_corrected_index makes), got "
                              f"{type(vectors).__name__}")
        check_choice(index_kind, INDEX_KINDS, "index_kind")
        check_bool(allow_other_retriever, "allow_other_retriever")
        if retriever is not None:
            check_retriever(vectors, retriever, allow_other_retriever)
        self.vectors = served_as(vectors, index_kind)
        self.retriever = retriever
        self.index_kind = index_kind
        if faiss_index is None:
            faiss_index = CandidateIndex(index_kind, pool_size=10)
            with tqdm(total=1, desc="building the faiss index", disable=not show_progress_bar) as bar:
                faiss_index.build(vectors.matrix())
                bar.update(1)
        self.faiss_index = faiss_index

    # -- properties -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def doc_ids(self) -> list[str]:
        return self.vectors.doc_ids

    @property
    def serving_info(self) -> dict:
        """What was served how: map, corrector, budget, selection, re-encoded rows (``provenance["serving"]``)."""
        return dict(self.vectors.provenance.get("serving", {}))

    # -- search -----------------------------------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        queries = check_query_texts(queries)
        batch_size = check_positive_int(batch_size, "batch_size")
        if self.retriever is None:
            raise ConfigError("searching with text needs the retriever: CorrectedIndex(..., retriever=...) or "
                              "CorrectedIndex.load(path, retriever=...)")
        with torch.no_grad():
            return self.retriever.encode_queries(list(queries), batch_size=batch_size, show_progress_bar=False)

    def search(self, queries: Sequence[str] | str | torch.Tensor, k: int = 10) -> tuple[torch.Tensor, list[list[str]]]:
        """Top-``k`` (scores (B, k), doc ids) for query texts (encoded with the new query encoder) or embeddings.

        Example:
            >>> scores, ids = index.search(["binary search in a sorted list"], k=3)  # doctest: +SKIP
        """
        k = check_positive_int(k, "k")
        if isinstance(queries, torch.Tensor) or (isinstance(queries, np.ndarray) and queries.dtype.kind not in "UO"):
            q = check_query_embeddings(queries, self.vectors.dim)
        else:
            texts = check_query_texts(queries)
            if not texts:
                return torch.zeros(0, min(k, len(self))), []
            q = check_query_embeddings(self.encode_queries(texts), self.vectors.dim, "the encoded queries")
        scores, rows = search_rows(self.faiss_index.index, self.vectors, q, k)
        doc_ids = self.doc_ids
        return scores, [[doc_ids[j] for j in row] for row in rows.tolist()]

    # -- building ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_trainer(cls, trainer: Any, reencode_budget: float = DEFAULT_BUDGET, method: str = DEFAULT_METHOD,
                     selection: str = DEFAULT_SELECTION, **kwargs: Any) -> CorrectedIndex:
        """Build from a trained :class:`~hf_corrector.CorrectorTrainer`; re-encodings are counted in
        ``trainer.cost`` (under ``refresh_encodings``: corpus rows re-encoded with the trained encoder).

        The training queries (encoded with the new query encoder) drive ``selection="retrieved"``.

        Example:
            >>> index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.05)  # doctest: +SKIP
        """
        check_budget(reencode_budget)  # before any work (gathering a sharded cache is a collective)
        check_choice(method, MAP_METHODS, "method")
        check_choice(selection, SELECTIONS, "selection")
        queries = None
        if selection == "retrieved" and trainer.train_examples is not None:
            queries = list(dict.fromkeys(trainer.train_examples["query"]))

        def encode_rows(rows: torch.Tensor) -> torch.Tensor:
            return trainer.cache_manager.encode_rows(rows, count_as="refresh_encodings",
                                                     desc="re-encoding the budget")

        # the whole cache: a served (flat) index holds every row by nature; sharded, the shards are gathered here
        cache = trainer.cache_manager.gathered()  # a collective when sharded: every process calls from_trainer
        return build_corrected_index(trainer.retriever, trainer.corrector, cache, trainer.corpus_texts,
                                     reencode_budget=reencode_budget, method=method, selection=selection,
                                     selection_queries=queries, encode_rows=encode_rows,
                                     step=int(trainer.state.global_step), seed=int(trainer.args.seed), **kwargs)

    # -- disk / Hub -------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/vectors`` (the Arrow vectors, :meth:`StaleCache.save`), ``path/index.faiss`` and
        ``path/serving_manifest.json``, atomically as a whole (see :mod:`hf_corrector.serving.storage`).

        ``path`` must not exist, be empty, or be a served index folder saved before; a folder holding anything else
        (an ``index.faiss`` of its own, a training ``output_dir``) raises :class:`UnsafeOverwriteError` and nothing
        is touched.

        Example:
            >>> index.save("outputs/served")  # doctest: +SKIP
        """
        given = Path(path)
        blob = self.faiss_index.serialize().numpy().tobytes()
        manifest = storage.make_manifest(self.vectors, blob, self.index_kind)
        card = render_cache_card(self.vectors, keep_existing_metadata=False)

        def write(tmp: Path) -> None:
            self.vectors.save(tmp / VECTORS_DIR, card=card)
            write_bytes_durably(tmp / INDEX_FILE, blob)
            write_bytes_durably(tmp / storage.MANIFEST_FILE, json.dumps(manifest, indent=2).encode())

        storage.write_served(given, write)
        return given

    @classmethod
    def load(cls, path: str | os.PathLike, retriever: Any = None, verify: str = "checksum",
             allow_other_retriever: bool = False) -> CorrectedIndex:
        """Load a folder written by :meth:`save`, verifying it (:mod:`hf_corrector.serving.storage`): the vectors
        against the manifest, ``index.faiss`` against its checksum and against the vectors (rows, dimension, a
        sample search agreeing with exact search). A mismatch raises :class:`CacheCorruptError` naming the file.

        ``retriever`` must be the one that built the index (its weights are recorded), unless
        ``allow_other_retriever=True``. ``verify``: ``"checksum"`` (default) or ``"rows"`` (no SHA-256 of the files;
        the structural checks and the sample search are always made).

        Example:
            >>> index = CorrectedIndex.load("outputs/served", retriever=load_retriever("outputs/model"))  # doctest: +SKIP
        """
        check_choice(verify, ("checksum", "rows", "none"), "verify")
        check_bool(allow_other_retriever, "allow_other_retriever")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no such folder: {path} (a folder written by CorrectedIndex.save)")
        if storage.TEMPORARY.match(path.name):
            raise CacheCorruptError(f"{path}: the temporary folder of a save that did not finish (killed); it is "
                                    f"removed by the next save or load of {path.name.split('.')[1]!r}")
        storage.remove_served_leftovers(path)
        manifest_file = path / storage.MANIFEST_FILE
        manifest = storage.read_manifest(manifest_file) if manifest_file.is_file() else None
        vectors = StaleCache.load(path / VECTORS_DIR, verify=verify)
        return cls._with_index(vectors, retriever, path / INDEX_FILE, manifest, str(manifest_file),
                               str(path / VECTORS_DIR), verify, allow_other_retriever)

    @classmethod
    def _with_index(cls, vectors: StaleCache, retriever: Any, index_file: Path | None, manifest: dict | None,
                    manifest_where: str, vectors_where: str, verify: str,
                    allow_other_retriever: bool) -> CorrectedIndex:
        kind = vectors.provenance.get("serving", {}).get("index_kind", "flat")
        if kind not in INDEX_KINDS:
            raise CacheCorruptError(f"{vectors_where}: provenance.serving.index_kind is {kind!r}, not one of "
                                    f"{list(INDEX_KINDS)}")
        if manifest is not None:
            storage.check_vectors(manifest, vectors, manifest_where, vectors_where)
            kind = manifest["index_kind"]  # the kind index.faiss was saved as (its checksum is in the manifest)
        else:
            logger.warning("%s has no %s (saved by an older hf_corrector): the faiss index is checked against the "
                           "vectors by rows, dimension and a sample search only; save it again to record checksums",
                           vectors_where, storage.MANIFEST_FILE)
        faiss_index = None
        if index_file is not None and index_file.is_file():
            blob = storage.read_index_blob(index_file, manifest, verify)
            faiss_index = CandidateIndex(kind, pool_size=10)
            try:
                faiss_index.deserialize(torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()))
            except (RuntimeError, ValueError, TypeError) as err:
                raise CacheCorruptError(f"{index_file}: cannot be read as a faiss index ({err}); build the served "
                                        f"index again or restore a copy") from None
            storage.verify_index(faiss_index.index, vectors, str(index_file), kind)
        elif manifest is not None:
            raise CacheCorruptError(f"{index_file}: missing, but {manifest_where} records it; build the served index "
                                    f"again or restore a copy")
        else:
            logger.info("no %s: building the faiss index from the vectors", INDEX_FILE)
        return cls(vectors, retriever=retriever, index_kind=kind, faiss_index=faiss_index,
                   allow_other_retriever=allow_other_retriever)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload served index") -> str:
        """Publish as a dataset repo in one commit: the vectors as parquet (as the cache is published), their
        ``cache_info.json``, the dataset card, ``index.faiss`` and ``serving_manifest.json``.

        Example:
            >>> index.push_to_hub("me/my-served-corpus")  # doctest: +SKIP
        """
        blob = self.faiss_index.serialize().numpy().tobytes()
        return hub_io.push_served(self.vectors, blob, storage.make_manifest(self.vectors, blob, self.index_kind),
                                  repo_id, private=private, token=token, commit_message=commit_message)

    @classmethod
    def from_hub(cls, repo_id: str, retriever: Any = None, revision: str | None = None, token: str | None = None,
                 verify: str = "checksum", allow_other_retriever: bool = False) -> CorrectedIndex:
        """Load an index published with :meth:`push_to_hub`, verified as :meth:`load` verifies a folder (every file
        is read from the same commit)."""
        check_choice(verify, ("checksum", "rows", "none"), "verify")
        check_bool(allow_other_retriever, "allow_other_retriever")
        manifest, vectors, index_file = hub_io.download_served(repo_id, revision=revision, token=token, verify=verify)
        return cls._with_index(vectors, retriever, index_file if index_file is not None else Path(repo_id) / INDEX_FILE,
                               manifest, f"{repo_id}/{storage.MANIFEST_FILE}", f"{repo_id} (vectors)", verify,
                               allow_other_retriever)


def build_corrected_index(retriever: Any, corrector: Any, cache: StaleCache, texts: Sequence[str] | None = None,
                          reencode_budget: float = DEFAULT_BUDGET, method: str = DEFAULT_METHOD,
                          selection: str = DEFAULT_SELECTION, selection_queries: Sequence[str] | None = None,
                          serve_fresh: bool = True, normalize: bool | None = None, index_kind: str = "flat",
                          encode_rows: Callable[[torch.Tensor], torch.Tensor] | None = None, step: int = 0,
                          seed: int = 0, chunk_size: int = 65536, batch_size: int = 64,
                          show_progress_bar: bool = True) -> CorrectedIndex:
    """Write the corpus as map(g'(y)) (plus re-encoded rows) and index it: one call, chunked, with progress bars.

    Args:
        retriever: the trained retriever (its target encoder re-encodes the budget; its query encoder searches).
        corrector: the trained corrector h (``None``: only maps that do not need it).
        cache: the stale cache g' the corrector was trained on.
        texts: corpus texts in cache order (needed when ``reencode_budget > 0`` and no ``encode_rows`` is given).
        reencode_budget: fraction of the corpus re-encoded at deployment (0 = none).
        method: deployment map (:data:`~hf_corrector.serving.maps.MAP_METHODS`); with budget 0, ``corrector_ridge``
            falls back to ``corrector`` and the fitted baselines raise.
        selection: ``random`` or ``retrieved`` (the rows most often in the top-10 of ``selection_queries``).
        serve_fresh: serve the re-encoded rows as their fresh vectors.
        normalize: L2-normalise the served rows (default: as the retriever does).
        encode_rows: ``rows -> (m, d)`` fresh embeddings (default: ``retriever.encode_targets`` on ``texts``).
        step: the training step recorded for re-encoded rows.

    Example:
        >>> index = build_corrected_index(retriever, corrector, cache, texts, reencode_budget=0.05)  # doctest: +SKIP
    """
    reencode_budget = check_budget(reencode_budget)
    check_choice(method, MAP_METHODS, "method")
    check_choice(selection, SELECTIONS, "selection")
    check_choice(index_kind, INDEX_KINDS, "index_kind")
    serve_fresh = check_bool(serve_fresh, "serve_fresh")
    normalize = None if normalize is None else check_bool(normalize, "normalize")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not isinstance(cache, StaleCache):
        raise ConfigError(f"cache must be a StaleCache, got {type(cache).__name__}")
    if retriever is not None:
        cache._check_encoding_settings(retriever)  # dimension, pooling, normalisation
    if corrector is not None and getattr(getattr(corrector, "config", None), "embedding_dim", cache.dim) != cache.dim:
        raise CacheMismatchError(f"the corrector maps {corrector.config.embedding_dim}-d vectors, the cache holds "
                                 f"{cache.dim}-d ones")
    if texts is not None:
        texts = check_query_texts(texts, "texts")
        cache.check_provenance(texts=texts)  # a cache of other texts is never served
    if selection_queries is not None:
        selection_queries = check_query_texts(selection_queries, "selection_queries")
    if method in ("corrector", "corrector_ridge") and corrector is None:
        logger.warning("no corrector: serving with method 'identity' fitted maps only")
        method = "identity" if method == "corrector" else "lowrank_affine"
    n = len(cache)
    normalize = bool(getattr(getattr(retriever, "config", None), "normalize", True)) if normalize is None else normalize
    base = fit_map("corrector", cache.matrix()[:0].float(), cache.matrix()[:0].float(), corrector) \
        if corrector is not None else (lambda x: x)
    rows = torch.zeros(0, dtype=torch.long)
    fresh = torch.zeros(0, cache.dim)
    if reencode_budget > 0:
        if encode_rows is None:
            if texts is None:
                raise ConfigError("re-encoding a budget needs the corpus texts (texts=...) or encode_rows=...")
            texts = list(texts)

            def encode_rows(r: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return retriever.encode_targets([texts[i] for i in r.tolist()], batch_size=batch_size,
                                                    show_progress_bar=False)
        q = None
        if selection == "retrieved" and selection_queries:
            with torch.no_grad():
                q = retriever.encode_queries(list(selection_queries), batch_size=batch_size, show_progress_bar=False)
        corrected = serve_matrix(cache, base, normalize=normalize, chunk_size=chunk_size,
                                 progress=tqdm(total=n, desc="correcting the cache (for selection)",
                                               disable=not show_progress_bar or q is None)) if q is not None else None
        rows = select_rows(n, reencode_budget, selection, seed=seed, queries=q, corpus=corrected)
        del corrected
        parts = []
        with tqdm(total=rows.numel(), desc="re-encoding the budget", disable=not show_progress_bar) as bar:
            for i in range(0, rows.numel(), chunk_size):
                parts.append(encode_rows(rows[i : i + chunk_size]).float().cpu())
                bar.update(min(chunk_size, rows.numel() - i))
        fresh = torch.cat(parts) if parts else fresh
    if rows.numel() == 0 and method not in ("identity", "corrector", "corrector_ridge"):
        raise ConfigError(f"method {method!r} is fitted on re-encoded rows: give reencode_budget > 0")
    fitted_method = "corrector" if method == "corrector_ridge" and rows.numel() == 0 else method
    with tqdm(total=1, desc=f"fitting the deployment map ({fitted_method})", disable=not show_progress_bar) as bar:
        fn = fit_map(fitted_method, cache.rows(rows), fresh, corrector, seed=seed)
        bar.update(1)
    served = serve_matrix(cache, fn, rows if serve_fresh else None, fresh if serve_fresh else None,
                          normalize=normalize, chunk_size=chunk_size,
                          progress=tqdm(total=n, desc="correcting the cache", disable=not show_progress_bar))
    steps = torch.full((n,), CORRECTED_STEP, dtype=torch.long)
    if serve_fresh and rows.numel():
        steps[rows] = int(step)
    provenance = dict(cache.provenance)
    provenance["serving"] = {
        "kind": "corrected", "method": fitted_method, "reencode_budget": float(reencode_budget),
        "selection": selection, "reencoded_rows": int(rows.numel()), "serve_fresh": bool(serve_fresh),
        "normalize": bool(normalize), "index_kind": index_kind, "step": int(step),
        "corrector": None if corrector is None else {
            "name_or_path": getattr(corrector, "name_or_path", None) or None,
            "architecture": corrector.config.architecture, "num_parameters": int(corrector.num_parameters_total)},
        "retriever_fingerprint": fingerprint_retriever(retriever) if retriever is not None else None,
        RETRIEVER_KEY: fingerprint_module(retriever) if retriever is not None else None,
        "corrected_step": CORRECTED_STEP,
    }
    vectors = StaleCache(cache.doc_ids, served, steps=steps, provenance=provenance, dtype=cache.dtype)
    logger.info("served %d rows: %d mapped with %s, %d re-encoded (budget %.3g, %s)", n, n - int(rows.numel()),
                fitted_method, int(rows.numel()), reencode_budget, selection)
    index = CorrectedIndex(vectors, index_kind=index_kind, show_progress_bar=show_progress_bar)
    index.retriever = retriever  # the one just fingerprinted into the provenance: no second pass over its weights
    return index
