"""End-to-end training on the synthetic task with one selection strategy, through the library's real samplers,
cache manager (refreshes, re-embedding cost) and losses.

Training starts from the testbed's pre-trained θ' with the cache ``g_θ'(Y)``. Each step: a batch of training
queries, ``k`` negatives per query from the sampler, fresh embeddings of the step's targets (positives and
negatives), the library's truncated-softmax :func:`~hf_corrector.training.losses.task_loss` over all of the step's
targets (negatives of the other queries act as in-batch negatives), an Adam step on f and g; with a corrector, h
takes its own Adam step on :func:`~hf_corrector.training.losses.corrector_loss`. The ``full-softmax`` row trains on
the exact loss over all N (the reference the others approximate). The result is scored on the test queries by
exact retrieval over all N with the final encoders.

Example:
    >>> from hf_corrector.testbed import make_testbed
    >>> tb = make_testbed(N=2000, drift=0, pretrain_steps=5)
    >>> out = train_end_to_end(tb, "stale", steps=3, k=4)
    >>> out["num_refreshes"], out["reembeddings"]
    (0, 0)
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from ..errors import ConfigError
from ..models.corrector import CorrectorConfig, CorrectorModel
from ..negatives import (CorrectorTransform, ExhaustiveSampler, IdentityTransform, NystromTransform, TeleSampler,
                         TreeSampler)
from ..training.losses import corrector_loss, task_loss
from .adapter import setup_sampler, tensor_cache_manager
from .evaluate import draw_rows
from .ground_truth import DualEncoder, Testbed, full_softmax_loss

E2E_STRATEGIES = ("stale", "corrector", "corrector-linear", "nystrom", "refresh", "ance-tele", "oracle",
                  "full-softmax", "tree", "tree-nystrom")


@torch.no_grad()
def retrieval_quality(model: DualEncoder, tb: Testbed) -> dict[str, float]:
    """Exact retrieval of the test queries over all N with ``model``: recall@1/@10, MRR@10, full-softmax NLL."""
    t = model.encode_targets(tb.target_features)
    out = {"recall_at_1": 0.0, "recall_at_10": 0.0, "mrr_at_10": 0.0, "test_nll": 0.0}
    m = tb.test_queries.shape[0]
    for start in range(0, m, 256):
        qf, pos = tb.test_queries[start:start + 256], tb.test_positives[start:start + 256]
        scores = tb.beta * model.f(qf) @ t.T
        top = scores.topk(10, dim=1).indices
        hit = top == pos[:, None]
        rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros_like(pos))
        out["recall_at_1"] += float(hit[:, 0].sum())
        out["recall_at_10"] += float(hit.any(1).sum())
        out["mrr_at_10"] += float(torch.where(rank > 0, 1.0 / rank.clamp(min=1), 0.0).sum())
        out["test_nll"] += float(-scores.log_softmax(1).gather(1, pos[:, None]).sum())
    return {key: value / m for key, value in out.items()}


def train_end_to_end(tb: Testbed, strategy: str, steps: int = 200, k: int = 16, batch_size: int = 64,
                     lr: float = 1e-2, refresh_every: int = 50, corrector_lr: float = 1e-3,
                     corrector_loss_kind: str = "ce+mse", nystrom_landmarks: int = 256, tele_pool_size: int = 64,
                     seed: int = 0) -> dict[str, Any]:
    """Train a copy of ``tb.stale_model`` with ``strategy`` (one of :data:`E2E_STRATEGIES`); returns the test
    quality, the re-embedding cost (the cache manager's counters) and the wall time."""
    if strategy not in E2E_STRATEGIES:
        raise ConfigError(f"unknown end-to-end strategy {strategy!r}; choose one of {E2E_STRATEGIES}")
    torch.manual_seed(seed)
    model = copy.deepcopy(tb.stale_model).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = tb.target_features

    @torch.no_grad()
    def encode_rows(rows: torch.Tensor) -> torch.Tensor:
        return model.g(x[rows])

    manager = tensor_cache_manager(tb.stale, encode_rows)
    corrector = None
    transform = IdentityTransform()
    if strategy in ("corrector", "corrector-linear"):
        corrector = CorrectorModel(CorrectorConfig(embedding_dim=tb.dim, architecture="linear" if
                                                   strategy == "corrector-linear" else "mlp")).eval()
        transform = CorrectorTransform(lambda: corrector)
        h_opt = torch.optim.Adam(corrector.parameters(), lr=corrector_lr)
    elif strategy in ("nystrom", "tree-nystrom"):
        transform = NystromTransform(nystrom_landmarks, "uniform", ridge=1e-3, residual=True, refit_steps=refresh_every)
    sampler = None
    if strategy == "ance-tele":
        sampler = TeleSampler(tele_pool_size, transform=transform)
    elif strategy.startswith("tree"):  # the dynamic-index paper: exact draws from softmax(β · stale or Nyström score)
        sampler = TreeSampler("gumbel", 1.0 / tb.beta, transform=transform)
    elif strategy != "full-softmax":
        sampler = ExhaustiveSampler("topk", transform=transform)
    if sampler is not None:
        setup_sampler(sampler, manager, seed=seed, positives=tb.train_positives.tolist(),
                      encode_queries=lambda idx: model.f(tb.train_queries[idx]).detach())
    refresh = {"refresh": refresh_every, "ance-tele": refresh_every, "oracle": 1}.get(strategy)
    gen = torch.Generator().manual_seed(seed + 104729)
    start = time.perf_counter()
    for step in range(steps):
        if refresh and step > 0 and step % refresh == 0:
            manager.refresh(step)
        idx = torch.randint(tb.train_queries.shape[0], (batch_size,), generator=gen)
        qf, pos = tb.train_queries[idx], tb.train_positives[idx]
        if strategy == "full-softmax":
            loss = full_softmax_loss(model, qf, pos, x, tb.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            continue
        with torch.no_grad():
            q_now = model.f(qf)
        rows = draw_rows(sampler, q_now, [[int(p)] for p in pos], [str(int(i)) for i in idx], k, step)
        targets, inverse = torch.unique(torch.cat([pos, rows.reshape(-1)]), return_inverse=True)
        q = model.f(qf)
        fresh = model.g(x[targets])
        mask = torch.ones(batch_size, targets.numel(), dtype=torch.bool)
        loss = task_loss(q, fresh, inverse[:batch_size], mask, 1.0 / tb.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if corrector is not None:
            corrector.train()
            parts = corrector_loss(q, fresh, corrector(manager.rows(targets)), mask, 1.0 / tb.beta,
                                   kind=corrector_loss_kind)
            h_opt.zero_grad(set_to_none=True)
            parts["corrector"].backward()
            h_opt.step()
            corrector.eval()
        manager.record_step(targets, fresh.detach(), step)
        sampler.on_step_end(step)
    seconds = time.perf_counter() - start
    model.eval()
    out: dict[str, Any] = retrieval_quality(model, tb)
    cost = manager.cost
    if strategy == "full-softmax":
        out["reembeddings"] = tb.num_targets * steps  # every step encodes all N targets
    else:
        out["reembeddings"] = cost.refresh_encodings + cost.landmark_encodings
    out["step_target_encodings"] = cost.step_target_encodings
    out["num_refreshes"] = cost.num_refreshes
    out["seconds"] = seconds
    out["final_cos_cache_fresh"] = float((manager.cache.matrix().float() * model.encode_targets(x)).sum(1).mean())
    return out
