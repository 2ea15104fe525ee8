"""The streaming top-k shared by negative selection and evaluation: exact top-k or Gumbel-top-k.

Scores ``<q, transform(row)>`` are streamed over cache chunks, so memory stays bounded by ``chunk_size`` rows
whatever the corpus size. Gumbel noise of a row is a counter-based hash of ``(seed, step, key, global row)``
(:func:`row_noise`): the choice for a query does not depend on the
batch it shares, the chunking, the number of processes, whether the cache is sharded across them, or whether the run
was resumed. :func:`select_negatives_sharded` runs the same selection over a cache sharded by rows across processes.

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
    score_dtype: torch.dtype | None = None,
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
        score_dtype: compute the scores ``q @ rows.T`` in this dtype (``torch.bfloat16`` / ``torch.float16``;
            None = float32). Selection, noise and the returned scores stay float32.
    """
    if method not in ("topk", "gumbel"):
        raise ValueError(f"unknown sampling method {method!r}")
    q = queries.float()
    if candidates is not None:
        return _select_from_candidates(q, cache, k, exclude, method, temperature, noise_keys, seed, step, transform,
                                       candidates, max_scores, skip_top)
    n = num_rows if num_rows is not None else cache.shape[0]  # type: ignore[union-attr]
    get = cache if callable(cache) else (lambda s, e: cache[s:e])
    scan = _scan(q, get, 0, n, k, exclude, method, temperature, noise_keys, seed, step, chunk_size, transform,
                 max_scores, skip_top, score_dtype)
    return _finish(q, get, n, k, scan, exclude, chunk_size, transform, max_scores, skip_top)


def _finish(q, get, n, k, scan, exclude, chunk_size, transform, max_scores, skip_top, fill=None) -> Selection:
    chosen, best, dropped = scan
    indices, scores, skipped = _drop_best(chosen, best, k, skip_top)
    if max_scores is not None and torch.isinf(scores).any():  # the limits left too few rows: take the least risky
        indices, scores = (fill or _fill_from_dropped)(q, get, n, chunk_size, transform, exclude, indices, scores,
                                                       skipped)
    if torch.isinf(scores).any() or indices.shape[1] < k:
        raise ValueError(f"not enough non-positive rows to choose {k} negatives per query (cache has {n} rows)")
    return Selection(indices=indices, scores=scores, dropped=dropped + skip_top)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_MIX1, _MIX2, _GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (arithmetic wraps modulo 2**64)."""
    x = (x ^ _srl(x, 30)) * _MIX1
    x = (x ^ _srl(x, 27)) * _MIX2
    return x ^ _srl(x, 31)


def row_noise(seed: int, step: int, key: str, rows: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Standard Gumbel noise of global cache ``rows`` (a tensor, or a ``(start, stop)`` range) for the query keyed
    ``key`` at ``step``: a counter-based hash of (seed, step, key, row), so the noise of a row does not depend on
    chunking, sharding, candidate pools or the batch. float32."""
    if isinstance(rows, tuple):
        rows = torch.arange(rows[0], rows[1], dtype=torch.long)
    return _gumbel(rows.to("cpu", torch.long) * _GOLDEN + _stream(seed, step, key))


def _stream(seed: int, step: int, key: str) -> int:
    """The hash stream of one query key at one step (signed int64)."""
    return _signed(int.from_bytes(hashlib.blake2b(f"{seed}:{step}:{key}".encode(), digest_size=8).digest(), "little"))


def _streams(seed: int, step: int, keys: Sequence[str]) -> list[int]:
    """The streams of several query keys (for :func:`batch_row_noise`)."""
    return [_stream(seed, step, key) for key in keys]


