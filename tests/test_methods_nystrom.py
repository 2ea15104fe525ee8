"""Nyström low-rank correction: the map's algebra, the trainer hooks, the cost counter and exact resumption."""

from __future__ import annotations

import pytest
import torch

from hf_corrector import CorrectorTrainer
from hf_corrector.errors import ConfigError
from hf_corrector.negatives import ExhaustiveSampler, NystromTransform, fit_nystrom_map
from tests.tiny import tiny_trainer


def _pair(m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    stale = torch.randn(m, d, generator=g)
    fresh = stale @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)) + 0.05 * torch.randn(m, d, generator=g)
    return stale, fresh


# -- the map ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,d", [(16, 16), (5, 16)])
def test_exact_on_landmarks_without_ridge(m, d):
    stale, fresh = _pair(m, d)
    W = fit_nystrom_map(stale, fresh, ridge=0.0)
    assert W.shape == (d, d)
    torch.testing.assert_close(stale @ W, fresh, atol=1e-4, rtol=1e-4)


def test_exact_on_landmarks_residual():
    stale, fresh = _pair(6, 16)
    W = fit_nystrom_map(stale, fresh, ridge=0.0, residual=True)
    torch.testing.assert_close(stale @ W, fresh, atol=1e-4, rtol=1e-4)
    # a direction orthogonal to every landmark is left as it is (not sent to 0)
    q, _ = torch.linalg.qr(torch.cat([stale.T, torch.randn(16, 1)], 1))
    orth = q[:, -1]
    torch.testing.assert_close(orth @ W, orth, atol=1e-4, rtol=1e-4)
    assert (orth @ fit_nystrom_map(stale, fresh, ridge=0.0)).norm() < 1e-4


def test_dual_and_primal_forms_agree_with_ridge():
    stale, fresh = _pair(12, 8)  # m > d: primal
    lam = 0.1
    S, G = stale.double(), fresh.double()
    dual = S.T @ torch.linalg.solve(S @ S.T + lam * torch.eye(12, dtype=torch.float64), G)
    torch.testing.assert_close(fit_nystrom_map(stale, fresh, ridge=lam).double(), dual, atol=1e-5, rtol=1e-5)
    stale, fresh = _pair(5, 8)  # m <= d: dual
    S, G = stale.double(), fresh.double()
    primal = torch.linalg.solve(S.T @ S + lam * torch.eye(8, dtype=torch.float64), S.T @ G)
    torch.testing.assert_close(fit_nystrom_map(stale, fresh, ridge=lam).double(), primal, atol=1e-5, rtol=1e-5)


