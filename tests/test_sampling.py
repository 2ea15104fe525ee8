"""Negative selection: exact streaming top-k, Gumbel-top-k sampling, two-stage candidates, determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hf_corrector.negatives.topk import gumbel_noise, query_generator, select_negatives


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module runs single-threaded (see conftest.one_thread)."""


def _reference_topk(q, cache, k, exclude, transform=None):
    rows = transform(cache) if transform is not None else cache
    s = q @ rows.T
    for qi, ex in enumerate(exclude):
        s[qi, list(ex)] = float("-inf")
    return s.topk(k, dim=1)


# -------------------------------------------------------------------------------------------------------------------
# exact top-k


@pytest.mark.parametrize("case", range(25))
def test_topk_never_returns_a_positive_and_equals_full_topk(case):
    rng = random.Random(case)
    gen = torch.Generator().manual_seed(case)
    n, d, b = rng.randint(6, 80), rng.randint(2, 16), rng.randint(1, 6)
    cache = torch.randn(n, d, generator=gen)
    q = torch.randn(b, d, generator=gen)
    scores = q @ cache.T
    exclude = []
    for qi in range(b):
        n_pos = rng.randint(0, min(4, n - 2))
        # half the time the positives are exactly the rows that would score highest
        if rng.random() < 0.5:
            ex = scores[qi].topk(n_pos).indices.tolist()
        else:
            ex = rng.sample(range(n), n_pos)
        exclude.append(ex)
    k = rng.randint(1, n - max(len(e) for e in exclude))
    chunk_size = rng.choice([1, 2, 3, 5, 7, n - 1 if n > 1 else 1, n, n + 3, 65536])

    sel = select_negatives(q, cache, k, exclude=exclude, chunk_size=chunk_size)

    assert sel.indices.shape == (b, k)
    for qi in range(b):
        chosen = sel.indices[qi].tolist()
        assert not set(chosen) & set(exclude[qi]), (case, qi, chosen, exclude[qi])
        assert len(set(chosen)) == k  # no duplicates
    ref_scores, ref_idx = _reference_topk(q, cache, k, exclude)
    assert torch.equal(sel.indices, ref_idx), (case, chunk_size)
    torch.testing.assert_close(sel.scores, ref_scores, rtol=1e-5, atol=1e-5)
    # the returned scores are the plain (unperturbed) scores of the chosen rows
    torch.testing.assert_close(sel.scores, scores.gather(1, sel.indices), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 10, 64])
def test_streaming_topk_over_chunks_equals_plain_topk(chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    cache = torch.randn(37, 12, generator=gen)
    q = torch.randn(5, 12, generator=gen)
    for k in (1, 3, 11, 36):
        sel = select_negatives(q, cache, k, chunk_size=chunk_size)
        ref = (q @ cache.T).topk(k, dim=1)
        assert torch.equal(sel.indices, ref.indices), (chunk_size, k)
        torch.testing.assert_close(sel.scores, ref.values, rtol=1e-5, atol=1e-5)


def test_topk_with_lazy_cache_and_transform():
    gen = torch.Generator().manual_seed(7)
    cache = torch.randn(30, 6, generator=gen)
    q = torch.randn(3, 6, generator=gen)
    weight = torch.randn(6, 6, generator=gen)

    def transform(rows):
        return rows @ weight.T

    exclude = [[0, 1], [], [29]]
    calls = []

    def lazy(start, stop):
        calls.append((start, stop))
        return cache[start:stop].half()  # storage dtype other than float32

    sel = select_negatives(q, lazy, 4, exclude=exclude, num_rows=30, chunk_size=8, transform=transform)
    assert calls == [(0, 8), (8, 16), (16, 24), (24, 30)]
    ref_scores, ref_idx = _reference_topk(q, cache.half().float(), 4, exclude, transform)
    assert torch.equal(sel.indices, ref_idx)
    torch.testing.assert_close(sel.scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_not_enough_rows_raises():
    cache = torch.eye(4)
    q = torch.ones(1, 4)
    with pytest.raises(ValueError, match="not enough"):
        select_negatives(q, cache, 3, exclude=[[0, 1]], chunk_size=2)
    with pytest.raises(ValueError, match="unknown sampling"):
        select_negatives(q, cache, 1, method="nucleus")


# -------------------------------------------------------------------------------------------------------------------
# Gumbel-top-k sampling


LOGITS = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.2])
TEMPERATURE = 0.5


def _draw(k, steps=20, per_step=1000, exclude=None, chunk_size=65536):
    """First (and second) picks for one query over many (step, key) generators: 20 steps x 1000 keys."""
    cache = torch.eye(5)
    q = LOGITS[None, :].repeat(per_step, 1)  # score of row j = LOGITS[j]
    keys = [f"q{i}" for i in range(per_step)]
    out = []
    for step in range(steps):
        sel = select_negatives(q, cache, k, exclude=[exclude or []] * per_step, method="gumbel",
                               temperature=TEMPERATURE, noise_keys=keys, seed=123, step=step, chunk_size=chunk_size)
        out.append(sel.indices)
    return torch.cat(out)


def test_gumbel_k1_frequencies_match_softmax():
    picks = _draw(k=1)[:, 0]
    assert picks.numel() == 20_000
    freq = torch.bincount(picks, minlength=5).double() / picks.numel()
    expected = (LOGITS.double() / TEMPERATURE).softmax(0)
    assert (freq - expected).abs().max() < 0.02, (freq, expected)
    # a looser, scale-aware check as well: every cell within 4.5 standard deviations
    sd = (expected * (1 - expected) / picks.numel()).sqrt()
    assert ((freq - expected).abs() < 4.5 * sd + 1e-9).all(), (freq, expected)


