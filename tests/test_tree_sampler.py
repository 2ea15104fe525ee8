"""The tree sampler (issue 19): exact softmax draws over all rows, certified bounds, in-place maintenance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_corrector.cache.manager import CacheManager
from hf_corrector.cache.stale_cache import StaleCache
from hf_corrector.errors import ConfigError
from hf_corrector.negatives import ExhaustiveSampler, SamplerContext, ScoreLimits, TreeSampler

from .tiny import tiny_trainer

N, D = 10_000, 16
DRAWS = 20_000


def _vectors(seed: int = 0, n: int = N, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(40, d, generator=g)
    v = centers[torch.randint(0, 40, (n,), generator=g)] + 0.4 * torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def _setup(vectors: torch.Tensor, write_back: bool = True, **kw) -> tuple[TreeSampler, CacheManager]:
    n = vectors.shape[0]
    manager = CacheManager(StaleCache([f"d{i}" for i in range(n)], vectors.clone()), [f"t{i}" for i in range(n)],
                           encode_targets=None, write_back=write_back)
    sampler = TreeSampler(**kw)
    sampler.setup(SamplerContext(manager, encode_queries=None, seed=0))
    return sampler, manager


def _chi_square_p(counts: torch.Tensor, p: torch.Tensor, min_expected: float = 20.0) -> float:
    """p-value of Pearson's chi-square test, rows pooled (by probability) into bins of expected count >= 20."""
    total = counts.sum().double()
    order = torch.argsort(p, descending=True)
    obs, exp, bins_o, bins_e = 0.0, 0.0, [], []
    for i in order.tolist():
        obs += float(counts[i]); exp += float(p[i]) * float(total)
        if exp >= min_expected:
            bins_o.append(obs); bins_e.append(exp); obs = exp = 0.0
    bins_o[-1] += obs; bins_e[-1] += exp
    o, e = torch.tensor(bins_o, dtype=torch.float64), torch.tensor(bins_e, dtype=torch.float64)
    stat, df = float(((o - e) ** 2 / e).sum()), len(bins_o) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def _check_exact(sampler: TreeSampler, vectors: torch.Tensor, q: torch.Tensor, beta: float, step: int) -> None:
    sampler.temperature = 1.0 / beta
    rows, bounds = sampler.draw_iid(q[None], DRAWS, step=step)
    p = torch.softmax(beta * (vectors @ q).double(), 0)
    counts = torch.bincount(rows[0], minlength=vectors.shape[0]).double()
    tv = 0.5 * float((counts / DRAWS - p).abs().sum())
    # the noise floor: TV of exact multinomial samples of the same size
    g = torch.Generator().manual_seed(step)
    floors = [0.5 * float((torch.bincount(torch.multinomial(p.float(), DRAWS, True, generator=g),
                                          minlength=vectors.shape[0]).double() / DRAWS - p).abs().sum())
              for _ in range(3)]
    assert tv <= max(floors) * 1.05 + 0.005, (beta, tv, floors)
    assert _chi_square_p(counts, p) > 1e-3, beta
    assert 0.0 <= bounds[0] <= 1.0


def test_draws_follow_exact_softmax_before_and_after_drift():
    vectors = _vectors()
    sampler, manager = _setup(vectors, method="gumbel")
    q = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(1)), dim=0) * 1.5
    for beta in (1.0, 5.0, 20.0):
        _check_exact(sampler, vectors, q, beta, step=int(beta))
    assert sampler.stats["proposals"] > 0  # the rejection stage was used, not only the probed clusters
    # every vector drifts; the cache is updated in place and the sampler told (write-back event)
    drifted = torch.nn.functional.normalize(vectors + 0.3 * torch.randn(N, D, generator=torch.Generator().manual_seed(2)),
                                            dim=1)
    manager.cache.update(torch.arange(N), drifted, step=1)
    sampler.on_targets(torch.arange(N))
    tree = sampler.tree
    dist = (drifted - tree.centroids[tree.assign]).norm(dim=1)
    assert bool((dist <= tree.radius[tree.assign]).all())  # the bound still covers every row
    for beta in (1.0, 5.0, 20.0):
        _check_exact(sampler, drifted, q, beta, step=100 + int(beta))


