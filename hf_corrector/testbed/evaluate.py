"""How far a sampler's choice is from the truth on a :class:`~hf_corrector.testbed.ground_truth.Testbed`.

:func:`evaluate_sampler` takes a set-up :class:`~hf_corrector.negatives.base.NegativeSampler` (or any callable
``(queries, exclude, keys, k, step) -> (B, k) rows``) and measures, on probe queries with the current θ:

* ``kl``: ``KL(P_S ‖ P) = -log P(S | x)``, the truncated softmax over ``S = {y+} ∪ negatives`` (fresh
  embeddings, as the task loss uses them) against the full softmax. (``KL(P ‖ P_S)`` is infinite whenever S is
  not all of Y, so the other direction is the one that is finite; it is the log of the probability mass the
  truncated softmax drops.)
* ``kl_scores``: ``KL(P ‖ P̂)`` with ``P̂ ∝ exp(β · score)`` over all N under the scores the sampler selects by
  (stale, corrected, Nyström-mapped cache); only for samplers with a cache and a score transform.
* ``recall_at_k``: the fraction of the true top-k (fresh scores, positive excluded) among the k chosen rows.
* ``grad_cos`` / ``grad_rel_err``: cosine and relative error ``‖ĝ - g‖ / ‖g‖`` of the gradient of the sampled
  loss (the library's truncated-softmax :func:`~hf_corrector.training.losses.task_loss` over each query's S)
  against the exact full-softmax gradient ``g``; with ``draws > 1``, ``ĝ`` is the mean over the draws (the bias)
  and ``grad_cos_single`` / ``grad_rel_err_single`` are per draw; ``grad_var`` is the mean of
  ``‖ĝ_d - ĝ‖² / ‖g‖²`` (the sampling variance).

Example:
    >>> from hf_corrector.testbed import make_testbed, build_strategy
    >>> tb = make_testbed(N=2000, drift=5, pretrain_steps=5)
    >>> m = evaluate_sampler(build_strategy("oracle-topk", tb).sampler, tb, k=8, num_queries=32)
    >>> m["recall_at_k"]
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..negatives.base import NegativeSampler
from ..training.losses import task_loss
from .ground_truth import Testbed, flat_grad

SamplerLike = NegativeSampler | Callable[..., Any]


def draw_rows(sampler: SamplerLike, queries: torch.Tensor, exclude: Sequence[Sequence[int]], keys: Sequence[str],
              k: int, step: int) -> torch.Tensor:
    """(B, k) rows chosen by a sampler or a callable (a ``Selection`` or a tensor)."""
    out = sampler.sample(queries, exclude, keys, k, step) if isinstance(sampler, NegativeSampler) else \
        sampler(queries, exclude, keys, k, step)
    rows = getattr(out, "indices", out)
    return torch.as_tensor(rows, dtype=torch.long).cpu()


def sampled_gradient(testbed: Testbed, queries: torch.Tensor, positives: torch.Tensor,
                     negatives: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean truncated-softmax loss over each query's ``{y+} ∪ negatives`` (fresh embeddings,
    the library's ``task_loss``) w.r.t. all encoder parameters, flattened."""
    model = testbed.model
    model.zero_grad(set_to_none=True)
    b = queries.shape[0]
    sets = torch.cat([positives[:, None], negatives], 1)  # (B, k+1), positive first
    rows, inverse = torch.unique(sets.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(sets.shape)
    mask = torch.zeros(b, rows.numel(), dtype=torch.bool)
    mask.scatter_(1, inverse, True)
    loss = task_loss(model.f(queries), model.g(testbed.target_features[rows]), inverse[:, 0], mask, 1.0 / testbed.beta)
    loss.backward()
    grad = flat_grad(model)
    model.zero_grad(set_to_none=True)
    return grad


@torch.no_grad()
def sampler_log_probs(sampler: NegativeSampler, queries: torch.Tensor, beta: float, step: int) -> torch.Tensor | None:
    """(B, N) ``log P̂`` under the scores the sampler selects by, or None when it has no cache scoring."""
    ctx = getattr(sampler, "context", None)
    transform = getattr(sampler, "transform", None)
    if ctx is None or transform is None:
        return None
    matrix = ctx.cache.local_matrix().float()
    fn = transform.selection_function(step)
    if fn is not None:
        matrix = torch.cat([fn(matrix[i:i + 65536]).float().cpu() for i in range(0, matrix.shape[0], 65536)])
    return (beta * queries.float() @ matrix.T).log_softmax(dim=1)


def evaluate_sampler(sampler: SamplerLike, testbed: Testbed, k: int = 16, num_queries: int = 256, draws: int = 1,
                     step: int = 0, queries: torch.Tensor | None = None,
                     positives: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of the module docstring for ``sampler`` on ``testbed`` (probe queries: the first
    ``num_queries`` training queries unless ``queries`` / ``positives`` are given). Draw ``d`` uses step
    ``step + d`` (samplers key their noise by step)."""
    qf = queries if queries is not None else testbed.train_queries[:num_queries]
    pos = positives if positives is not None else testbed.train_positives[:num_queries]
    b = qf.shape[0]
    q = testbed.encode_queries(qf)
    logp = testbed.exact_log_softmax(qf)
    masked = logp.clone()
    masked[torch.arange(b), pos] = float("-inf")
    true_top = masked.topk(k, dim=1).indices
    exact = testbed.exact_gradient(qf, pos)
    exclude = [[int(p)] for p in pos]
    keys = [str(i) for i in range(b)]
    recalls, kls, grads = [], [], []
    for d in range(draws):
        rows = draw_rows(sampler, q, exclude, keys, k, step + d)
        if rows.shape != (b, k):
            raise ValueError(f"the sampler returned rows of shape {tuple(rows.shape)}, expected {(b, k)}")
        recalls.append(float((rows[:, :, None] == true_top[:, None, :]).any(-1).float().mean()))
        sets = torch.cat([pos[:, None], rows], 1)
        kls.append(float(-logp.gather(1, sets).logsumexp(dim=1).mean()))
        grads.append(sampled_gradient(testbed, qf, pos, rows))
    g = torch.stack(grads)
    mean = g.mean(0)
    norm = exact.norm().clamp_min(1e-30)
    cos = torch.nn.functional.cosine_similarity
    out: dict[str, float] = {
        "kl": sum(kls) / draws,
        "recall_at_k": sum(recalls) / draws,
        "grad_cos": float(cos(mean, exact, dim=0)),
        "grad_rel_err": float((mean - exact).norm() / norm),
        "grad_cos_single": float(cos(g, exact[None], dim=1).mean()),
        "grad_rel_err_single": float(((g - exact).norm(dim=1) / norm).mean()),
        "grad_var": float(((g - mean).norm(dim=1) ** 2).mean() / norm**2),
        "draws": draws,
        "num_queries": b,
        "k": k,
    }
    if isinstance(sampler, NegativeSampler):
        logp_hat = sampler_log_probs(sampler, q, testbed.beta, step)
        if logp_hat is not None:
            out["kl_scores"] = float((logp.exp() * (logp - logp_hat)).sum(1).mean())
    return out
