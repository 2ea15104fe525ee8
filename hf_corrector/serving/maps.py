"""Deployment maps: fitted from stale g'(y) to fresh g(y) on a sample of re-encoded corpus rows.

A map m is applied to every stale row at deployment; the served corpus is m(g'(y)) (plus, optionally, the fresh
rows themselves for the re-encoded sample). Maps (``fit_map(method, ...)``):

=====================  ==================================================================================
``identity``           the stale cache as it is
``corrector``          the trained corrector h, as it is
``procrustes``         orthogonal Procrustes R = U V^T from the SVD of X^T Y (Drift-Adapter "OP")
``lowrank_affine``     x + x W + b with W a rank-r ridge solution (Drift-Adapter "LA")
``residual_mlp``       x + MLP(x), trained with MSE (Drift-Adapter "MLP")
``corrector_ridge``    h(x) + h(x) W + b, W a ridge regression of the residual g - h(g'), lambda by k-fold CV
=====================  ==================================================================================

Example:
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1); r = torch.linalg.qr(torch.randn(8, 8))[0]
    >>> m = fit_map("procrustes", x, x @ r)
    >>> bool(torch.allclose(m(x), x @ r, atol=1e-4))
    True
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..cache.stale_cache import StaleCache
from ..errors import ConfigError

logger = logging.getLogger(__name__)

MAP_METHODS = ("identity", "corrector", "procrustes", "lowrank_affine", "residual_mlp", "corrector_ridge")
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class LinearResidualMap(nn.Module):
    """``y = base(x) + base(x) @ W + b`` (``base`` defaults to the identity)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, base: nn.Module | None = None):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x).float() if self.base is not None else x.float()
        return z + z @ self.weight + self.bias


class OrthogonalMap(nn.Module):
    """``y = x @ R`` with R orthogonal."""

    def __init__(self, rotation: torch.Tensor):
        super().__init__()
        self.register_buffer("rotation", rotation.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.rotation


class ResidualMLPMap(nn.Module):
    """``y = x + W2 act(W1 x + b1) + b2`` (W2, b2 start at zero: the identity)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x + self.net(x)


class _Frozen(nn.Module):
    """Wrap a (corrector) module for inference: eval mode, no gradients, float32 out."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was = self.module.training
        self.module.eval()
        try:
            device = next(self.module.parameters()).device
            return self.module(x.to(device)).float().cpu()
        finally:
            self.module.train(was)


def _ridge(z: torch.Tensor, target: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered ridge regression target ~ z W + b (lam scaled by mean eigenvalue of the centered Gram)."""
    zm, tm = z.mean(0), target.mean(0)
    zc, tc = z - zm, target - tm
    gram = zc.T @ zc
    scale = float(torch.trace(gram)) / gram.shape[0] + 1e-12
    w = torch.linalg.solve(gram + lam * scale * torch.eye(gram.shape[0], dtype=gram.dtype), zc.T @ tc)
    return w, tm - zm @ w


def ridge_cv(z: torch.Tensor, target: torch.Tensor, grid: tuple[float, ...] = RIDGE_GRID, folds: int = 5,
             seed: int = 0) -> float:
    """The ridge strength of ``grid`` with the lowest k-fold squared error (ties: the larger strength)."""
    n = z.shape[0]
    if n < 2 * folds:
        return max(grid)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    errors = []
    for lam in grid:
        err = 0.0
        for k in range(folds):
            test = perm[k::folds]
            mask = torch.ones(n, dtype=torch.bool)
            mask[test] = False
            w, b = _ridge(z[mask], target[mask], lam)
            err += float(((z[test] @ w + b - target[test]) ** 2).sum())
        errors.append(err)
    best = min(range(len(grid)), key=lambda i: (errors[i], -grid[i]))
    logger.info("ridge CV over %s: errors %s -> lambda %s", grid, [round(e, 4) for e in errors], grid[best])
    return grid[best]


def fit_map(method: str, stale: torch.Tensor, fresh: torch.Tensor, corrector: nn.Module | None = None,
            rank: int = 32, hidden: int = 256, epochs: int = 300, lr: float = 1e-3, weight_decay: float = 1e-4,
            seed: int = 0, ridge: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit ``method`` (one of :data:`MAP_METHODS`) from ``stale`` (n, d) to ``fresh`` (n, d) rows.

    ``corrector`` is needed by ``corrector`` and ``corrector_ridge``. ``ridge``: a fixed ridge strength for
    ``lowrank_affine`` / ``corrector_ridge`` (default: chosen by 5-fold CV on the sample). Returns a module mapping
    (m, d) stale rows to (m, d) float32 rows.

    Example:
        >>> import torch
        >>> x = torch.randn(40, 4); m = fit_map("lowrank_affine", x, 2 * x, rank=4, ridge=1e-6)
        >>> round(float(m(x[:1])[0, 0] / x[0, 0]), 2)
        2.0
    """
    if method not in MAP_METHODS:
        raise ConfigError(f"unknown deployment map {method!r}; choose one of {MAP_METHODS}")
    if method in ("corrector", "corrector_ridge") and corrector is None:
        raise ConfigError(f"deployment map {method!r} needs the trained corrector")
    x, y = stale.float().cpu(), fresh.float().cpu()
    if x.shape != y.shape:
        raise ConfigError(f"stale and fresh samples differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    d = x.shape[1]
    if method == "identity":
        return nn.Identity()
    if method == "corrector":
        return _Frozen(corrector)
    if x.shape[0] == 0:
        raise ConfigError(f"deployment map {method!r} needs re-encoded rows (a budget > 0)")
    if method == "procrustes":
        u, _, vt = torch.linalg.svd(x.T @ y)
        return OrthogonalMap(u @ vt)
    if method == "lowrank_affine":
        lam = ridge if ridge is not None else ridge_cv(x, y - x, seed=seed)
        w, b = _ridge(x, y - x, lam)
        # reduced-rank: keep the top-r directions of the fitted residual x W
        _, _, vt = torch.linalg.svd((x - x.mean(0)) @ w, full_matrices=False)
        p = vt[: min(rank, d)].T @ vt[: min(rank, d)]
        return LinearResidualMap(w @ p, b)
    if method == "corrector_ridge":
        base = _Frozen(corrector)
        z = base(x)
        lam = ridge if ridge is not None else ridge_cv(z, y - z, seed=seed)
        w, b = _ridge(z, y - z, lam)
        return LinearResidualMap(w, b, base=base)
    # residual_mlp
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = ResidualMLPMap(d, hidden)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)
    batch = min(256, x.shape[0])
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            loss = ((m(x[idx]) - y[idx]) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    for p_ in m.parameters():
        p_.requires_grad_(False)
    return m


@torch.no_grad()
def apply_map(fn: Callable[[torch.Tensor], torch.Tensor], matrix: torch.Tensor, chunk_size: int = 65536,
              normalize: bool = False) -> torch.Tensor:
    """``fn`` over an (N, d) matrix in chunks (float32 out); ``normalize`` L2-normalises each output row."""
    parts = []
    for i in range(0, matrix.shape[0], chunk_size):
        out = fn(matrix[i : i + chunk_size].float()).float().cpu()
        parts.append(torch.nn.functional.normalize(out, dim=-1) if normalize else out)
    return torch.cat(parts) if parts else matrix.float()


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
