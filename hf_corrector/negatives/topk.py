"""The streaming top-k shared by negative selection and evaluation: exact top-k or Gumbel-top-k.

Scores ``<q, transform(row)>`` are streamed over cache chunks, so memory stays bounded by ``chunk_size`` rows
whatever the corpus size. Gumbel noise is drawn from a generator keyed by ``(seed, step, key)``: the choice for a
query does not depend on the batch it shares, the number of processes, or whether the run was resumed.

Two optional filters serve false-negative control (:mod:`hf_corrector.negatives.false_negatives`):
``max_scores`` (per query: rows scoring above it are never chosen) and ``skip_top`` (the query's ``skip_top``
best-scoring rows, by unperturbed score, are never chosen).

Example:
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]]); cache = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> select_negatives(q, cache, k=1, exclude=[[0]]).indices
    tensor([[1]])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Selection:
    """Chosen rows per query: cache row ``indices`` (B, k), their unperturbed ``scores`` and how many candidate
    rows per query a false-negative filter dropped (``dropped``, (B,), zeros without a filter)."""

    indices: torch.Tensor
    scores: torch.Tensor
    dropped: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


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


def _exclusions(exclude: Sequence[Sequence[int]] | None, start: int, stop: int) -> list[tuple[int, int]]:
    """(query, column) pairs of excluded rows inside the chunk [start, stop)."""
    if exclude is None:
        return []
    return [(qi, r - start) for qi, rows in enumerate(exclude) for r in rows if start <= r < stop]


class _RunningTop:
    """The best ``k`` (priority, score, row) triples per query seen so far (merged chunk by chunk)."""

    def __init__(self, b: int, k: int, device: torch.device):
        self.k = k
        self.priority = torch.full((b, 0), float("-inf"), device=device)
        self.score = torch.full((b, 0), float("-inf"), device=device)
        self.row = torch.zeros((b, 0), dtype=torch.long, device=device)

    def add(self, priority: torch.Tensor, score: torch.Tensor, start: int) -> None:
        tp, ti = priority.topk(min(self.k, priority.shape[1]), dim=1)
        merged_p = torch.cat([self.priority, tp], 1)
        merged_s = torch.cat([self.score, score.gather(1, ti)], 1)
        merged_i = torch.cat([self.row, ti + start], 1)
        self.priority, order = merged_p.topk(min(self.k, merged_p.shape[1]), dim=1)
        self.score, self.row = merged_s.gather(1, order), merged_i.gather(1, order)


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
    transform: Transform | None = None,
    candidates: torch.Tensor | None = None,
    max_scores: torch.Tensor | None = None,
    skip_top: int = 0,
) -> Selection:
    """Choose ``k`` rows per query by score ``<q, transform(cache_row)>``; never a row in ``exclude[q]``.

    Args:
        queries: (B, d) query embeddings.
        cache: an (N, d) tensor, or a function ``(start, stop) -> rows`` (``rows(index)`` with ``candidates``).
        k: rows per query.
        exclude: per query, cache rows that must not be chosen (its positives).
        method: ``topk`` or ``gumbel`` (top-k of ``score / temperature + Gumbel`` = sampling without replacement
            from ``softmax(score / temperature)``).
        noise_keys: per query, the key of its Gumbel generator (e.g. the example id); default the row number.
        transform: applied to each cache chunk before scoring (the corrector h, or a Nyström map).
        candidates: optional (B, P) candidate rows per query (two-stage selection); then only those are scored.
        max_scores: optional (B,) per-query ceiling: rows scoring above it are not chosen (counted in ``dropped``).
        skip_top: never choose the query's ``skip_top`` best rows by unperturbed score (counted in ``dropped``).
    """
    if method not in ("topk", "gumbel"):
        raise ValueError(f"unknown sampling method {method!r}")
    q = queries.float()
    if candidates is not None:
        return _select_from_candidates(q, cache, k, exclude, method, temperature, noise_keys, seed, step, transform,
                                       candidates, max_scores, skip_top)
    b = q.shape[0]
    n = num_rows if num_rows is not None else cache.shape[0]  # type: ignore[union-attr]
    get = cache if callable(cache) else (lambda s, e: cache[s:e])
    generators = None
    if method == "gumbel":
        keys = noise_keys if noise_keys is not None else [str(i) for i in range(b)]
        generators = [query_generator(seed, step, key) for key in keys]
    chosen = _RunningTop(b, k + skip_top, q.device)
    best = _RunningTop(b, skip_top, q.device) if skip_top and method == "gumbel" else None
    dropped = torch.zeros(b, dtype=torch.long)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = get(start, stop).to(q.device, torch.float32)
        if transform is not None:
            rows = transform(rows).float()
        s = q @ rows.T
        p = s / temperature if method == "gumbel" else s.clone()
        if generators is not None:
            p = p + torch.stack([gumbel_noise(stop - start, g) for g in generators]).to(q.device)
        for qi, col in _exclusions(exclude, start, stop):
            p[qi, col] = float("-inf")
        if max_scores is not None:
            above = s > max_scores.to(s.device)[:, None]
            above &= torch.isfinite(p)
            dropped += above.sum(1).cpu()
            p = p.masked_fill(above, float("-inf"))
        chosen.add(p, s, start)
        if best is not None:
            best.add(torch.where(torch.isfinite(p), s, p), s, start)
    indices, scores, skipped = _drop_best(chosen, best, k, skip_top)
    if max_scores is not None and torch.isinf(scores).any():  # the limits left too few rows: take the least risky
        indices, scores = _fill_from_dropped(q, get, n, chunk_size, transform, exclude, indices, scores, skipped)
    if torch.isinf(scores).any() or indices.shape[1] < k:
        raise ValueError(f"not enough non-positive rows to choose {k} negatives per query (cache has {n} rows)")
    return Selection(indices=indices, scores=scores, dropped=dropped + skip_top)


def _drop_best(chosen: _RunningTop, best: _RunningTop | None, k: int, skip_top: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` chosen rows (B, k) once the ``skip_top`` best rows by score are removed, with their scores (-inf
    where a query has fewer), and the skipped rows (B, skip_top).

    For top-k the first ``skip_top`` of the top-(k + skip_top) are the best rows. For Gumbel they are found by a
    second running top (by score) and removed from the Gumbel top-(k + skip_top): at most ``skip_top`` of its
    rows can be among them, so at least k remain, and they are the Gumbel top-k of the other rows.
    """
    scores = chosen.score.masked_fill(torch.isinf(chosen.priority), float("-inf"))
    if not skip_top:
        return chosen.row, scores, chosen.row[:, :0]
    if best is None:
        return chosen.row[:, skip_top:], scores[:, skip_top:], chosen.row[:, :skip_top]
    b = chosen.row.shape[0]
    rows = torch.full((b, k), -1, dtype=torch.long, device=chosen.row.device)
    out_scores = torch.full((b, k), float("-inf"), device=scores.device)
    keep = ~(chosen.row[:, :, None] == best.row[:, None, :]).any(-1) & torch.isfinite(scores)
    for qi in range(b):
        r, sc = chosen.row[qi][keep[qi]][:k], scores[qi][keep[qi]][:k]
        rows[qi, : len(r)], out_scores[qi, : len(sc)] = r, sc
    return rows, out_scores, best.row


