"""A synthetic retrieval problem whose full softmax and its exact gradient are known.

Targets ``y = 0..N-1`` have features ``x_y`` (clustered, so that hard negatives exist); queries have features
``z = x_{y+} T + noise`` for their positive ``y+``. A query encoder ``f`` and a target encoder ``g`` (small MLPs or
linear maps, outputs L2-normalised) score ``s(x, y) = <f(x), g(y)>``, and the model is the full softmax
``P(y | x) ∝ exp(β s(x, y))`` over all N targets.

:func:`make_testbed` pre-trains the encoders (parameters θ') on the full-softmax loss, takes θ' as the *stale*
parameters (the cache is ``g_θ'(Y)``) and obtains the *current* parameters θ by a controlled drift: ``drift`` real
optimizer steps on the full-softmax loss (``drift_kind="sgd"``), or a random perturbation of the same size per
parameter tensor (``drift_kind="random"``, the control). Ground truth: :func:`exact_log_softmax` over all N and
:func:`exact_gradient`, the exact gradient of the full-softmax loss with respect to every encoder parameter.

Example:
    >>> tb = make_testbed(N=1000, seed=0, drift=5, pretrain_steps=5)
    >>> logp = exact_log_softmax(tb.model, tb.train_queries[:4], tb.target_features, tb.beta)
    >>> tuple(logp.shape)
    (4, 1000)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

DRIFT_KINDS = ("sgd", "random")


class Encoder(nn.Module):
    """``features -> normalize(MLP(features))``; ``hidden=0`` gives a linear map."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 64, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth - 1 if hidden else 0):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class DualEncoder(nn.Module):
    """The query encoder ``f`` and the target encoder ``g`` (untied)."""

    def __init__(self, feature_dim: int, dim: int, hidden: int = 64, depth: int = 2):
        super().__init__()
        self.f = Encoder(feature_dim, dim, hidden, depth)
        self.g = Encoder(feature_dim, dim, hidden, depth)

    @torch.no_grad()
    def encode_targets(self, features: torch.Tensor, chunk: int = 262144) -> torch.Tensor:
        return torch.cat([self.g(features[i:i + chunk]) for i in range(0, features.shape[0], chunk)])


