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

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache.provenance import fingerprint_retriever
from ..cache.stale_cache import StaleCache
from ..errors import ConfigError
from ..negatives.candidates import CandidateIndex
from .maps import MAP_METHODS, fit_map
from .selection import SELECTIONS, select_rows

logger = logging.getLogger(__name__)

CORRECTED_STEP = -2  # ``step`` of a row served as map(g'(y))
VECTORS_DIR = "vectors"
INDEX_FILE = "index.faiss"
DEFAULT_METHOD = "corrector_ridge"
DEFAULT_BUDGET = 0.05
DEFAULT_SELECTION = "random"


def serve_matrix(stale: torch.Tensor | StaleCache, fn: Callable[[torch.Tensor], torch.Tensor],
                 rows: torch.Tensor | None = None, fresh: torch.Tensor | None = None, normalize: bool = True,
                 chunk_size: int = 65536, progress: tqdm | None = None) -> torch.Tensor:
    """The served (N, d) float32 matrix: ``fn`` over stale rows in chunks, then ``fresh`` written into ``rows``.

    Example:
        >>> m = serve_matrix(torch.eye(3), lambda x: 2 * x, torch.tensor([1]), torch.ones(1, 3), normalize=False)
        >>> m.tolist()
        [[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]]
    """
    chunks = stale.iter_chunks(chunk_size) if isinstance(stale, StaleCache) else (
        (i, stale[i : i + chunk_size]) for i in range(0, stale.shape[0], chunk_size))
    parts = []
    with torch.no_grad():
        for _, chunk in chunks:
            parts.append(fn(chunk.float()).float().cpu())
            if progress is not None:
                progress.update(chunk.shape[0])
    out = torch.cat(parts) if parts else torch.zeros(0, 0)
    if rows is not None and fresh is not None and rows.numel():
        out[rows] = fresh.float().cpu()
    if normalize:
        out = torch.nn.functional.normalize(out, dim=-1)
    return out


class CorrectedIndex:
    """Served corpus vectors (a :class:`StaleCache` with serving provenance) plus a faiss index over them.

    Args:
        vectors: the served vectors with provenance (as built by :func:`build_corrected_index`).
        retriever: the trained retriever whose query encoder searches the index (optional for pure vector search).
        index_kind: faiss index ``flat`` (exact), ``ivf`` or ``hnsw``.

    Example:
        >>> index = build_corrected_index(retriever, corrector, cache, reencode_budget=0.05)  # doctest: +SKIP
        >>> scores, ids = index.search(["query text"], k=5)  # doctest: +SKIP
    """

    def __init__(self, vectors: StaleCache, retriever: Any = None, index_kind: str = "flat",
                 faiss_index: CandidateIndex | None = None, show_progress_bar: bool = True):
        self.vectors = vectors
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
        if isinstance(queries, str):
            queries = [queries]
        q = queries if isinstance(queries, torch.Tensor) else self.encode_queries(queries)
        if q.ndim != 2 or q.shape[1] != self.vectors.dim:
            raise ConfigError(f"queries must be (B, {self.vectors.dim}) embeddings, got {tuple(q.shape)}")
        k = min(int(k), len(self))
        scores, idx = self.faiss_index.index.search(np.ascontiguousarray(q.detach().float().cpu().numpy()), k)
        ids = [[self.doc_ids[j] for j in row if j >= 0] for row in idx.tolist()]
        return torch.from_numpy(scores), ids

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
        """Write ``path/vectors`` (the Arrow vectors, :meth:`StaleCache.save`) and ``path/index.faiss``.

        Example:
            >>> index.save("outputs/served")  # doctest: +SKIP
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        from ..hub.cache_card import render_cache_card

        self.vectors.save(path / VECTORS_DIR, card=render_cache_card(self.vectors, keep_existing_metadata=False))
        blob = self.faiss_index.serialize().numpy()
        tmp = path / f".{INDEX_FILE}.tmp-{os.getpid()}"
        tmp.write_bytes(blob.tobytes())
        os.replace(tmp, path / INDEX_FILE)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, retriever: Any = None, verify: str = "checksum") -> CorrectedIndex:
        """Load a folder written by :meth:`save` (the faiss index is rebuilt if ``index.faiss`` is missing)."""
        path = Path(path)
        vectors = StaleCache.load(path / VECTORS_DIR, verify=verify)
        return cls._with_index(vectors, retriever, path / INDEX_FILE)

    @classmethod
    def _with_index(cls, vectors: StaleCache, retriever: Any, index_file: Path | None) -> CorrectedIndex:
        kind = vectors.provenance.get("serving", {}).get("index_kind", "flat")
        faiss_index = None
        if index_file is not None and index_file.is_file():
            faiss_index = CandidateIndex(kind, pool_size=10)
            faiss_index.deserialize(torch.from_numpy(np.frombuffer(index_file.read_bytes(), dtype=np.uint8).copy()))
            if faiss_index.num_rows != len(vectors):
                logger.warning("%s holds %d rows but the vectors %d: rebuilding the index", index_file,
                               faiss_index.num_rows, len(vectors))
                faiss_index = None
        return cls(vectors, retriever=retriever, index_kind=kind, faiss_index=faiss_index)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
        """Publish as a dataset repo: the vectors as the cache is published, plus ``index.faiss``.

        Example:
            >>> index.push_to_hub("me/my-served-corpus")  # doctest: +SKIP
        """
        from huggingface_hub import HfApi

        self.vectors.push_to_hub(repo_id, private=private, token=token, commit_message="Upload served vectors")
        HfApi(token=token).upload_file(path_or_fileobj=self.faiss_index.serialize().numpy().tobytes(),
                                       path_in_repo=INDEX_FILE, repo_id=repo_id, repo_type="dataset",
                                       commit_message="Add the faiss index")
        return repo_id

    @classmethod
    def from_hub(cls, repo_id: str, retriever: Any = None, revision: str | None = None, token: str | None = None,
                 verify: str = "checksum") -> CorrectedIndex:
        """Load an index published with :meth:`push_to_hub`."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        vectors = StaleCache.from_hub(repo_id, revision=revision, token=token, verify=verify)
        try:
            index_file = Path(hf_hub_download(repo_id, INDEX_FILE, repo_type="dataset", revision=revision, token=token))
        except EntryNotFoundError:
            index_file = None
        return cls._with_index(vectors, retriever, index_file)


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
    if method not in MAP_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {MAP_METHODS}")
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
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
        "corrected_step": CORRECTED_STEP,
    }
    vectors = StaleCache(cache.doc_ids, served, steps=steps, provenance=provenance, dtype=cache.dtype)
    logger.info("served %d rows: %d mapped with %s, %d re-encoded (budget %.3g, %s)", n, n - int(rows.numel()),
                fitted_method, int(rows.numel()), reencode_budget, selection)
    return CorrectedIndex(vectors, retriever=retriever, index_kind=index_kind, show_progress_bar=show_progress_bar)
