"""The plots people look at, drawn from a user's own run: staleness over training, and quality against the
re-embedding cost (matplotlib, ``pip install hf-corrector[plots]``).

* :func:`staleness_history` / :func:`plot_staleness`: ``staleness_cos_stale`` (cos(g', g)), ``staleness_cos_corrected``
  (cos(h(g'), g)) and ``negatives_overlap_fresh`` at every logging step, from ``trainer.state.log_history``;
* :func:`quality_vs_cost` / :func:`plot_quality_vs_cost`: each evaluation's nDCG@10 (fresh, stale, corrected) against
  the re-embedding cost spent so far (``eval_reembedding_cost``), from the same log history; points of several runs
  can be drawn together (e.g. a corrector run and a refresh baseline);
* :class:`PlotCallback`: writes both figures into ``output_dir/plots/`` at the end of training.

Example:
    >>> trainer = CorrectorTrainer(..., callbacks=[PlotCallback()])  # doctest: +SKIP
    >>> trainer.train()  # out/plots/staleness.png, out/plots/quality_vs_cost.png  # doctest: +SKIP
    >>> plot_quality_vs_cost({"corrector": run_a.state.log_history, "refresh": run_b.state.log_history}, "q.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STALENESS_KEYS = ("staleness_cos_stale", "staleness_cos_corrected", "negatives_overlap_fresh")
QUALITY_KINDS = {"fresh": "eval_ndcg@10", "stale": "eval_stale_ndcg@10", "corrected": "eval_corrected_ndcg@10"}


def staleness_history(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for the staleness statistics in a Trainer log history."""
    out: dict[str, list[tuple[int, float]]] = {key: [] for key in STALENESS_KEYS}
    for entry in log_history:
        for key in STALENESS_KEYS:
            if key in entry:
                out[key].append((int(entry["step"]), float(entry[key])))
    return {k: v for k, v in out.items() if v}


def quality_vs_cost(log_history: Sequence[Mapping[str, Any]], metric: str = "ndcg@10"
                    ) -> dict[str, list[tuple[int, float]]]:
    """``{kind: [(re-embedding cost, value), ...]}`` for every evaluation in a log history (kinds: fresh, stale,
    corrected, as evaluated)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        if "eval_reembedding_cost" not in entry:
            continue
        for kind, key in QUALITY_KINDS.items():
            key = key.replace("ndcg@10", metric)
            if key in entry:
                out.setdefault(kind, []).append((int(entry["eval_reembedding_cost"]), float(entry[key])))
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'hf-corrector[plots]' (or matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_staleness(log_history: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Staleness over training (one line per statistic); saved to ``path`` when given. Returns the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"staleness_cos_stale": "cos(g', g): stale cache", "staleness_cos_corrected": "cos(h(g'), g): corrected",
              "negatives_overlap_fresh": "negatives also in the fresh top-k"}
    for key, points in staleness_history(log_history).items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3, label=labels[key])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean over the step's targets")
    ax.set_title("How stale the cache is")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_quality_vs_cost(runs: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                         path: str | Path | None = None, metric: str = "ndcg@10"):
    """nDCG@10 against re-embedding cost (target-encoder passes, log scale) for one run's log history or several
    named ones; saved to ``path`` when given. Returns the figure."""
    plt = _pyplot()
    named = runs if isinstance(runs, Mapping) else {"run": runs}
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in named.items():
        for kind, points in quality_vs_cost(history, metric).items():
            ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=f"{name}: {kind}")
    ax.set_xscale("log")
    ax.set_xlabel("re-embedding cost (target-encoder forward passes)")
    ax.set_ylabel(metric)
    ax.set_title("Quality against re-embedding cost")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        logger.info("wrote %s", path)
    return fig


class PlotCallback(TrainerCallback):
    """Writes ``staleness.png`` and ``quality_vs_cost.png`` (when the run evaluated) into ``output_dir/plots/`` (or
    ``folder``) at the end of training, on the main process."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = folder

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        folder = Path(self.folder or Path(args.output_dir) / "plots")
        plt = _pyplot()
        if staleness_history(state.log_history):
            plt.close(plot_staleness(state.log_history, folder / "staleness.png"))
        if quality_vs_cost(state.log_history):
            plt.close(plot_quality_vs_cost(state.log_history, folder / "quality_vs_cost.png"))
        return control
