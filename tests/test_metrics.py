"""Retrieval metrics come from pytrec_eval (trec_eval definitions); exact search streams over chunks."""

from __future__ import annotations

import math

import pytest
import torch

from hf_corrector.evaluation import evaluate_run, exact_search, retrieval_metrics


def test_metrics_match_hand_computed_values() -> None:
    # q1 ranks d2, d3, d1 -> its positive d1 is 3rd; q2 ranks d1, d3, d2 -> d2 is 3rd
    corpus = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    m = retrieval_metrics(torch.eye(2), corpus, ["q1", "q2"], ["d1", "d2", "d3"], {"q1": {"d1": 1}, "q2": {"d2": 1}})
    assert m["mrr@10"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert m["recall@10"] == 1.0 and m["recall@100"] == 1.0


def test_mrr_cutoff_and_missing_queries_count_as_zero() -> None:
    run = {"q1": {f"d{i}": float(-i) for i in range(20)}}  # the positive d15 is ranked 16th
    qrels = {"q1": {"d15": 1}, "q2": {"d0": 1}}  # q2 retrieved nothing
    m = evaluate_run(run, qrels, ["mrr@10", "recall@10", "recall@100", "ndcg@10"])
    assert m["mrr@10"] == 0.0 and m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["recall@100"] == pytest.approx(0.5)  # found for q1, averaged with q2's zero
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_run(run, qrels, ["p@5"])


def test_exact_search_streams_chunks_like_a_full_topk() -> None:
    gen = torch.Generator().manual_seed(0)
    q, corpus = torch.randn(7, 16, generator=gen), torch.randn(1000, 16, generator=gen)
    scores, idx = exact_search(q, corpus, k=25, chunk_size=97, query_batch=3)
    full_s, full_i = (q @ corpus.T).topk(25, dim=1)
    assert torch.equal(idx, full_i) and torch.allclose(scores, full_s)