def test_without_replacement_first_draw_is_softmax_over_allowed_rows():
    vectors = _vectors(n=2000)
    sampler, _ = _setup(vectors, method="gumbel", temperature=0.2)
    q = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(3)), dim=0)
    b = 3000
    excluded = 7
    sel = sampler.sample(q.expand(b, D), [[excluded]] * b, [str(i) for i in range(b)], k=3, step=0)
    assert sel.indices.shape == (b, 3)
    assert all(len(set(r)) == 3 for r in sel.indices.tolist()) and not (sel.indices == excluded).any()
    scores = vectors @ q
    torch.testing.assert_close(sel.scores, scores[sel.indices])
    p = torch.softmax(5.0 * scores.double(), 0)
    p[excluded] = 0
    p /= p.sum()
    counts = torch.bincount(sel.indices[:, 0], minlength=2000).double()
    assert _chi_square_p(counts, p) > 1e-3


def test_topk_and_false_negative_limits_match_exhaustive():
    vectors = _vectors(n=3000)
    tree, manager = _setup(vectors, method="topk")
    exhaustive = ExhaustiveSampler("topk")
    exhaustive.setup(SamplerContext(manager, encode_queries=None, seed=0))
    q = torch.nn.functional.normalize(torch.randn(5, D, generator=torch.Generator().manual_seed(4)), dim=1)
    exclude = [[0, 1], [2], [], [3], [4]]
    keys = [str(i) for i in range(5)]
    for limits in (None, ScoreLimits(skip_top=3), ScoreLimits(max_scores=torch.full((5,), 0.8), skip_top=1)):
        a = tree.sample(q, exclude, keys, 6, 0, limits)
        b = exhaustive.sample(q, exclude, keys, 6, 0, limits)
        assert torch.equal(a.indices, b.indices), limits
        assert torch.equal(a.dropped.long(), b.dropped.long()), limits


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.sampled_from([0.5, 1.0, 5.0, 20.0, 50.0]),
       probe_mass=st.sampled_from([1e-3, 0.1, 1.0, 100.0]), mode=st.sampled_from(["exact", "truncated"]),
       max_probe=st.integers(1, 8))
def test_certified_bound_never_below_true_unexamined_mass(seed, beta, probe_mass, mode, max_probe):
    from hf_corrector.negatives.tree import _QueryDraw

    sampler, _ = _SHARED
    vectors = sampler.ctx.cache.read_chunk(0, len(sampler.ctx.cache))
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(D, generator=g) * float(torch.rand(1, generator=g) * 3)
    d = _QueryDraw(sampler.tree, vectors, q, sampler.tree.bounds(q[None])[0], beta, set(), None, g)
    d.probe_until(1, probe_mass, max_probe if mode == "truncated" else None, 0, 0)
    s = (vectors @ q).double()
    mass = torch.exp(beta * (s - s.max()))
    outside = torch.ones(vectors.shape[0], dtype=torch.bool)
    outside[d.rows] = False
    true = float(mass[outside].sum() / mass.sum())
    assert d.unexamined_bound >= true - 1e-9


_SHARED = _setup(_vectors(seed=5, n=4000), method="gumbel")
_SHARED[0].draw_iid(torch.randn(1, D), 1)  # builds the tree


def test_state_dict_round_trip_gives_the_same_draws():
    vectors = _vectors(n=3000)
    a, manager = _setup(vectors, method="gumbel", temperature=0.1)
    q = torch.nn.functional.normalize(torch.randn(4, D, generator=torch.Generator().manual_seed(6)), dim=1)
    keys = ["a", "b", "c", "d"]
    a.sample(q, [[]] * 4, keys, 5, step=0)
    state, tensors = a.state_dict()
    b = TreeSampler(method="gumbel", temperature=0.1)
    b.setup(SamplerContext(manager, encode_queries=None, seed=0))
    b.load_state_dict(state, tensors)
    for step in (1, 2):
        assert torch.equal(a.sample(q, [[]] * 4, keys, 5, step).indices, b.sample(q, [[]] * 4, keys, 5, step).indices)
    torch.testing.assert_close(a.tree.radius, b.tree.radius)
    assert b.stats["draws"] == a.stats["draws"]