def test_gumbel_k2_first_and_second_pick_frequencies():
    picks = _draw(k=2, chunk_size=2)  # chunk boundaries inside the row range, too
    first, second = picks[:, 0], picks[:, 1]
    assert (first != second).all()  # without replacement
    p = (LOGITS.double() / TEMPERATURE).softmax(0)
    freq1 = torch.bincount(first, minlength=5).double() / first.numel()
    assert (freq1 - p).abs().max() < 0.02, (freq1, p)
    # Plackett-Luce: P(second = j) = sum_{i != j} p_i p_j / (1 - p_i)
    expected2 = torch.tensor([sum(p[i] * p[j] / (1 - p[i]) for i in range(5) if i != j) for j in range(5)])
    freq2 = torch.bincount(second, minlength=5).double() / second.numel()
    assert (freq2 - expected2).abs().max() < 0.02, (freq2, expected2)


def test_gumbel_respects_exclusions_and_renormalises():
    picks = _draw(k=1, steps=10, exclude=[0])[:, 0]
    assert (picks != 0).all()
    p = (LOGITS[1:].double() / TEMPERATURE).softmax(0)
    freq = torch.bincount(picks, minlength=5)[1:].double() / picks.numel()
    assert (freq - p).abs().max() < 0.025, (freq, p)


def test_gumbel_noise_is_standard_gumbel():
    noise = gumbel_noise(50_000, query_generator(0, 0, "x")).double()
    assert abs(noise.mean().item() - 0.5772156649) < 0.03  # Euler-Mascheroni
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.06


# -------------------------------------------------------------------------------------------------------------------
# two-stage candidates, determinism


@pytest.mark.parametrize("method", ["topk", "gumbel"])
def test_candidate_path_with_all_rows_equals_full_path(method):
    gen = torch.Generator().manual_seed(3)
    n = 23
    cache = torch.randn(n, 8, generator=gen)
    q = torch.randn(4, 8, generator=gen)
    exclude = [[0], [5, 6], [], [22]]
    keys = ["a", "b", "c", "d"]
    weight = torch.randn(8, 8, generator=gen)

    def transform(rows):
        return rows @ weight

    candidates = torch.arange(n).repeat(4, 1)
    kwargs = dict(exclude=exclude, method=method, temperature=0.3, noise_keys=keys, seed=5, step=11, transform=transform)
    full = select_negatives(q, cache, 5, **kwargs)
    two_stage = select_negatives(q, cache, 5, candidates=candidates, **kwargs)
    assert torch.equal(full.indices, two_stage.indices)
    torch.testing.assert_close(full.scores, two_stage.scores)
    # a lazy cache function that gathers rows by index (as StaleCache.rows does) gives the same
    lazy = select_negatives(q, lambda idx: cache[idx], 5, candidates=candidates, **kwargs)
    assert torch.equal(full.indices, lazy.indices)


def test_candidate_path_ignores_padding_and_positives():
    cache = torch.eye(6)
    q = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    candidates = torch.tensor([[0, 1, 2, -1, -1]])
    sel = select_negatives(q, cache, 2, exclude=[[0]], candidates=candidates)
    assert sel.indices.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="too small"):
        select_negatives(q, cache, 3, exclude=[[0]], candidates=candidates)


@pytest.mark.parametrize("method", ["gumbel", "topk"])
def test_choice_depends_only_on_seed_step_key(method):
    gen = torch.Generator().manual_seed(9)
    cache = torch.randn(40, 8, generator=gen)
    qa, qb, qc, qd = torch.randn(4, 8, generator=gen)
    kwargs = dict(method=method, temperature=0.5, seed=17, step=4, chunk_size=16)
    one = select_negatives(torch.stack([qa, qb, qc]), cache, 6, exclude=[[1], [2], [3]],
                           noise_keys=["a", "b", "c"], **kwargs).indices
    two = select_negatives(torch.stack([qd, qa]), cache, 6, exclude=[[7], [1]], noise_keys=["d", "a"], **kwargs).indices
    alone = select_negatives(qa[None], cache, 6, exclude=[[1]], noise_keys=["a"], **kwargs).indices
    assert torch.equal(one[0], two[1])
    assert torch.equal(one[0], alone[0])
    # the chunk size does not change the choice either
    big = select_negatives(qa[None], cache, 6, exclude=[[1]], noise_keys=["a"],
                           **{**kwargs, "chunk_size": 65536}).indices
    assert torch.equal(alone, big)


def test_gumbel_choice_changes_with_step_seed_and_key():
    gen = torch.Generator().manual_seed(1)
    cache = torch.randn(200, 8, generator=gen)
    q = torch.randn(1, 8, generator=gen)

    def pick(seed, step, key):
        return select_negatives(q, cache, 5, method="gumbel", temperature=10.0, noise_keys=[key], seed=seed,
                                step=step).indices

    base = pick(0, 0, "a")
    assert torch.equal(base, pick(0, 0, "a"))
    assert not torch.equal(base, pick(0, 1, "a"))
    assert not torch.equal(base, pick(1, 0, "a"))
    assert not torch.equal(base, pick(0, 0, "b"))
