"""Task loss (truncated softmax cross-entropy) and corrector losses (ce, mse, ce+mse)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_corrector.training.losses import corrector_loss, masked_logits, task_loss


def test_task_loss_matches_hand_computed_cross_entropy():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 2])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    tau = 0.5
    # query 0: logits over columns 0, 1 (column 2 masked): 1/0.5, 0.6/0.5
    l0 = -(2.0 - math.log(math.exp(2.0) + math.exp(1.2)))
    # query 1: logits 0, 1.6, 2; positive is column 2
    l1 = -(2.0 - math.log(math.exp(0.0) + math.exp(1.6) + math.exp(2.0)))
    expected = (l0 + l1) / 2
    assert task_loss(q, t, labels, mask, tau).item() == pytest.approx(expected, abs=1e-6)


def test_task_loss_ignores_masked_columns():
    gen = torch.Generator().manual_seed(0)
    q, t = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    labels = torch.tensor([0, 1, 2])
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3] = mask[1, 4] = mask[2, 3] = mask[2, 4] = False
    base = task_loss(q, t, labels, mask, 0.05)
    # changing what is in a column only matters where it is unmasked: make column 4 huge for query 0 only ...
    t2 = t.clone()
    t2[3] = 1000.0 * q[1]  # column 3 is masked for queries 0 and 2 but used by query 1
    t2[4] = 1000.0 * q[0]  # column 4 is masked for queries 1 and 2 but used by query 0
    changed = task_loss(q, t2, labels, mask, 0.05)
    assert changed.item() > base.item()  # sanity: unmasked use of the column matters
    # ... and when the column is masked for everyone, its content has no effect at all
    mask_all = mask.clone()
    mask_all[:, 3:] = False
    a = task_loss(q, t, labels, mask_all, 0.05)
    b = task_loss(q, t2, labels, mask_all, 0.05)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    # and the gradient reaching a masked column is exactly zero
    t3 = t.clone().requires_grad_(True)
    task_loss(q, t3, labels, mask_all, 0.05).backward()
    assert torch.count_nonzero(t3.grad[3:]) == 0
    assert torch.isfinite(t3.grad).all()


def test_masked_logits():
    q = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = masked_logits(q, t, torch.tensor([[True, False]]), 0.5)
    assert out[0, 0].item() == 4.0 and out[0, 1].item() == float("-inf")


def _example(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 4, generator=gen).requires_grad_(True)
    fresh = torch.randn(5, 4, generator=gen).requires_grad_(True)
    corrected = torch.randn(5, 4, generator=gen).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 1]], dtype=torch.bool)
    return q, fresh, corrected, mask


def test_corrector_ce_is_cross_entropy_of_the_two_softmaxes_and_treats_q_and_fresh_as_constants():
    q, fresh, corrected, mask = _example()
    tau = 0.3
    parts = corrector_loss(q, fresh, corrected, mask, tau, kind="ce")
    assert set(parts) == {"corrector_ce", "corrector"}
    expected = 0.0
    for i in range(3):
        cols = mask[i].nonzero().flatten()
        p = ((q[i] @ fresh[cols].T) / tau).softmax(0)
        log_r = ((q[i] @ corrected[cols].T) / tau).log_softmax(0)
        expected = expected - (p * log_r).sum()
    expected = expected / 3
    assert parts["corrector_ce"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert parts["corrector"].item() == pytest.approx(expected.item(), abs=1e-5)
    parts["corrector"].backward()
    assert q.grad is None and fresh.grad is None  # constants: no gradient flows to f or g
    assert corrected.grad is not None and torch.isfinite(corrected.grad).all()
    assert torch.count_nonzero(corrected.grad) > 0
    # a column masked for every query gets no gradient
    q2, fresh2, corrected2, mask2 = _example()
    corrector_loss(q2, fresh2, corrected2, mask2 & torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool), tau,
                   kind="ce")["corrector"].backward()
    assert torch.count_nonzero(corrected2.grad[4]) == 0


def test_corrector_ce_is_minimised_by_the_fresh_embeddings():
    q, fresh, _, mask = _example()
    at_fresh = corrector_loss(q, fresh, fresh.detach().clone(), mask, 0.3, kind="ce")["corrector_ce"]
    # CE(p, p) = H(p): the entropy of the fresh softmax, the minimum over corrected embeddings
    entropy = 0.0
    for i in range(3):
        cols = mask[i].nonzero().flatten()
        p = ((q[i] @ fresh[cols].T) / 0.3).softmax(0)
        entropy = entropy - (p * p.log()).sum()
    assert at_fresh.item() == pytest.approx((entropy / 3).item(), abs=1e-5)
    other = corrector_loss(q, fresh, fresh.detach() + 0.5, mask, 0.3, kind="ce")["corrector_ce"]
    assert other.item() >= at_fresh.item() - 1e-6


def test_corrector_mse_definition_and_combination():
    q, fresh, corrected, mask = _example(1)
    parts = corrector_loss(q, fresh, corrected, mask, 0.3, kind="mse")
    assert set(parts) == {"corrector_mse", "corrector"}
    expected = ((corrected - fresh) ** 2).sum(dim=1).mean()
    assert parts["corrector_mse"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert parts["corrector"].item() == pytest.approx(expected.item(), abs=1e-5)
    parts["corrector"].backward()
    assert q.grad is None and fresh.grad is None
    both = corrector_loss(q, fresh, corrected, mask, 0.3, kind="ce+mse", mse_weight=0.25)
    assert both["corrector"].item() == pytest.approx(
        both["corrector_ce"].item() + 0.25 * both["corrector_mse"].item(), abs=1e-5)
    assert both["corrector_mse"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert corrector_loss(q, fresh, fresh.detach(), mask, 0.3, kind="mse")["corrector_mse"].item() == 0.0
