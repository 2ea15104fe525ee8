"""Choosing negatives from (corrected) cache scores: exact top-k or Gumbel-top-k sampling.

Scores are streamed over cache chunks, so memory stays bounded by ``chunk_size`` rows whatever the corpus size.
Gumbel noise is drawn from a generator keyed by ``(seed, step, query id)``: the choice for a query does not depend
on the batch it shares, the number of processes, or whether the run was resumed.

Example:
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]]); cache = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> select_negatives(q, cache, k=1, exclude=[[0]]).indices
    tensor([[1]])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """Chosen negatives per query: cache row ``indices`` (B, k) and their (unperturbed) ``scores``."""

    indices: torch.Tensor
    scores: torch.Tensor


def query_generator(seed: int, step: int, key: str) -> torch.Generator:
    """A CPU generator determined by (seed, step, key)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{key}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


def gumbel_noise(n: int, generator: torch.Generator) -> torch.Tensor:
    """n samples of standard Gumbel noise -log(-log U)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


def _exclusion_mask(exclude: Sequence[Sequence[int]] | None, start: int, stop: int, n_queries: int) -> list[tuple[int, int]]:
    out = []
    if exclude is None:
        return out
    for qi, rows in enumerate(exclude):
        for r in rows:
            if start <= r < stop:
                out.append((qi, r - start))
    return out


@torch.no_grad()
def select_negatives(
    queries: torch.Tensor,
    cache: torch.Tensor | Callable[[int, int], torch.Tensor],
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    method: str = "topk",
    temperature: float = 1.0,
    noise_keys: Sequence[str] | None = None,
    seed: int = 0,
    step: int = 0,
    num_rows: int | None = None,
    chunk_size: int = 65536,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    candidates: torch.Tensor | None = None,
) -> Selection:
    """Choose ``k`` negatives per query by score ``<q, transform(cache_row)>``; never a row in ``exclude[q]``.

    Args:
        queries: (B, d) query embeddings.
        cache: an (N, d) tensor, or a function ``(start, stop) -> rows`` for lazily converted storage.
        k: negatives per query.
        exclude: per query, cache rows that must not be chosen (its positives).
        method: ``topk`` or ``gumbel`` (top-k of ``score / temperature + Gumbel`` = sampling without replacement
            from ``softmax(score / temperature)``).
        noise_keys: per query, the key of its Gumbel generator (e.g. the query id); default the row number.
        transform: applied to each cache chunk before scoring (the corrector h, or a Nyström map).
        candidates: optional (B, P) candidate rows per query (two-stage selection); then only those are scored.
    """
    if method not in ("topk", "gumbel"):
        raise ValueError(f"unknown sampling method {method!r}")
    b = queries.shape[0]
    q = queries.float()
    if candidates is not None:
        return _select_from_candidates(q, cache, k, exclude, method, temperature, noise_keys, seed, step, transform,
                                       candidates)
    n = num_rows if num_rows is not None else cache.shape[0]  # type: ignore[union-attr]
    get = cache if callable(cache) else (lambda s, e: cache[s:e])
    generators = None
    if method == "gumbel":
        keys = noise_keys if noise_keys is not None else [str(i) for i in range(b)]
        generators = [query_generator(seed, step, key) for key in keys]
    best_p = torch.full((b, 0), float("-inf"), device=q.device)
    best_s = torch.full((b, 0), float("-inf"), device=q.device)
    best_i = torch.zeros((b, 0), dtype=torch.long, device=q.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = get(start, stop).to(q.device, torch.float32)
        if transform is not None:
            rows = transform(rows).float()
        s = q @ rows.T
        p = s / temperature if method == "gumbel" else s.clone()
        if generators is not None:
            noise = torch.stack([gumbel_noise(stop - start, g) for g in generators]).to(q.device)
            p = p + noise
        for qi, col in _exclusion_mask(exclude, start, stop, b):
            p[qi, col] = float("-inf")
        kk = min(k, p.shape[1])
        tp, ti = p.topk(kk, dim=1)
        merged_p = torch.cat([best_p, tp], 1)
        merged_s = torch.cat([best_s, s.gather(1, ti)], 1)
        merged_i = torch.cat([best_i, ti + start], 1)
        best_p, order = merged_p.topk(min(k, merged_p.shape[1]), dim=1)
        best_s, best_i = merged_s.gather(1, order), merged_i.gather(1, order)
    if torch.isinf(best_p).any():
        raise ValueError(f"not enough non-positive rows to choose {k} negatives per query (cache has {n} rows)")
    return Selection(indices=best_i, scores=best_s)


def _select_from_candidates(q, cache, k, exclude, method, temperature, noise_keys, seed, step, transform, candidates):
    b, p_size = candidates.shape
    flat = candidates.reshape(-1).cpu()
    unique, inverse = torch.unique(flat.clamp(min=0), return_inverse=True)  # correct each distinct row once
    rows = cache(unique) if callable(cache) else cache[unique]
    rows = rows.to(q.device, torch.float32)
    if transform is not None:
        rows = transform(rows).float()
    rows = rows[inverse.to(rows.device)].reshape(b, p_size, -1)
    s = torch.einsum("bd,bpd->bp", q, rows)
    p = s / temperature if method == "gumbel" else s.clone()
    if method == "gumbel":
        keys = noise_keys if noise_keys is not None else [str(i) for i in range(b)]
        p = p + torch.stack([gumbel_noise(p_size, query_generator(seed, step, key)) for key in keys]).to(q.device)
    cand = candidates.to(q.device)
    p = p.masked_fill(cand < 0, float("-inf"))
    if exclude is not None:
        for qi, ex in enumerate(exclude):
            if len(ex):
                p[qi, torch.isin(cand[qi], torch.as_tensor(list(ex), device=cand.device))] = float("-inf")
    tp, ti = p.topk(min(k, p_size), dim=1)
    if torch.isinf(tp).any():
        raise ValueError(f"candidate pool of {p_size} is too small to choose {k} negatives per query")
    return Selection(indices=cand.gather(1, ti), scores=s.gather(1, ti))