def _fill_from_dropped(q, get, n, chunk_size, transform, exclude, indices, scores, skipped):
    """Complete queries that the false-negative limits left short with the rows they dropped, lowest score first
    (the least likely to be unlabelled positives), so that every query still gets ``k`` negatives."""
    indices, scores = indices.clone(), scores.clone()
    for qi in torch.nonzero(torch.isinf(scores).any(1)).flatten().tolist():
        have = torch.isfinite(scores[qi])
        taken = indices[qi][have].tolist() + skipped[qi].tolist()
        blocked = list(exclude[qi]) + taken if exclude is not None else taken
        missing = int((~have).sum())
        extra = select_negatives(-q[qi : qi + 1], get, missing, exclude=[blocked], num_rows=n, chunk_size=chunk_size,
                                 transform=transform)
        indices[qi, ~have] = extra.indices[0].to(indices.device)
        scores[qi, ~have] = -extra.scores[0].to(scores.device)
    return indices, scores


def _select_from_candidates(q, cache, k, exclude, method, temperature, noise_keys, seed, step, transform, candidates,
                            max_scores=None, skip_top=0) -> Selection:
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
    invalid = cand < 0
    if exclude is not None:
        for qi, ex in enumerate(exclude):
            if len(ex):
                invalid[qi] |= torch.isin(cand[qi], torch.as_tensor(list(ex), device=cand.device))
    dropped = torch.zeros(b, dtype=torch.long)
    if skip_top:
        best = s.masked_fill(invalid, float("-inf")).topk(min(skip_top, p_size), dim=1).indices
        top = torch.zeros_like(invalid).scatter_(1, best, True) & ~invalid
        dropped += top.sum(1).cpu()
        invalid |= top
    if max_scores is not None:
        above = (s > max_scores.to(s.device)[:, None]) & ~invalid
        dropped += above.sum(1).cpu()
        invalid |= above
    p = p.masked_fill(invalid, float("-inf"))
    tp, ti = p.topk(min(k, p_size), dim=1)
    if max_scores is not None and torch.isinf(tp).any():  # too few left: rows above the ceiling, lowest score first
        fallback = (-s).masked_fill(~above, float("-inf")).topk(min(k, p_size), dim=1).indices
        for qi in torch.nonzero(torch.isinf(tp).any(1)).flatten().tolist():
            have = torch.isfinite(tp[qi])
            ti[qi, ~have] = fallback[qi, : int((~have).sum())]
            tp[qi, ~have] = torch.where(above[qi, ti[qi, ~have]], 0.0, float("-inf"))
    if torch.isinf(tp).any() or tp.shape[1] < k:
        raise ValueError(f"candidate pool of {p_size} is too small to choose {k} negatives per query")
    return Selection(indices=cand.gather(1, ti), scores=s.gather(1, ti), dropped=dropped)