def test_degraded_clusters_are_rebuilt_locally_and_stay_exact():
    vectors = _vectors(n=4000)
    sampler, manager = _setup(vectors, method="gumbel", temperature=0.2)
    q = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(7)), dim=0)
    sampler.draw_iid(q[None], 10)
    tree = sampler.tree
    # scatter the members of one cluster: its radius grows far past the rebuild factor
    c = int(torch.argmax(tree.counts))
    rows = tree.members[c][: len(tree.members[c]) // 2]
    moved = vectors.clone()
    moved[rows] = torch.nn.functional.normalize(torch.randn(rows.numel(), D, generator=torch.Generator().manual_seed(8)),
                                                dim=1)
    manager.cache.update(rows, moved[rows], step=1)
    tree.assign[rows] = c  # keep them in c (as if the nearest centroid had not changed) to force a degraded cluster
    tree.members = tree._members_from_assign()
    tree._counts = None
    tree.refresh_radii(manager.cache.matrix())
    assert c in sampler.degraded_clusters()
    sampler.on_step_end(1)
    assert sampler.stats["local_rebuilds"] >= 1
    dist = (moved - tree.centroids[tree.assign]).norm(dim=1)
    assert bool((dist <= tree.radius[tree.assign]).all())
    assert sorted(torch.cat(tree.members).tolist()) == list(range(4000))
    _check_exact(sampler, moved, q, 5.0, step=3)


def test_sharded_cache_is_refused_with_the_reason():
    from hf_corrector import CorrectorTrainingArguments

    with pytest.raises(ConfigError, match="cache_sharding='replicated'"):
        CorrectorTrainingArguments("out", tree_sampler=True, cache_sharding="sharded", num_negatives=3, correction="none")
    with pytest.raises(ConfigError, match="corrected_view_steps > 0"):
        CorrectorTrainingArguments("out", tree_sampler=True, num_negatives=3, corrected_view_steps=0)


def test_cache_on_a_device_is_refused_with_the_reason():
    from hf_corrector import CorrectorTrainingArguments

    with pytest.raises(ConfigError, match="cache_device='cpu'"):
        CorrectorTrainingArguments("out", tree_sampler=True, cache_device="cuda:0", num_negatives=3, correction="none")

    class OnDevice:  # a reader whose rows live on an accelerator ('auto' on a GPU run)
        device = torch.device("meta")

    with pytest.raises(ConfigError, match="cache_device='cpu'"):
        TreeSampler().setup(SamplerContext(OnDevice(), encode_queries=None))


def test_registered_in_the_strategy_with_the_dynamic_index_citation():
    from hf_corrector import CorrectorTrainingArguments
    from hf_corrector.utils.card_text import CITATIONS
    from hf_corrector.training.strategy import NegativeStrategy, TreeOptions

    args = CorrectorTrainingArguments("out", tree_sampler=True, negative_sampling="gumbel", sampling_temperature=0.2,
                                      tree_mode="truncated", tree_num_clusters=50, num_negatives=3, correction="nystrom")
    strategy = NegativeStrategy.from_args(args)
    assert strategy.sampler_name == "tree" and strategy.sampler == TreeOptions("gumbel", 0.2, "truncated", 50)
    sampler = strategy.build_sampler(lambda: None)
    assert isinstance(sampler, TreeSampler) and (sampler.mode, sampler.num_clusters, sampler.temperature) == \
        ("truncated", 50, 0.2)
    assert "tree truncated softmax sampling" in strategy.description()
    keys = strategy.citations()
    assert keys == ["corrector", "nystrom"] and "monath2023improving" in CITATIONS[keys[1]]
    assert "Dynamic Indexes" in CITATIONS[keys[1]]
    # without the tree (and without Nyström) the dynamic-index paper is not cited
    assert "nystrom" not in NegativeStrategy.from_args(CorrectorTrainingArguments("out", correction="none")).citations()


@pytest.mark.parametrize("correction", ["nystrom", "mlp"])
def test_trains_inside_corrector_trainer(tmp_path, correction):
    extra = {"nystrom_landmarks": 16, "nystrom_refit_steps": 3} if correction == "nystrom" else {}
    trainer = tiny_trainer(tmp_path, tree_sampler=True, negative_sampling="gumbel", sampling_temperature=0.1,
                           num_negatives=3, correction=correction, cache_write_back=True, max_steps=4, **extra)
    assert isinstance(trainer.sampler, TreeSampler)
    trainer.train()
    s = trainer.sampler
    assert s.stats["draws"] == 4 * trainer.args.per_device_train_batch_size * 3
    assert s.stats["row_updates"] > 0  # write-backs reached the tree
    tree = s.tree
    vectors = s._current_vectors()
    assert vectors is not None
    dist = (vectors.float() - tree.centroids[tree.assign]).norm(dim=1)
    assert bool((dist <= tree.radius[tree.assign]).all())


def test_acceptance_and_local_rebuilds_reach_the_training_logs(tmp_path):
    """A short tiny run: every logging step carries the tree's acceptance rate, proposals, rows scored per draw and
    local-rebuild count, equal to the sampler's own counters at that step (shallow probing forces rejection
    proposals; a radius factor just above 1 makes write-backs trigger local re-clustering)."""
    trainer = tiny_trainer(tmp_path, tree_sampler=True, negative_sampling="gumbel", sampling_temperature=1.0,
                           num_negatives=3, correction="none", cache_write_back=True, max_steps=4, logging_steps=2,
                           tree_num_clusters=8, tree_probe_mass=1e6, tree_rebuild_radius_factor=1.0001)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "tree_proposals" in h]
    assert [h["step"] for h in logged] == [2, 4]
    first, last = logged
    s = trainer.sampler.stats
    assert last["tree_proposals"] == s["proposals"] > first["tree_proposals"] > 0
    assert last["tree_acceptance_rate"] == pytest.approx(s["accepted"] / s["proposals"])
    assert 0.0 < first["tree_acceptance_rate"] < 1.0 and 0.0 < last["tree_acceptance_rate"] < 1.0
    assert last["tree_local_rebuilds"] == s["local_rebuilds"] >= first["tree_local_rebuilds"] > 0
    assert last["tree_exact_rows_per_draw"] == pytest.approx(s["exact_rows"] / s["draws"])
    assert 0.0 < last["tree_unexamined_bound_max"] < 1.0


