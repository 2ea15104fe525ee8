"""The synthetic testbed's ground truth (issue 18): exact gradient, exact sampling, and the real samplers on it."""

from __future__ import annotations

import math

import pytest
import torch

from hf_corrector.negatives import ExhaustiveSampler
from hf_corrector.testbed import (STRATEGIES, build_strategy, evaluate_sampler, exact_gradient, full_softmax_loss,
                                  make_testbed, tensor_cache_manager, tensor_context)
from hf_corrector.testbed.ground_truth import flat_grad


@pytest.fixture(scope="module")
def small():
    return make_testbed(N=300, d=8, seed=3, drift=10, pretrain_steps=10, feature_dim=6, hidden=16, num_train=256,
                        num_test=64, batch_size=32)


def test_exact_gradient_matches_autograd_of_full_softmax(small):
    q, pos = small.train_queries[:20], small.train_positives[:20]
    model = small.model
    model.zero_grad(set_to_none=True)
    full_softmax_loss(model, q, pos, small.target_features, small.beta).backward()
    reference = flat_grad(model)
    # chunked over targets (chunk 64 < N = 300), so the chunking is exercised too
    mine = exact_gradient(model, q, pos, small.target_features, small.beta, chunk=64)
    assert reference.norm() > 1e-3
    torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)
    # and it is not the gradient of some other loss: other positives give a different one
    other = exact_gradient(model, q, (pos + 1) % small.num_targets, small.target_features, small.beta)
    assert (other - reference).norm() > 0.1 * reference.norm()


def _gumbel_draws(scores_matrix, query, exclude_row, temperature, draws):
    manager = tensor_cache_manager(scores_matrix, lambda rows: scores_matrix[rows])
    sampler = ExhaustiveSampler("gumbel", temperature)
    sampler.setup(tensor_context(manager, seed=11))
    q = query.expand(draws, -1)
    sel = sampler.sample(q, [[exclude_row]] * draws, [f"d{i}" for i in range(draws)], k=1, step=0)
    return torch.bincount(sel.indices[:, 0], minlength=scores_matrix.shape[0]).double()


def _chi_square(counts, p):
    keep = p > 0
    expected = counts.sum() * p[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum()), int(keep.sum()) - 1


def test_exact_softmax_sampling_reproduces_p():
    tb = make_testbed(N=40, d=8, seed=5, drift=3, pretrain_steps=20, feature_dim=6, hidden=16, num_train=64,
                      num_test=8, batch_size=16, beta=5.0)
    qf, pos = tb.train_queries[:1], int(tb.train_positives[0])
    p = tb.exact_log_softmax(qf)[0].exp().double()
    p[pos] = 0.0
    p = p / p.sum()  # P(y | x) over the negatives (the positive is excluded, as in training)
    draws = 20000
    counts = _gumbel_draws(tb.fresh, tb.encode_queries(qf), pos, 1.0 / tb.beta, draws)
    assert counts[pos] == 0
    tv = 0.5 * float((counts / draws - p).abs().sum())
    stat, df = _chi_square(counts, p)
    assert tv < 0.03, tv
    assert stat < df + 5 * math.sqrt(2 * df), (stat, df)
    # the same test rejects sampling at the wrong temperature (the check can fail)
    wrong = _gumbel_draws(tb.fresh, tb.encode_queries(qf), pos, 2.0 / tb.beta, draws)
    assert _chi_square(wrong, p)[0] > df + 5 * math.sqrt(2 * df)


def test_no_drift_stale_equals_oracle():
    tb = make_testbed(N=500, d=8, seed=1, drift=0, pretrain_steps=5, feature_dim=6, hidden=16, num_train=128,
                      num_test=16, batch_size=16)
    stale = evaluate_sampler(build_strategy("stale-topk", tb).sampler, tb, k=8, num_queries=32)
    oracle = evaluate_sampler(build_strategy("oracle-topk", tb).sampler, tb, k=8, num_queries=32)
    assert oracle["recall_at_k"] == 1.0 and stale["recall_at_k"] == 1.0
    assert stale["grad_cos"] == pytest.approx(oracle["grad_cos"], abs=1e-6)
    assert oracle["kl_scores"] == pytest.approx(0.0, abs=1e-5)


def test_every_strategy_runs_and_drift_costs_recall(small):
    results = {}
    for name in sorted(STRATEGIES):
        built = build_strategy(name, small, corrector_steps=5, corrector_batch=16, k=4, nystrom_landmarks=16,
                               pool_size=32, candidate_index="flat", tele_pool_size=8)
        results[name] = evaluate_sampler(built.sampler, small, k=4, num_queries=16, draws=2 if built.stochastic else 1)
        assert 0.0 <= results[name]["recall_at_k"] <= 1.0
        assert results[name]["kl"] >= 0.0
    assert results["oracle-topk"]["recall_at_k"] == 1.0
    assert results["stale-topk"]["recall_at_k"] < 1.0  # the drift moved the true top-k
    # the truncated softmax over the true top-k keeps the most probability mass of all k-subsets
    assert results["oracle-topk"]["kl"] <= min(r["kl"] for r in results.values()) + 1e-6
    assert results["exact-softmax"]["grad_var"] > 0.0 and results["stale-topk"]["grad_var"] == 0.0


def _script():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_script_tiny_table_and_sweep(tmp_path):
    script = _script()
    out = script.main(["--tiny", "--mode", "table", "--strategies", "stale-topk", "corrector-mlp-ce+mse",
                       "oracle-topk", "--seeds", "0", "1", "--output", str(tmp_path / "t.json")])
    summary = {e["strategy"]: e for e in out["summary"]}
    assert set(summary) == {"stale-topk", "corrector-mlp-ce+mse", "oracle-topk"}
    assert summary["oracle-topk"]["recall_at_k"] == 1.0 and summary["oracle-topk"]["seeds"] == 2
    assert (tmp_path / "t.json").exists() and "| stale-topk |" in out["markdown"]
    sweep = script.main(["--tiny", "--mode", "sweep", "--sweep", "drift", "--output", str(tmp_path / "s.json")])
    assert {r["x"] for r in sweep["rows"]} == {0, 5}
    assert (tmp_path / "s.png").stat().st_size > 10_000
