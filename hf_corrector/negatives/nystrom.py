"""Nyström low-rank correction of a stale cache (Monath et al., AISTATS 2023): a non-parametric corrector.

Every ``nystrom_refit_steps`` steps (and at step 0) ``m = nystrom_landmarks`` landmark targets are re-encoded
with the current target encoder g. With their stale cache rows ``S`` (m x d) and fresh rows ``G`` (m x d), a
linear map ``W`` (d x d) with ``S W ≈ G`` is fitted and applied to the whole cache when scoring: corrected rows
are ``rows @ W``. This is the Nyström extension with the linear kernel ``k(u, v) = <u, v>``, i.e. kernel ridge
regression from stale to fresh embeddings:

* ``m <= d``, dual (kernel) form: ``W = S^T (S S^T + λI)^{-1} G``. With ``λ = 0`` and ``S`` of full row rank,
  ``S W = G`` exactly: the map reproduces every landmark.
* ``m > d``, primal form: ``W = (S^T S + λI)^{-1} S^T G`` (the same map, by the push-through identity, at d x d
  cost; least squares on the landmarks).
* rank ``r`` (``nystrom_rank``): the *kernel* is truncated, the classic rank-r Nyström approximation. With the
  SVD ``S = U Σ V^T`` (``K = S S^T = U Σ² U^T``): ``W_r = V_r diag(σ_i / (σ_i² + λ)) U_r^T G``, keeping the r
  largest singular values. ``rank(W_r) <= r`` (= r unless G is degenerate). For ``r >= min(m, d)`` it equals the
  full map above.
* ``residual=True`` (``nystrom_residual``): fit the *change* instead, ``W = I + fit(S, G - S)``: still exact on
  landmarks, but directions that no landmark spans are left as they are (identity) instead of being mapped to 0,
  and the ridge shrinks towards "no drift" rather than towards zero embeddings. Advisable when ``m < d``. With a
  rank r, ``W - I`` has rank ``<= r``.

Landmarks are ``uniform`` (rows drawn by a generator seeded with ``(seed, step)``) or ``recent`` (the rows most
recently selected as training targets, which the cache manager reports after each step; topped up with uniform
rows while fewer have been seen). Each refit encodes the ``m`` landmarks through the cache manager (sharded over
the processes, so every process holds the same ``W``) and adds ``m`` to ``cost.landmark_encodings``.

After a full cache refresh the cache is fresh, so ``W`` is reset to the identity (no encodings spent) until the
next refit. Rows written back into the cache (``cache_write_back``) are already fresh but are mapped by ``W``
like every other row; the map is fitted on whatever the landmark rows hold at refit time. ``W``, the landmark
rows and the "recent" history are saved in checkpoints, so a resumed run scores exactly as the original.

Example:
    >>> import torch
    >>> S = torch.randn(4, 8); G = S + 0.1 * torch.randn(4, 8)
    >>> W = fit_nystrom_map(S, G, ridge=0.0)  # m = 4 <= d = 8: dual form, exact on landmarks
    >>> torch.allclose(S @ W, G, atol=1e-5)
    True
    >>> int(torch.linalg.matrix_rank(fit_nystrom_map(S, G, ridge=0.0, rank=2)))
    2

    With the trainer: ``CorrectorTrainingArguments(..., correction="nystrom", nystrom_landmarks=512,
    nystrom_refit_steps=20)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CacheMismatchError, ConfigError
from .topk import query_generator
from .transforms import ScoreTransform

logger = logging.getLogger(__name__)


@torch.no_grad()
def fit_nystrom_map(
    stale: torch.Tensor,
    fresh: torch.Tensor,
    ridge: float = 1e-3,
    rank: int | None = None,
    residual: bool = False,
) -> torch.Tensor:
    """The (d, d) map ``W`` with ``stale @ W ≈ fresh`` (see the module docstring for the forms used).

    Args:
        stale: (m, d) stale cache rows of the landmarks.
        fresh: (m, d) their fresh encodings.
        ridge: λ >= 0.
        rank: keep the r largest singular values of the landmark kernel (None = full rank).
        residual: fit ``W = I + fit(stale, fresh - stale)``.

    Returns:
        ``W`` as float32 on ``stale``'s device. Computed in float64.
    """
    if stale.ndim != 2 or stale.shape != fresh.shape:
        raise CacheMismatchError(f"stale {tuple(stale.shape)} and fresh {tuple(fresh.shape)} must both be (m, d)")
    if ridge < 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge}")
    if rank is not None and rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    S = stale.double()
    target = (fresh.double() - S) if residual else fresh.double()
    m, d = S.shape
    if rank is not None and rank < min(m, d):
        U, sig, Vh = torch.linalg.svd(S, full_matrices=False)
        U, sig, V = U[:, :rank], sig[:rank], Vh[:rank].T
        tol = sig.max().clamp_min(1e-300) * max(m, d) * torch.finfo(torch.float64).eps
        coef = torch.where(sig > tol, sig / (sig**2 + ridge), torch.zeros_like(sig))
        W = V @ (coef[:, None] * (U.T @ target))
    elif m <= d:
        K = S @ S.T + ridge * torch.eye(m, dtype=S.dtype, device=S.device)
        W = S.T @ _solve_psd(K, target)
    else:
        A = S.T @ S + ridge * torch.eye(d, dtype=S.dtype, device=S.device)
        W = _solve_psd(A, S.T @ target)
    if residual:
        W = W + torch.eye(d, dtype=W.dtype, device=W.device)
    return W.float()


def _solve_psd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A^{-1} B`` for a symmetric PSD ``A``; the pseudo-inverse (minimum norm) when ``A`` is singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    logger.debug("Nyström system is singular (rank-deficient landmarks, ridge 0): using the pseudo-inverse")
    return torch.linalg.pinv(A, hermitian=True) @ B


class NystromTransform(ScoreTransform):
    """The Nyström map ``rows -> rows @ W``, refitted on re-encoded landmarks (``correction="nystrom"``).

    Args:
        num_landmarks, selection, ridge, rank, refit_steps, residual: the ``nystrom_*`` training arguments.

    Attributes:
        W: the current (d, d) map (None before the first fit).
        landmarks: cache rows of the last fit's landmarks.
        fit_step: the step of the last fit (or refresh reset).
        last_fit: statistics of the last fit (``cos_stale``, ``cos_corrected`` on the landmarks, ``rel_error``).
    """

    name = "nystrom"
    citation = "nystrom"

    def __init__(self, num_landmarks: int = 512, selection: str = "uniform", ridge: float = 1e-3,
                 rank: int | None = None, refit_steps: int = 20, residual: bool = False):
        super().__init__()
        self.num_landmarks = int(num_landmarks)
        self.selection = selection
        self.ridge = float(ridge)
        self.rank = rank
        self.refit_steps = int(refit_steps)
        self.residual = bool(residual)
        if self.selection not in ("uniform", "recent"):
            raise ConfigError(f"nystrom landmark selection must be 'uniform' or 'recent', got {self.selection!r}")
        if self.num_landmarks < 1 or self.refit_steps < 1:
            raise ConfigError("nystrom_landmarks and nystrom_refit_steps must be >= 1")
        self.W: torch.Tensor | None = None
        self.identity = False
        self.landmarks = torch.zeros(0, dtype=torch.long)
        self.fit_step: int | None = None
        self.num_fits = 0
        self.recent: dict[int, None] = {}  # insertion-ordered: oldest first
        self.last_fit: dict[str, float] = {}

    # -- fitting ----------------------------------------------------------------------------------------------------
    def choose_landmarks(self, step: int) -> torch.Tensor:
        """The landmark rows for a fit at ``step`` (sorted)."""
        n = len(self.context.cache)
        m = min(self.num_landmarks, n)
        chosen: list[int] = []
        if self.selection == "recent":
            chosen = list(self.recent)[-m:]
        if len(chosen) < m:
            taken = set(chosen)
            perm = torch.randperm(n, generator=query_generator(self.context.seed, step, "nystrom-landmarks")).tolist()
            chosen += [r for r in perm if r not in taken][: m - len(chosen)]
        return torch.as_tensor(sorted(chosen), dtype=torch.long)

    @torch.no_grad()
    def fit(self, step: int) -> torch.Tensor:
        """Re-encode landmarks with the current g (counted as ``landmark_encodings``) and refit ``W``."""
        cache = self.context.cache
        rows = self.choose_landmarks(step)
        stale = cache.rows(rows)
        fresh = cache.encode_rows(rows, count_as="landmark_encodings", desc="encoding Nyström landmarks").float()
        W = fit_nystrom_map(stale, fresh, self.ridge, self.rank, self.residual)
        corrected = stale @ W
        self.last_fit = {
            "step": step,
            "num_landmarks": int(rows.numel()),
            "cos_stale": float(F.cosine_similarity(stale, fresh, dim=-1).mean()),
            "cos_corrected": float(F.cosine_similarity(corrected, fresh, dim=-1).mean()),
            "rel_error": float((corrected - fresh).norm() / fresh.norm().clamp_min(1e-12)),
        }
        logger.info("step %d: Nyström refit on %d landmarks: cos(g', g)=%.4f -> cos(g'W, g)=%.4f", step,
                    rows.numel(), self.last_fit["cos_stale"], self.last_fit["cos_corrected"])
        self.W, self.landmarks, self.fit_step, self.identity = W, rows, step, False
        self.num_fits += 1
        return W

    # -- the map ----------------------------------------------------------------------------------------------------
    def _function(self, step: int):
        """``rows -> rows @ W`` (fitting first if there is no map yet); None while ``W`` is the identity."""
        if self.W is None and not self.identity:
            self.fit(step)
        if self.identity:
            return None
        W = self.W

        def apply(rows: torch.Tensor) -> torch.Tensor:
            return rows.float() @ W.to(rows.device)

        return apply

    def _query_map(self) -> torch.Tensor | None:
        """``M = W`` with ``<q, v W> = <M q, v>`` (rows: ``q @ W.T``); None while there is no map."""
        if self.identity or self.W is None:
            return None
        return self.W

    # -- events -----------------------------------------------------------------------------------------------------
    def on_targets(self, rows: torch.Tensor) -> None:
        """Remember the step's targets (every process's) for ``recent`` landmarks."""
        if self.selection != "recent":
            return
        for r in rows.tolist():
            self.recent.pop(r, None)
            self.recent[r] = None
        while len(self.recent) > self.num_landmarks:
            self.recent.pop(next(iter(self.recent)))

    def on_step_end(self, step: int) -> None:
        if step > 0 and step % self.refit_steps == 0 and step != self.fit_step:
            self.fit(step)

    def on_cache_refreshed(self, step: int) -> None:
        """The cache was re-encoded: it is fresh, so the map becomes the identity until the next refit."""
        self.W = torch.eye(self.context.cache.dim)
        self.identity = True
        self.fit_step = step

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state = {"fit_step": self.fit_step, "identity": self.identity, "num_fits": self.num_fits,
                 "recent": list(self.recent), "last_fit": self.last_fit}
        tensors = {"landmarks": self.landmarks.clone()} if self.landmarks.numel() else {}
        if self.W is not None:
            tensors["W"] = self.W.clone()
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.fit_step = state.get("fit_step")
        self.identity = bool(state.get("identity", False))
        self.num_fits = int(state.get("num_fits", 0))
        self.recent = {int(r): None for r in state.get("recent", [])}
        self.last_fit = dict(state.get("last_fit", {}))
        self.W = tensors["W"].float() if "W" in tensors else None
        self.landmarks = tensors["landmarks"].long() if "landmarks" in tensors else torch.zeros(0, dtype=torch.long)