@pytest.mark.parametrize("name", ["tree-nystrom", "tree-corrector-linear"])
def test_testbed_tree_scores_are_the_corrected_scores(name):
    """On the synthetic testbed (issue 18), the tree with a map folded into the query reports, for the rows it
    draws, the same corrected scores the exhaustive path computes (Nyström map with its offset / linear h)."""
    from hf_corrector.testbed import build_strategy, make_testbed

    tb = make_testbed(N=400, d=8, seed=1, drift=5, pretrain_steps=5, feature_dim=6, hidden=16, num_train=64,
                      num_test=16, batch_size=32)
    sampler = build_strategy(name, tb, corrector_steps=3, corrector_batch=16, k=4, nystrom_landmarks=32).sampler
    q = tb.encode_queries(tb.train_queries[:8])
    sel = sampler.sample(q, [[int(p)] for p in tb.train_positives[:8]], [str(i) for i in range(8)], 4, step=0)
    expected = sampler.score_rows(q, sel.indices, step=0)
    assert torch.allclose(sel.scores, expected, atol=1e-4)
    assert not torch.allclose(expected, torch.einsum("bd,bkd->bk", q, tb.stale[sel.indices]), atol=1e-3)


def test_two_level_build_covers_every_row():
    """Above ``two_level_rows`` the tree is built by faiss' two-level clustering (crashed before: niter twice)."""
    from hf_corrector.negatives import ClusterTree

    v = torch.nn.functional.normalize(torch.randn(3000, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    tree = ClusterTree.build(v, 64, two_level_rows=1000, niter=3)
    assert tree.num_clusters == 64 and int(tree.counts.sum()) == 3000
    assert bool(((v - tree.centroids[tree.assign]).norm(dim=1) <= tree.radius[tree.assign]).all())