def _gumbel(counters: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from int64 counters ``row * golden + stream`` (float32)."""
    bits = _mix64(counters)
    u = (_srl(bits, 11).double() + 0.5) * (1.0 / (1 << 53))  # 53 random bits, strictly inside (0, 1)
    return (-torch.log(-torch.log(u))).float()


def batch_row_noise(streams: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(B, stop - start) Gumbel noise of global rows ``start:stop`` for the queries whose :func:`row_noise` streams are
    ``streams`` (int64, (B,)), computed on ``streams.device`` in one go (the same hash as :func:`row_noise`)."""
    rows = torch.arange(start, stop, dtype=torch.long, device=streams.device)
    return _gumbel(rows[None, :] * _GOLDEN + streams[:, None])


def _device_path(q: torch.Tensor) -> bool:
    """Whether the scan keeps noise keys and exclusions as device tensors (on an accelerator; CPU keeps the
    arithmetic of the stored results)."""
    return q.device.type != "cpu"


class _Exclusions:
    """Excluded (query, global row) pairs as two index tensors on the scan's device: masked per chunk without a
    Python loop (the same -inf entries as the per-pair loop)."""

    def __init__(self, exclude: Sequence[Sequence[int]] | None, device: torch.device):
        pairs = [(qi, int(r)) for qi, rows in enumerate(exclude or []) for r in rows]
        t = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).to(device)
        self.query, self.row = t[:, 0], t[:, 1]

    def apply(self, p: torch.Tensor, start: int, stop: int) -> None:
        if self.row.numel():
            inside = (self.row >= start) & (self.row < stop)
            p[self.query[inside], self.row[inside] - start] = float("-inf")