def test_primal_is_least_squares():
    stale, fresh = _pair(40, 8)
    expected = torch.linalg.lstsq(stale.double(), fresh.double()).solution.float()
    torch.testing.assert_close(fit_nystrom_map(stale, fresh, ridge=0.0), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m,d,r", [(16, 16, 4), (5, 16, 3), (40, 8, 2)])
def test_low_rank_has_requested_rank(m, d, r):
    stale, fresh = _pair(m, d)
    W = fit_nystrom_map(stale, fresh, ridge=1e-3, rank=r)
    assert int(torch.linalg.matrix_rank(W)) == r
    Wres = fit_nystrom_map(stale, fresh, ridge=1e-3, rank=r, residual=True)
    assert int(torch.linalg.matrix_rank(Wres - torch.eye(d))) == r
    # a rank >= min(m, d) is the full map
    full = fit_nystrom_map(stale, fresh, 1e-3)
    torch.testing.assert_close(fit_nystrom_map(stale, fresh, 1e-3, rank=min(m, d)), full, atol=1e-4, rtol=1e-4)


def test_rank_deficient_landmarks_fall_back_to_pseudo_inverse():
    stale, fresh = _pair(4, 8)
    stale = torch.cat([stale, stale[:1]])  # a repeated landmark: S S^T is singular
    fresh = torch.cat([fresh, fresh[:1]])
    W = fit_nystrom_map(stale, fresh, ridge=0.0)
    assert torch.isfinite(W).all()
    torch.testing.assert_close(stale @ W, fresh, atol=1e-4, rtol=1e-4)


def test_bad_arguments():
    stale, fresh = _pair(4, 8)
    with pytest.raises(ConfigError):
        fit_nystrom_map(stale, fresh, ridge=-1.0)
    with pytest.raises(ConfigError):
        fit_nystrom_map(stale, fresh, rank=0)
    with pytest.raises(ValueError):
        fit_nystrom_map(stale, fresh[:, :4])


# -- with the trainer -------------------------------------------------------------------------------------------------
def _trainer(tmp_path, out: str = "out", **kw) -> CorrectorTrainer:
    defaults = {"num_negatives": 3, "correction": "nystrom", "nystrom_landmarks": 16, "nystrom_refit_steps": 3,
                "nystrom_ridge": 0.0}
    return tiny_trainer(tmp_path, out, **{**defaults, **kw})


def test_hooks_and_no_corrector(tmp_path):
    trainer = _trainer(tmp_path)
    assert trainer.corrector is None
    assert isinstance(trainer.sampler, ExhaustiveSampler)
    assert isinstance(trainer.sampler.transform, NystromTransform)


def test_training_refits_and_counts_landmark_encodings(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    method = trainer.sampler.transform
    assert method.num_fits == 3  # steps 0, 3 and 6
    assert trainer.cost["landmark_encodings"] == 3 * 16
    c = trainer.cost
    assert trainer.total_reembedding_cost() == (c["initial_cache_encodings"] + c["step_target_encodings"]
                                                + c["refresh_encodings"] + 48)
    # the last fit (step 6) used the final encoder: m = 16 < d = 32 and ridge 0, so exact on its landmarks
    rows = method.landmarks
    assert rows.numel() == 16 and method.fit_step == 6
    fresh = trainer.retriever.encode_targets([trainer.corpus_texts[i] for i in rows.tolist()], show_progress_bar=False)
    torch.testing.assert_close(trainer.cache.rows(rows) @ method.W, fresh, atol=1e-4, rtol=1e-4)
    transform = trainer.sampler.transform.function(trainer.state.global_step)
    torch.testing.assert_close(transform(trainer.cache.rows(rows)), fresh, atol=1e-4, rtol=1e-4)
    assert method.last_fit["cos_corrected"] > method.last_fit["cos_stale"] - 1e-6


def test_recent_landmarks_come_from_selected_targets(tmp_path):
    trainer = _trainer(tmp_path, nystrom_landmark_selection="recent", max_steps=3, nystrom_landmarks=8)
    seen: set[int] = set()
    method = trainer.sampler.transform
    original = method.on_targets

    def spy(targets):
        seen.update(targets.tolist())
        original(targets)

    method.on_targets = spy
    trainer.train()
    assert method.fit_step == 3
    assert set(method.landmarks.tolist()) <= seen
    assert len(method.recent) == 8


def test_uniform_landmarks_are_seeded(tmp_path):
    trainer = _trainer(tmp_path)
    method = trainer.sampler.transform
    a, b, c = method.choose_landmarks(3), method.choose_landmarks(3), method.choose_landmarks(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 16


def test_refresh_resets_to_identity(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, cache_refresh_steps=2)
    trainer.train()
    method = trainer.sampler.transform
    assert method.identity and method.fit_step == 2
    assert trainer.sampler.transform.function(trainer.state.global_step) is None
    assert trainer.cost["landmark_encodings"] == 16  # only the step-0 fit


def test_resume_is_exact(tmp_path):
    full = _trainer(tmp_path, out="a", save_strategy="steps", save_steps=4, nystrom_landmark_selection="recent")
    full.train()
    resumed = _trainer(tmp_path, out="b", save_strategy="no", nystrom_landmark_selection="recent")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = full.sampler.transform, resumed.sampler.transform
    assert torch.equal(ma.W, mb.W) and torch.equal(ma.landmarks, mb.landmarks)
    assert list(ma.recent) == list(mb.recent)
    assert full.cost == resumed.cost
