"""Two-stage negative selection for huge caches: a faiss index over the stale cache proposes candidates.

Scoring every cache row with the corrector each step costs O(N d) (plus the corrector's O(N d h)); with
``candidate_index`` set, a faiss index over the *stale* cache returns ``P = candidate_pool_size`` rows per query
and :class:`TwoStageSampler` re-scores only those with the (corrected) scores, choosing the negatives (top-k or
Gumbel-top-k) inside the pool.

Index kinds (all inner product):

* ``flat``: ``IndexFlatIP``, exact search.
* ``ivf``: ``IndexIVFFlat`` with ``nlist ≈ 4 sqrt(N)`` lists (at most N / 39, the k-means minimum of faiss), trained
  on the cache, searched with ``nprobe`` lists (``candidate_nprobe``, default 16).
* ``hnsw``: ``IndexHNSWFlat`` (M = 32) with ``METRIC_INNER_PRODUCT``, ``efSearch = max(64, P)``.

Measured on a synthetic 1,000,000 x 384 cache (``benchmarks/candidate_recall.py``, BENCHMARKS.md section 2b): ``ivf``
kept 0.997-1.000 of the exact corrected top-10 in the pool for P = 64-4096, ``hnsw`` 0.76-0.94 (faiss' default
construction beam of 40 gives a weak graph on high-dimensional, weakly clustered data); prefer ``ivf`` for large
caches.

Which query searches the stale index:

* the **linear corrector** ``h(v) = A v + b`` (``correction="linear"``): the index is searched with ``A^T q``
  (from :meth:`CorrectorModel.query_transform`). Since ``<q, A v + b> = <A^T q, v> + <q, b>`` and ``<q, b>`` is
  the same for every row of a query, the stale index ranks rows *exactly* by corrected score: with ``P = N`` (or
  any ``P`` on a flat index) the pool contains the exact corrected top-P.
* the **Nyström map** (``correction="nystrom"``): likewise exact, searched with ``W q`` (``<q, v W> = <q W^T, v>``).
* the **MLP corrector** ``h(v) = v + MLP(v)``: the index is searched with ``q`` itself, so the pool holds the rows
  with the best *stale* scores. The corrected top-k is found when every row it contains is within the stale top-P,
  i.e. when the correction ``<q, MLP(v)>`` moves no row up by more than the margin between the stale k-th and
  P-th scores. The larger the drift the larger P must be; ``benchmarks/candidate_recall.py`` measures the recall
  of the exact corrected top-k inside the pool as a function of P.
* no correction (or the corrector fell back to uncorrected scores): ``q`` itself, exact with a flat index.

Maintenance: the index is built at the first selection (train start) and rebuilt after each full cache
refresh (``on_cache_refreshed``). Rows written back into the cache (``cache_write_back``) are updated in the index at
refresh time only: until then the index proposes them by their old vectors, but the second stage scores them by
their current cache rows. For an exact resume the index is saved with the checkpoint's method state: flat and ivf
indexes as the vectors of the rows written back since the build (the index is rebuilt deterministically from the
restored cache with those rows put back), hnsw indexes (whose multi-threaded construction is not deterministic)
serialised whole (about ``N d`` floats plus the graph). Each process builds its own index. faiss is an optional
dependency (``pip install faiss-cpu``), imported only when an index is used.

Example:
    >>> import torch
    >>> cache = torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1)
    >>> index = CandidateIndex("flat", pool_size=50)
    >>> index.build(cache)
    >>> index.search(cache[:2]).shape
    torch.Size([2, 50])

    With the trainer: ``CorrectorTrainingArguments(..., candidate_index="ivf", candidate_pool_size=1024)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import NegativeSampler, ScoreLimits
from .topk import Selection, select_negatives
from .transforms import ScoreTransform

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")
HNSW_M = 32


def require_faiss():
    """Import faiss, or raise an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("candidate_index needs faiss: pip install faiss-cpu (or faiss-gpu)") from err
    return faiss


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` rows: about ``4 sqrt(n)``, at most ``n / 39`` (faiss' k-means minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


class CandidateIndex:
    """A faiss inner-product index over a matrix, returning ``pool_size`` candidate rows per query.

    Args:
        kind: ``flat``, ``ivf`` or ``hnsw``.
        pool_size: candidates per query (capped at the number of rows).
        nprobe: IVF lists searched per query.
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search beam (raised to at least ``pool_size``).
    """

    def __init__(self, kind: str, pool_size: int, nprobe: int = 16, hnsw_m: int = HNSW_M, ef_search: int = 64):
        if kind not in INDEX_KINDS:
            raise ConfigError(f"candidate index must be one of {INDEX_KINDS}, got {kind!r}")
        if pool_size < 1 or nprobe < 1:
            raise ConfigError(f"candidate_pool_size and nprobe must be >= 1, got {pool_size}, {nprobe}")
        self.kind = kind
        self.pool_size = int(pool_size)
        self.nprobe = int(nprobe)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.index: Any = None
        self.num_rows = 0

    def build(self, matrix: torch.Tensor) -> None:
        """Index the rows of an (N, d) matrix (converted to float32)."""
        faiss = require_faiss()
        x = np.ascontiguousarray(matrix.detach().to("cpu", torch.float32).numpy())
        n, d = x.shape
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif self.kind == "ivf":
            nlist = ivf_nlist(n)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # keep the quantizer alive as long as the index
            index.cp.seed = 1234
            index.train(x)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.add(x)
        if self.kind == "ivf":
            index.make_direct_map()  # so that reconstruct() works (checkpoints)
        self.index, self.num_rows = index, n
        self._configure()

    def _configure(self) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, self.pool_size)

    def search(self, queries: torch.Tensor, pool_size: int | None = None) -> torch.Tensor:
        """(B, P) candidate rows per query (-1 where the index found fewer), best first."""
        if self.index is None:
            raise ConfigError("the candidate index has not been built")
        p = min(pool_size or self.pool_size, self.num_rows)
        q = np.ascontiguousarray(queries.detach().to("cpu", torch.float32).numpy())
        _, ids = self.index.search(q, p)
        return torch.from_numpy(ids.astype(np.int64))

    def reconstruct(self, rows: torch.Tensor) -> torch.Tensor:
        """The indexed vectors of ``rows`` (as they were when indexed)."""
        ids = np.ascontiguousarray(rows.cpu().numpy().astype(np.int64))
        return torch.from_numpy(self.index.reconstruct_batch(ids)) if len(ids) else torch.zeros(0, self.index.d)

    def serialize(self) -> torch.Tensor:
        return torch.from_numpy(require_faiss().serialize_index(self.index).copy())

    def deserialize(self, blob: torch.Tensor) -> None:
        """Read a serialised index of this ``kind`` (ValueError naming both when the blob holds another kind)."""
        index = require_faiss().deserialize_index(blob.numpy().astype(np.uint8))
        found = index_kind_of(index)
        if found != self.kind:
            raise ValueError(f"it holds a faiss {type(index).__name__} ({found or 'not a kind this library builds'}), "
                             f"not the {self.kind!r} index it is read as")
        self.index = index
        self.num_rows = int(self.index.ntotal)
        self._configure()


def index_kind_of(index: Any) -> str | None:
    """Which of :data:`INDEX_KINDS` the faiss object ``index`` is (``None``: another type).

    Example:
        >>> import faiss
        >>> index_kind_of(faiss.IndexFlatIP(4))
        'flat'
    """
    faiss = require_faiss()
    for kind, cls in (("flat", faiss.IndexFlat), ("ivf", faiss.IndexIVF), ("hnsw", faiss.IndexHNSW)):
        if isinstance(index, cls):
            return kind
    return None


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row of ``rows`` sorted ascending, with the -1 padding moved to the end."""
    big = torch.iinfo(torch.long).max
    out = rows.masked_fill(rows < 0, big).sort(dim=1).values
    return out.masked_fill(out == big, -1)


class TwoStageSampler(NegativeSampler):
    """Two-stage selection (``candidate_index`` in ``flat``, ``ivf``, ``hnsw``): a faiss index over the stale cache
    proposes ``pool_size`` rows per query, which are re-scored through the transform and chosen from (top-k or
    Gumbel-top-k).

    Args:
        kind, pool_size, nprobe: the ``candidate_*`` training arguments.
        method, temperature: as for :class:`~hf_corrector.negatives.exhaustive.ExhaustiveSampler`.
        transform: the score transform; its :meth:`query_map` (linear corrector ``A^T``, Nyström ``W``) turns the
            query into the one the stale index is searched with.
    """

    name = "two-stage"
    citation = "corrector"

    def __init__(self, kind: str = "ivf", pool_size: int = 1024, nprobe: int = 16, method: str = "topk",
                 temperature: float = 1.0, transform: ScoreTransform | None = None):
        super().__init__(transform)
        self.index = CandidateIndex(kind, int(pool_size), nprobe=int(nprobe))
        self.method = method
        self.temperature = float(temperature)
        self.built_step: int | None = None
        self.written: set[int] = set()  # rows written back since the build
        self._restore: dict[int, torch.Tensor] | None = None  # build-time rows to put back on rebuild (resume)
        self.step = 0

    @property
    def description(self) -> str:
        return f"two-stage: {self.index.kind} faiss index over the stale cache, {self.index.pool_size} candidates " \
               f"re-scored with {self.transform.name} scores"

    def build(self, step: int) -> None:
        matrix = self.ctx.cache.local_matrix()  # not sharded: every row
        if self._restore:
            matrix = matrix.float().clone()
            rows = torch.as_tensor(sorted(self._restore), dtype=torch.long)
            matrix[rows] = torch.stack([self._restore[int(r)] for r in rows])
        self._restore = None
        self.index.build(matrix)
        self.built_step = step
        logger.info("step %d: built a %s candidate index over %d cache rows", step, self.index.kind,
                    self.index.num_rows)

    def search_queries(self, q: torch.Tensor) -> torch.Tensor:
        """The vectors the stale index is searched with (``A^T q`` for the linear corrector, ``W q`` for Nyström)."""
        q = q.float()
        matrix = self.transform.query_map()
        return q if matrix is None else q @ matrix.to(q.device, torch.float32).T

    def candidates(self, q: torch.Tensor, step: int) -> torch.Tensor:
        """(B, P) cache rows per query, in ascending row order (-1 last).

        Row order (not rank order) makes Gumbel-top-k with ``P = N`` draw the same noise per row as the full pass,
        so two-stage selection then equals exact selection for both ``topk`` and ``gumbel``.
        """
        if self.index.index is None:
            self.build(step)
        return _sorted_rows(self.index.search(self.search_queries(q)))

    def sample(self, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str], k: int, step: int,
               limits: ScoreLimits | None = None) -> Selection:
        ctx = self.ctx
        limits = limits or ScoreLimits()
        transform = self.transform.function(step)  # a Nyström map is fitted before the query map is read
        candidates = self.candidates(queries, step)
        return select_negatives(queries, ctx.cache.rows, k, exclude=exclude, method=self.method,
                                temperature=self.temperature, noise_keys=keys, seed=ctx.seed, step=step,
                                transform=transform, candidates=candidates, max_scores=limits.max_scores,
                                skip_top=limits.skip_top)

    def on_targets(self, rows: torch.Tensor) -> None:
        super().on_targets(rows)
        if self.ctx.cache.write_back and self.index.index is not None:
            self.written.update(int(r) for r in rows.tolist())

    def on_cache_refreshed(self, step: int) -> None:
        super().on_cache_refreshed(step)
        self.written.clear()
        self.build(step)

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = super().state_dict()
        state.update({"built_step": self.built_step, "kind": self.index.kind})
        if self.index.index is None:
            return state, tensors
        if self.index.kind == "hnsw":
            tensors["index"] = self.index.serialize()
        elif self.written:
            rows = torch.as_tensor(sorted(self.written), dtype=torch.long)
            tensors["written_rows"] = rows
            tensors["written_vectors"] = self.index.reconstruct(rows)
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state, tensors)
        self.built_step = state.get("built_step")
        self.written = set()
        self._restore = None
        if state.get("kind", self.index.kind) != self.index.kind:
            logger.warning("the checkpoint's candidate index was %s, now %s: rebuilding from the cache",
                           state.get("kind"), self.index.kind)
            return
        if "index" in tensors:
            self.index.deserialize(tensors["index"])
        elif "written_rows" in tensors:
            rows, vectors = tensors["written_rows"].long(), tensors["written_vectors"].float()
            self._restore = {int(r): v for r, v in zip(rows.tolist(), vectors)}
            self.written = set(self._restore)
