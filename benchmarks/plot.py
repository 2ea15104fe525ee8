#!/usr/bin/env python
"""Plot nDCG@10 against re-embedding cost (log x) from one or more ``quality.py`` JSON files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="*", default=None, help="quality JSON files (default benchmarks/results/quality_*.json)")
    p.add_argument("--output", default=str(HERE / "results" / "quality_vs_cost.png"))
    args = p.parse_args(argv)
    inputs = [Path(x) for x in args.inputs] if args.inputs else sorted((HERE / "results").glob("quality_*.json"))
    if not inputs:
        p.error("no input JSON files")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quality import ALL_ROWS, summarize

    colors = {row: plt.get_cmap("tab20")(i) for i, row in enumerate(ALL_ROWS)}

    fig, axes = plt.subplots(len(inputs), 2, figsize=(14, 5.2 * len(inputs)), squeeze=False)
    markers = {"inbatch": "v", "stale": "s", "refresh": "D", "corrector": "o", "st": "^", "nystrom": "P", "tele": "X"}
    panels = [(ax, path, zoom) for row_axes, path in zip(axes, inputs) for ax, zoom in zip(row_axes, (False, True))]
    for ax, path, zoom in panels:
        data = json.loads(path.read_text())
        summ = summarize(data["runs"])
        start = next((s for s in summ if s["row"] == "start"), None) if not zoom else None
        n_docs = data.get("num_docs") or 0
        for s in summ:
            if s["row"] == "start" or "test_ndcg@10" not in s:
                continue
            if zoom and s.get("reembedding_cost", 0) < n_docs:
                continue
            cost = max(s.get("reembedding_cost", 1), 1)
            key = next((k for k in markers if s["row"].startswith(k)), "st")
            ax.errorbar(cost, 100 * s["test_ndcg@10"], yerr=100 * s.get("test_ndcg@10_std", 0), fmt=markers[key],
                        color=colors.get(s["row"]), capsize=3, label=f"{s['row']} (n={s['n']})")
            ax.annotate(s["row"], (cost, 100 * s["test_ndcg@10"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if start:
            ax.axhline(100 * start["test_ndcg@10"], color="gray", ls=":", lw=1, label="start (untrained)")
        n = data.get("num_docs")
        if n:
            ax.axvline(n, color="lightgray", ls="--", lw=1)
        cfg = data.get("config", {})
        ax.set_xscale("log")
        ax.set_xlabel("re-embedding cost (target-encoder forward passes; dashed = one corpus pass N)")
        ax.set_ylabel("test nDCG@10 (x100), mean ± std over seeds")
        ax.set_title(("zoom: rows that use a corpus encoding. " if zoom else "") + f"{cfg.get('setting')}: {cfg.get('num_layers')} layers, lr {cfg.get('lr')}, T={cfg.get('steps')}, "
                     f"k={cfg.get('num_negatives')}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(out)
    return out


if __name__ == "__main__":
    main()
