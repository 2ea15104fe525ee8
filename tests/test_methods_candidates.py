"""Two-stage selection with a faiss candidate index: exactness, query folding, maintenance and exact resumption."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_corrector import CorrectorTrainer
from hf_corrector.errors import ConfigError
from hf_corrector.negatives import CandidateIndex, TwoStageSampler
from hf_corrector.negatives.candidates import ivf_nlist
from hf_corrector.negatives.topk import select_negatives
from tests.tiny import tiny_trainer

faiss = pytest.importorskip("faiss")
N_DOCS = 120


def _trainer(tmp_path, out: str = "out", **kw) -> CorrectorTrainer:
    defaults = {"num_negatives": 3, "candidate_index": "flat", "candidate_pool_size": N_DOCS}
    return tiny_trainer(tmp_path, out, **{**defaults, **kw})


def _randomise_corrector(trainer: CorrectorTrainer, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.corrector.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def _queries(trainer: CorrectorTrainer, n: int = 8) -> tuple[torch.Tensor, list[list[int]]]:
    ex = trainer.train_examples.select(range(n))
    q = trainer.retriever.encode_queries(list(ex["query"]), show_progress_bar=False)
    return q, [list(r) for r in ex["positive_rows"]]


def _exact(trainer: CorrectorTrainer, q: torch.Tensor, exclude, k: int, method: str = "topk") -> torch.Tensor:
    return select_negatives(q, trainer.cache_manager.read_chunk, k, exclude=exclude, method=method, num_rows=len(trainer.cache),
                            transform=trainer.sampler.transform.function(trainer.state.global_step), noise_keys=[str(i) for i in range(len(q))], seed=3,
                            step=5, temperature=0.05).indices


def _two_stage(trainer: CorrectorTrainer, q: torch.Tensor, exclude, k: int, method: str = "topk") -> torch.Tensor:
    cands = trainer.sampler.candidates(q, trainer.state.global_step)
    return select_negatives(q, trainer.cache.rows, k, exclude=exclude, method=method, candidates=cands,
                            transform=trainer.sampler.transform.function(trainer.state.global_step), noise_keys=[str(i) for i in range(len(q))], seed=3,
                            step=5, temperature=0.05).indices


# -- the index --------------------------------------------------------------------------------------------------------
def test_flat_index_returns_exact_top_p():
    x = F.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    index = CandidateIndex("flat", pool_size=40)
    index.build(x)
    q = x[:5] + 0.1
    got = index.search(q)
    assert got.shape == (5, 40)
    expected = (q @ x.T).topk(40).indices
    for a, b in zip(got, expected):
        assert set(a.tolist()) == set(b.tolist())
    assert index.search(q, pool_size=10_000).shape == (5, 500)  # P is capped at N


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_neighbours(kind):
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(20, 32, generator=g), dim=-1)
    x = F.normalize(centres[torch.arange(4000) % 20] + 0.3 * torch.randn(4000, 32, generator=g), dim=-1)
    index = CandidateIndex(kind, pool_size=50)
    index.build(x)
    q = x[:16]
    got = index.search(q)
    expected = (q @ x.T).topk(10).indices
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, expected)) / expected.numel()
    assert recall > 0.8
    assert index.reconstruct(torch.tensor([3, 7])).shape == (2, 32)
    if kind == "ivf":
        assert index.index.nlist == ivf_nlist(4000) == min(round(4 * 4000**0.5), 4000 // 39)
        assert index.index.nprobe == 16
    else:
        assert index.index.hnsw.efSearch >= 50


# -- two-stage == exact when P = N ------------------------------------------------------------------------------------
@pytest.mark.parametrize("correction", ["mlp", "linear", "none"])
@pytest.mark.parametrize("method", ["topk", "gumbel"])
def test_two_stage_equals_exact_when_pool_is_everything(tmp_path, correction, method):
    trainer = _trainer(tmp_path, correction=correction)
    if trainer.corrector is not None:
        _randomise_corrector(trainer)
    q, exclude = _queries(trainer)
    assert torch.equal(_two_stage(trainer, q, exclude, 5, method), _exact(trainer, q, exclude, 5, method))


def test_linear_corrector_query_fold_is_exact_for_small_pools(tmp_path):
    trainer = _trainer(tmp_path, correction="linear", candidate_pool_size=12)
    _randomise_corrector(trainer, scale=2.0)
    q, exclude = _queries(trainer)
    selection = trainer.sampler
    # the pool is the exact corrected top-P (the bias adds <q, b> to every row of a query: ranking unchanged)
    pool = trainer.sampler.candidates(q, trainer.state.global_step)
    corrected = trainer.sampler.transform.function(trainer.state.global_step)(trainer.cache.matrix().float())
    expected = (q @ corrected.T).topk(12).indices
    for a, b in zip(pool, expected):
        assert set(a.tolist()) == set(b.tolist())
    # hence two-stage top-k (k <= P - positives) equals exact selection
    assert torch.equal(_two_stage(trainer, q, exclude, 5), _exact(trainer, q, exclude, 5))
    # the fold matters: the unfolded query misses part of the corrected top-P
    raw = selection.index.search(q)
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(raw, expected))
    # on fallback to uncorrected scores the index is searched with q itself
    trainer.sampler.transform.bypassed = True
    assert torch.equal(selection.search_queries(q), q)


def test_nystrom_map_folds_into_the_query(tmp_path):
    trainer = _trainer(tmp_path, correction="nystrom", nystrom_landmarks=16, candidate_pool_size=12)
    q, exclude = _queries(trainer)
    transform = trainer.sampler.transform.function(trainer.state.global_step)  # fits W at step 0
    W = trainer.sampler.transform.W
    with torch.no_grad():
        W.add_(0.3 * torch.randn(W.shape, generator=torch.Generator().manual_seed(0)))  # make the map matter
    pool = trainer.sampler.candidates(q, trainer.state.global_step)
    expected = (q @ transform(trainer.cache.matrix().float()).T).topk(12).indices
    for a, b in zip(pool, expected):
        assert set(a.tolist()) == set(b.tolist())


# -- maintenance ------------------------------------------------------------------------------------------------------
def test_built_at_start_rebuilt_at_refresh_only(tmp_path):
    trainer = _trainer(tmp_path, correction="none", cache_write_back=True, cache_refresh_steps=4, max_steps=5,
                       candidate_pool_size=32)
    builds = []
    selection = trainer.sampler
    original = selection.build

    def spy(step):
        builds.append(step)
        original(step)

    selection.build = spy
    trainer.train()
    assert builds == [0, 4]
    assert selection.written  # rows written back at step 5, not yet in the index
    rows = torch.as_tensor(sorted(selection.written))
    assert not torch.allclose(selection.index.reconstruct(rows), trainer.cache.rows(rows))


def test_tele_with_a_candidate_index_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="candidate_index='flat' is not used with tele_negatives=True"):
        _trainer(tmp_path, tele_negatives=True, tele_pool_size=10, correction="none")


# -- end to end -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,extra", [("flat", {"cache_write_back": True}), ("hnsw", {}),
                                        ("ivf", {"cache_write_back": True, "correction": "linear"})])
def test_resume_is_exact(tmp_path, kind, extra):
    kw = dict(candidate_index=kind, candidate_pool_size=24, **extra)
    full = _trainer(tmp_path, out="a", save_strategy="steps", save_steps=3, **kw)
    full.train()
    resumed = _trainer(tmp_path, out="b", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(full.cache.matrix(), resumed.cache.matrix())
    sa, sb = full.sampler, resumed.sampler
    assert isinstance(sb, TwoStageSampler)
    # the resumed index holds what the original one held (write-backs since the build put back, or hnsw reloaded)
    everything = torch.arange(N_DOCS)
    assert torch.equal(sa.index.reconstruct(everything), sb.index.reconstruct(everything))
    if extra.get("cache_write_back"):
        assert not torch.equal(sb.index.reconstruct(everything), resumed.cache.matrix())
