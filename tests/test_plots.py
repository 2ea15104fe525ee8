"""Plots from a user's own run: staleness over training and quality against re-embedding cost."""

from __future__ import annotations

import pytest

from hf_corrector.plots import PlotCallback, plot_quality_vs_cost, quality_vs_cost, staleness_history
from tests.tiny import tiny_data, tiny_retriever

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def test_plot_callback_draws_the_run(tmp_path):
    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments

    train, test = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, report_to=[],
                                      use_cpu=True, disable_tqdm=True, logging_steps=1, save_strategy="no",
                                      eval_strategy="steps", eval_steps=2, num_negatives=3,
                                      eval_corpus_embeddings="fresh,stale,corrected", learning_rate=1e-3)
    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train, eval_dataset=test,
                               callbacks=[PlotCallback()])
    trainer.train()
    history = trainer.state.log_history
    stale = staleness_history(history)
    assert [s for s, _ in stale["staleness_cos_stale"]] == [1, 2, 3, 4]
    assert stale["staleness_cos_corrected"][-1][1] == [h for h in history if "staleness_cos_corrected" in h][-1][
        "staleness_cos_corrected"]
    quality = quality_vs_cost(history)
    assert set(quality) == {"fresh", "stale", "corrected"} and len(quality["fresh"]) == 2
    costs = [c for c, _ in quality["fresh"]]
    assert costs == sorted(costs) and costs[-1] <= trainer.total_reembedding_cost()
    for name in ("staleness.png", "quality_vs_cost.png"):
        assert (tmp_path / "out" / "plots" / name).read_bytes()[:8] == PNG


def test_several_runs_in_one_figure(tmp_path):
    a = [{"eval_reembedding_cost": 100, "eval_ndcg@10": 0.3, "step": 10},
         {"eval_reembedding_cost": 150, "eval_ndcg@10": 0.4, "step": 20}]
    b = [{"eval_reembedding_cost": 1000, "eval_ndcg@10": 0.41, "eval_stale_ndcg@10": 0.35, "step": 20}]
    fig = plot_quality_vs_cost({"corrector": a, "refresh": b}, tmp_path / "q.png")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["corrector: fresh", "refresh: fresh", "refresh: stale"]
    assert (tmp_path / "q.png").read_bytes()[:8] == PNG