def full_softmax_loss(model: DualEncoder, queries: torch.Tensor, positives: torch.Tensor,
                      targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean ``-log P(y+ | x)`` over all N targets, by autograd-able cross-entropy (the reference loss)."""
    logits = beta * model.f(queries) @ model.g(targets).T
    return F.cross_entropy(logits, positives)


@torch.no_grad()
def exact_log_softmax(model: DualEncoder, queries: torch.Tensor, targets: torch.Tensor, beta: float,
                      target_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) ``log P(y | x)`` over all N targets under ``model`` (``target_embeddings``: ``g(Y)`` if known)."""
    t = target_embeddings if target_embeddings is not None else model.encode_targets(targets)
    return (beta * model.f(queries) @ t.T).log_softmax(dim=1)


@torch.no_grad()
def exact_softmax(model: DualEncoder, queries: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, N) ``P(y | x)`` over all N targets (``exact_log_softmax(...).exp()``)."""
    return exact_log_softmax(model, queries, targets, beta).exp()


def exact_gradient(model: DualEncoder, queries: torch.Tensor, positives: torch.Tensor, targets: torch.Tensor,
                   beta: float, chunk: int = 131072) -> torch.Tensor:
    """The exact gradient of the full-softmax loss (mean over the queries) w.r.t. all of ``model``'s parameters,
    flattened in ``model.parameters()`` order.

    Computed without forming the loss: ``∇ -log P(y+|x) = β (E_{y~P}[∇ s(x, y)] - ∇ s(x, y+))``, with ``P``
    exact over all N (chunked over targets, so N = 10^6 fits); the test checks it against autograd of
    :func:`full_softmax_loss`.
    """
    model.zero_grad(set_to_none=True)
    logp = exact_log_softmax(model, queries, targets, beta)
    weights = logp.exp()  # (B, N), constants
    weights[torch.arange(len(positives)), positives] -= 1.0
    q = model.f(queries)
    b = q.shape[0]
    for start in range(0, targets.shape[0], chunk):
        stop = min(start + chunk, targets.shape[0])
        s = q @ model.g(targets[start:stop]).T
        (beta * (weights[:, start:stop] * s).sum() / b).backward(retain_graph=True)
    grad = flat_grad(model)
    model.zero_grad(set_to_none=True)
    return grad


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


@dataclass
class Testbed:
    """Everything a sampler is measured against (see the module docstring).

    Attributes:
        target_features: (N, p) target features.
        train_queries / train_positives, test_queries / test_positives: query features and positive rows.
        stale_model: θ' (the parameters the cache was computed with); ``model``: the current θ.
        stale / fresh: ``g_θ'(Y)`` and ``g_θ(Y)`` (N, d).
        trajectory: the target encoder's state after each drift step (``drift_kind="sgd"``), for refresh-every-R.
        info: the drift's size (``param_change``, ``mean_cos_stale_fresh``) and the configuration.
    """

    target_features: torch.Tensor
    train_queries: torch.Tensor
    train_positives: torch.Tensor
    test_queries: torch.Tensor
    test_positives: torch.Tensor
    stale_model: DualEncoder
    model: DualEncoder
    stale: torch.Tensor
    fresh: torch.Tensor
    beta: float
    seed: int
    trajectory: list[dict[str, torch.Tensor]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return self.target_features.shape[0]

    @property
    def dim(self) -> int:
        return self.fresh.shape[1]

    @torch.no_grad()
    def encode_queries(self, features: torch.Tensor) -> torch.Tensor:
        """``f_θ(features)`` with the current parameters."""
        return self.model.f(features)

    @torch.no_grad()
    def encode_targets(self, rows: torch.Tensor) -> torch.Tensor:
        """``g_θ(x_rows)`` with the current parameters (the fresh embeddings of some targets)."""
        return self.model.g(self.target_features[rows])

    @torch.no_grad()
    def embeddings_at(self, drift_step: int) -> torch.Tensor:
        """``g(Y)`` with the target encoder as it was after ``drift_step`` drift steps (0 = stale, drift = fresh)."""
        if drift_step <= 0:
            return self.stale
        if drift_step >= len(self.trajectory):
            return self.fresh
        g = copy.deepcopy(self.model.g)
        g.load_state_dict(self.trajectory[drift_step])
        return torch.cat([g(self.target_features[i:i + 262144])
                          for i in range(0, self.num_targets, 262144)])

    def exact_log_softmax(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, N) exact ``log P(y|x)`` under θ for query features ``queries``."""
        return exact_log_softmax(self.model, queries, self.target_features, self.beta, self.fresh)

    def exact_gradient(self, queries: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        return exact_gradient(self.model, queries, positives, self.target_features, self.beta)


def make_data(N: int, feature_dim: int, num_clusters: int, spread: float, query_noise: float, num_train: int,
              num_test: int, gen: torch.Generator):
    """Clustered target features and noisy, linearly mixed query features with their positives."""
    centres = torch.randn(num_clusters, feature_dim, generator=gen)
    cluster = torch.randint(num_clusters, (N,), generator=gen)
    x = centres[cluster] + spread * torch.randn(N, feature_dim, generator=gen)
    mix = torch.linalg.qr(torch.randn(feature_dim, feature_dim, generator=gen))[0]

    def queries(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.randint(N, (m,), generator=gen)
        return x[pos] @ mix + query_noise * torch.randn(m, feature_dim, generator=gen), pos

    return x, queries(num_train), queries(num_test)


def train_full_softmax(model: DualEncoder, queries: torch.Tensor, positives: torch.Tensor, targets: torch.Tensor,
                       beta: float, steps: int, lr: float, batch_size: int, gen: torch.Generator,
                       record: list | None = None) -> None:
    """``steps`` Adam steps on the exact full-softmax loss (batches of ``batch_size`` queries)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(queries.shape[0], (batch_size,), generator=gen)
        opt.zero_grad(set_to_none=True)
        full_softmax_loss(model, queries[idx], positives[idx], targets, beta).backward()
        opt.step()
        if record is not None:
            record.append({k: v.detach().clone() for k, v in model.g.state_dict().items()})


def make_testbed(N: int = 100_000, d: int = 32, seed: int = 0, drift: int = 50, drift_kind: str = "sgd",
                 drift_lr: float = 3e-3, pretrain_steps: int = 100, pretrain_lr: float = 1e-2, beta: float = 20.0,
                 feature_dim: int = 16, hidden: int = 64, depth: int = 2, num_clusters: int | None = None,
                 spread: float = 0.5, query_noise: float = 0.3, num_train: int = 4096, num_test: int = 1024,
                 batch_size: int = 64) -> Testbed:
    """Build a :class:`Testbed`: data, pre-trained stale θ', and θ after a ``drift`` of the given kind.

    Args:
        N: number of targets. d: embedding dimension. seed: everything is determined by it.
        drift: optimizer steps from θ' to θ (``sgd``), or the number of steps whose displacement the random
            perturbation matches (``random``: same norm per parameter tensor, random direction).
        drift_lr: learning rate of the drift steps (a second knob on the drift size).
        pretrain_steps, pretrain_lr: full-softmax training from a random init to θ'.
        beta: inverse temperature β of the softmax.
        hidden, depth: the encoders' MLP width and depth (``hidden=0``: linear encoders).
    """
    if drift_kind not in DRIFT_KINDS:
        raise ConfigError(f"drift_kind must be one of {DRIFT_KINDS}, got {drift_kind!r}")
    if N < 2 or drift < 0:
        raise ConfigError(f"need N >= 2 and drift >= 0, got N={N}, drift={drift}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clusters = num_clusters or max(2, int(math.sqrt(N)))
    x, (trq, trp), (teq, tep) = make_data(N, feature_dim, clusters, spread, query_noise, num_train, num_test, gen)
    model = DualEncoder(feature_dim, d, hidden, depth)
    train_full_softmax(model, trq, trp, x, beta, pretrain_steps, pretrain_lr, batch_size, gen)
    stale_model = copy.deepcopy(model)
    trajectory: list[dict[str, torch.Tensor]] = [{k: v.detach().clone() for k, v in model.g.state_dict().items()}]
    if drift_kind == "sgd":
        train_full_softmax(model, trq, trp, x, beta, drift, drift_lr, batch_size, gen, record=trajectory)
    else:
        probe = copy.deepcopy(model)
        train_full_softmax(probe, trq, trp, x, beta, drift, drift_lr, batch_size, gen)
        with torch.no_grad():
            for p, moved, p0 in zip(model.parameters(), probe.parameters(), stale_model.parameters()):
                size = (moved - p0).norm()
                noise = torch.randn(p.shape, generator=gen)
                p.add_(noise * size / noise.norm().clamp_min(1e-12))
        trajectory = []
    stale, fresh = stale_model.encode_targets(x), model.encode_targets(x)
    change = torch.cat([(p - p0).detach().reshape(-1) for p, p0 in zip(model.parameters(), stale_model.parameters())])
    info = {"N": N, "d": d, "seed": seed, "drift": drift, "drift_kind": drift_kind, "drift_lr": drift_lr,
            "beta": beta, "hidden": hidden, "depth": depth, "num_clusters": clusters,
            "param_change": float(change.norm()),
            "mean_cos_stale_fresh": float((stale * fresh).sum(1).mean())}
    model.eval()
    stale_model.eval()
    return Testbed(x, trq, trp, teq, tep, stale_model, model, stale, fresh, beta, seed, trajectory, info)