def chunk_bounds(lo: int, hi: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks of rows ``lo:hi`` aligned to global multiples of ``chunk_size`` (as one process over all rows)."""
    out, start = [], lo
    while start < hi:
        stop = min(hi, (start // chunk_size + 1) * chunk_size)
        out.append((start, stop))
        start = stop
    return out


def _scan(q, get, lo, hi, k, exclude, method, temperature, noise_keys, seed, step, chunk_size, transform, max_scores,
          skip_top, score_dtype=None):
    """Stream rows ``lo:hi``: the running top-(k + skip_top) by priority, the running best by score (Gumbel with
    skip_top) and the rows dropped by ``max_scores``, per query. ``get`` takes global row numbers."""
    b = q.shape[0]
    keys = None
    if method == "gumbel":
        keys = noise_keys if noise_keys is not None else [str(i) for i in range(b)]
    chosen = _RunningTop(b, k + skip_top, q.device)
    best = _RunningTop(b, skip_top, q.device) if skip_top and method == "gumbel" else None
    dropped = torch.zeros(b, dtype=torch.long, device=q.device)  # on the scan's device: no per-chunk sync
    if max_scores is not None:
        max_scores = max_scores.to(q.device)
    qs = q if score_dtype is None or score_dtype == torch.float32 else q.to(score_dtype)
    on_device = _device_path(q)  # an accelerator: keys and exclusions as device tensors, no per-pair loop
    streams = torch.tensor(_streams(seed, step, keys), dtype=torch.long, device=q.device) \
        if on_device and keys is not None else None
    excluded = _Exclusions(exclude, q.device) if on_device else None
    for start, stop in chunk_bounds(lo, hi, chunk_size):
        rows = get(start, stop)  # with cache_device on the queries' device: a view, nothing copied
        if transform is not None:
            rows = transform(rows.to(q.device, torch.float32, non_blocking=on_device and rows.is_pinned()))
        rows = rows.to(q.device, qs.dtype, non_blocking=on_device and rows.is_pinned())
        s = (qs @ rows.T).float()
        p = s / temperature if method == "gumbel" else s.clone()
        if streams is not None:
            p = p + batch_row_noise(streams, start, stop)
        elif keys is not None:  # CPU: exactly the stored results' arithmetic
            p = p + torch.stack([row_noise(seed, step, key, (start, stop)) for key in keys]).to(q.device)
        if excluded is not None:
            excluded.apply(p, start, stop)
        else:
            for qi, col in _exclusions(exclude, start, stop):
                p[qi, col] = float("-inf")
        if max_scores is not None:
            above = s > max_scores[:, None]
            above &= torch.isfinite(p)
            dropped += above.sum(1)
            p = p.masked_fill(above, float("-inf"))
        chosen.add(p, s, start)
        if best is not None:
            best.add(torch.where(torch.isfinite(p), s, p), s, start)
    return chosen, best, dropped.cpu()


def _merge_tops(parts: list[_RunningTop], k: int) -> _RunningTop:
    """One running top out of several (e.g. one per process), keeping the best ``k`` per query."""
    out = _RunningTop(parts[0].row.shape[0], k, parts[0].row.device)
    p = torch.cat([t.priority for t in parts], 1)
    s = torch.cat([t.score for t in parts], 1)
    r = torch.cat([t.row for t in parts], 1)
    out.priority, order = p.topk(min(k, p.shape[1]), dim=1)
    out.score, out.row = s.gather(1, order), r.gather(1, order)
    return out


@torch.no_grad()
def select_negatives_sharded(
    queries: torch.Tensor,
    get: Callable[[int, int], torch.Tensor],
    k: int,
    local_range: tuple[int, int],
    num_rows: int,
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]],
    exclude: Sequence[Sequence[int]] | None = None,
    method: str = "topk",
    temperature: float = 1.0,
    noise_keys: Sequence[str] | None = None,
    seed: int = 0,
    step: int = 0,
    chunk_size: int = 65536,
    transform: Transform | None = None,
    max_scores: torch.Tensor | None = None,
    skip_top: int = 0,
    score_dtype: torch.dtype | None = None,
) -> Selection:
    """:func:`select_negatives` over a cache sharded by rows across processes (call it on every process).

    ``queries`` (and ``exclude``, ``noise_keys``, ``max_scores``) are every process's queries, in the same order
    on every process; this process scores only its rows ``local_range`` (global numbers, read with ``get``), keeps
    its local top, and the (priority, score, global row) triples of all processes (``all_gather``: a tensor ->
    one tensor per process, equal shapes) are merged. Every process returns the selection of all queries, equal to
    :func:`select_negatives` over the whole cache (noise is keyed by global rows, chunks are aligned as there).
    """
    if method not in ("topk", "gumbel"):
        raise ValueError(f"unknown sampling method {method!r}")
    q = queries.float()
    lo, hi = local_range
    chosen, best, dropped = _scan(q, get, lo, hi, k, exclude, method, temperature, noise_keys, seed, step,
                                  chunk_size, transform, max_scores, skip_top, score_dtype)

    def merged(top: _RunningTop, width: int) -> _RunningTop:
        b = q.shape[0]
        pad = width - top.row.shape[1]  # a shard with fewer rows than width: pad with -inf
        prio = torch.cat([top.priority, torch.full((b, pad), float("-inf"), device=q.device)], 1)
        score = torch.cat([top.score, torch.full((b, pad), float("-inf"), device=q.device)], 1)
        row = torch.cat([top.row, torch.zeros((b, pad), dtype=torch.long, device=q.device)], 1)
        packed = torch.stack([prio.double(), score.double(), row.double()])  # rows < 2**53: exact in float64
        parts = []
        for t in all_gather(packed):
            part = _RunningTop(b, width, q.device)
            part.priority, part.score, part.row = t[0].float(), t[1].float(), t[2].long()
            parts.append(part)
        return _merge_tops(parts, width)

    chosen = merged(chosen, k + skip_top)
    best = merged(best, skip_top) if best is not None else None
    if max_scores is not None:  # otherwise nothing was dropped anywhere: no gather needed
        dropped = sum(t.long() for t in all_gather(dropped))

    def fill(q_, get_, n_, chunk_size_, transform_, exclude_, indices, scores, skipped):
        indices, scores = indices.clone(), scores.clone()
        short = torch.isinf(scores).any(1)  # the same on every process: the merged selection is
        for qi in torch.nonzero(short).flatten().tolist():
            have = torch.isfinite(scores[qi])
            taken = indices[qi][have].tolist() + skipped[qi].tolist()
            blocked = list(exclude_[qi]) + taken if exclude_ is not None else taken
            extra = select_negatives_sharded(-q_[qi: qi + 1], get_, int((~have).sum()), local_range, num_rows,
                                             all_gather, exclude=[blocked], chunk_size=chunk_size_,
                                             transform=transform_)
            indices[qi, ~have] = extra.indices[0].to(indices.device)
            scores[qi, ~have] = -extra.scores[0].to(scores.device)
        return indices, scores

    return _finish(q, get, num_rows, k, (chosen, best, dropped), exclude, chunk_size, transform, max_scores, skip_top,
                   fill=fill)


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
        p = p + torch.stack([row_noise(seed, step, key, cand_row) for key, cand_row in
                             zip(keys, candidates.cpu().clamp(min=0))]).to(q.device)
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
