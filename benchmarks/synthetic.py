#!/usr/bin/env python
"""Synthetic testbed benchmark (issue 18): every selection strategy against the exact softmax and its gradient.

Modes (``--mode``):

* ``table``: per strategy, KL, top-k recall and gradient error against the truth (mean ± std over ``--seeds``),
  with the re-embedding cost and the wall time; the library's real samplers (``hf_corrector.testbed``).
* ``sweep``: the three terms of the corrector bound: ``--sweep width`` (corrector hidden width / depth),
  ``drift`` (SGD drift size, plus the random-perturbation control) and ``data`` (targets seen by h); JSON + PNG.
* ``e2e``: train the synthetic retriever end to end with each strategy (several seeds) and score exact retrieval.
* ``scale``: the table's strategies at several N (``--sizes``) with wall time and re-embedding cost.

Examples::

    $PY benchmarks/synthetic.py --mode table --N 100000 --seeds 0 1 2 --output benchmarks/results/synthetic_table.json
    $PY benchmarks/synthetic.py --mode sweep --sweep drift --N 20000
    $PY benchmarks/synthetic.py --mode e2e --N 100000 --seeds 0 1 2
    $PY benchmarks/synthetic.py --mode scale --sizes 10000 100000 1000000
    $PY benchmarks/synthetic.py --tiny --output synthetic_tiny.json   # seconds, used by the tests
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TABLE_STRATEGIES = ["stale-topk", "stale-gumbel", "corrector-mlp-ce", "corrector-mlp-mse", "corrector-mlp-ce+mse",
                    "corrector-linear", "nystrom", "refresh", "two-stage", "ance-tele", "oracle-topk",
                    "exact-softmax"]
METRICS = ["kl", "kl_scores", "recall_at_k", "grad_cos", "grad_rel_err", "grad_var"]


def _testbed_args(args: argparse.Namespace, N: int | None = None, seed: int = 0, **over: Any) -> dict[str, Any]:
    kw = {"N": N or args.N, "d": args.dim, "seed": seed, "drift": args.drift, "drift_lr": args.drift_lr,
          "pretrain_steps": args.pretrain_steps, "num_train": args.num_train, "num_test": args.num_test}
    kw.update(over)
    return kw


def _options(args: argparse.Namespace, seed: int, **over: Any):
    from hf_corrector.testbed import StrategyOptions

    opts = StrategyOptions(k=args.k, corrector_steps=args.corrector_steps, nystrom_landmarks=args.landmarks,
                           pool_size=args.pool_size, candidate_index=args.candidate_index, seed=seed)
    for key, value in over.items():
        setattr(opts, key, value)
    return opts


def measure(tb, name: str, args: argparse.Namespace, seed: int, **over: Any) -> dict[str, Any]:
    """Build strategy ``name`` on ``tb`` and evaluate it; metrics plus cost and timing."""
    from hf_corrector.testbed import evaluate_strategy

    metrics = evaluate_strategy(name, tb, k=args.k, num_queries=args.num_queries, draws=args.draws,
                                options=_options(args, seed, **over))
    metrics["seed"] = seed
    logging.info("N=%d seed %d %-22s recall %.3f kl %.3f grad_cos %.3f (%.1fs)", tb.num_targets, seed, name,
                 metrics["recall_at_k"], metrics["kl"], metrics["grad_cos"],
                 metrics["build_seconds"] + metrics["eval_seconds"])
    return metrics


def summarize(rows: list[dict[str, Any]], key: str = "strategy", metrics=METRICS + ["reembeddings"]) -> list[dict]:
    """Mean and standard deviation over seeds, per ``key`` value (in first-seen order)."""
    out = []
    for value in dict.fromkeys(r[key] for r in rows):
        group = [r for r in rows if r[key] == value]
        entry: dict[str, Any] = {key: value, "seeds": len(group)}
        for m in metrics:
            vals = [float(r[m]) for r in group if m in r]
            if vals:
                entry[m] = statistics.fmean(vals)
                entry[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def _fmt(entry: dict, m: str, digits: int = 3) -> str:
    if m not in entry:
        return "—"
    return f"{entry[m]:.{digits}f} ± {entry[m + '_std']:.{digits}f}"


def table_markdown(summary: list[dict], title: str) -> str:
    lines = [f"**{title}**", "",
             "| strategy | KL(P_S‖P) | KL(P‖P̂) of its scores | top-k recall | grad cos | grad rel. err | grad variance "
             "| re-embeddings |", "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['strategy']} | {_fmt(e, 'kl')} | {_fmt(e, 'kl_scores')} | {_fmt(e, 'recall_at_k')} | "
                     f"{_fmt(e, 'grad_cos')} | {_fmt(e, 'grad_rel_err')} | {_fmt(e, 'grad_var', 4)} | "
                     f"{int(e.get('reembeddings', 0)):,} |")
    return "\n".join(lines)


# -- modes ------------------------------------------------------------------------------------------------------------
def run_table(args) -> dict[str, Any]:
    from hf_corrector.testbed import make_testbed

    rows, info = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        tb = make_testbed(**_testbed_args(args, seed=seed))
        info.append({**tb.info, "testbed_seconds": time.perf_counter() - t0})
        for name in args.strategies:
            rows.append(measure(tb, name, args, seed))
    summary = summarize(rows)
    return {"rows": rows, "summary": summary, "testbeds": info,
            "markdown": table_markdown(summary, f"N = {args.N:,}, seeds {args.seeds}, drift {args.drift} Adam steps "
                                                f"on the full-softmax loss")}


SWEEPS = {
    # name: (values, what is varied, how)
    "width": [(8, 2), (32, 2), (64, 2), (256, 2), (64, 3), (256, 3)],
    "drift": [0, 10, 25, 50, 100, 200, 400],
    "data": [2, 5, 10, 25, 50, 100, 200, 400],
}
TINY_SWEEPS = {"width": [(8, 2)], "drift": [0, 5], "data": [2, 4]}
SWEEP_STRATEGIES = ["stale-topk", "corrector-mlp-ce+mse", "corrector-linear"]


def run_sweep(args) -> dict[str, Any]:
    from hf_corrector.testbed import make_testbed

    rows = []
    kind = args.sweep
    for seed in args.seeds:
        if kind == "drift":
            for drift_kind in ("sgd", "random"):
                for drift in args.sweep_values["drift"]:
                    tb = make_testbed(**_testbed_args(args, seed=seed, drift=drift, drift_kind=drift_kind))
                    for name in SWEEP_STRATEGIES:
                        r = measure(tb, name, args, seed)
                        r.update({"x": drift, "drift_kind": drift_kind,
                                  "mean_cos_stale_fresh": tb.info["mean_cos_stale_fresh"]})
                        rows.append(r)
            continue
        tb = make_testbed(**_testbed_args(args, seed=seed))
        base = measure(tb, "stale-topk", args, seed)
        if kind == "width":
            for hidden, layers in args.sweep_values["width"]:
                r = measure(tb, "corrector-mlp-ce+mse", args, seed, corrector_hidden=hidden, corrector_layers=layers)
                params = 2 * hidden * tb.dim if layers == 2 else hidden * tb.dim * 2 + hidden * hidden
                r.update({"x": params, "hidden": hidden, "layers": layers})
                rows.append(r)
            r = measure(tb, "corrector-linear", args, seed)
            r.update({"x": tb.dim * tb.dim, "hidden": 0, "layers": 1})
            rows.append(r)
        else:
            for steps in args.sweep_values["data"]:
                for name in ("corrector-mlp-ce+mse", "corrector-linear"):
                    r = measure(tb, name, args, seed, corrector_steps=steps)
                    r["x"] = r["step_targets"]
                    r["corrector_steps"] = steps
                    rows.append(r)
        for r in [base]:
            r["x"] = None
            rows.append(r)
    return {"sweep": kind, "rows": rows}


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, rows = result["sweep"], result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("kl_scores", "KL(P ‖ P̂) of the selection scores (nats)"), ("recall_at_k", "recall of the true top-k"),
              ("grad_rel_err", "gradient relative error ‖ĝ−g‖/‖g‖")]
    xlabel = {"width": "corrector parameters (log scale)", "drift": "drift (optimizer steps from θ' to θ)",
              "data": "training targets seen by h (log scale)"}[kind]
    for ax, (metric, ylabel) in zip(axes, panels):
        if kind == "drift":
            for drift_kind, style in (("sgd", "-"), ("random", "--")):
                for name, marker in zip(SWEEP_STRATEGIES, "sov"):
                    pts = _mean_points([r for r in rows if r["drift_kind"] == drift_kind and r["strategy"] == name],
                                       metric)
                    if pts:
                        ax.plot(*zip(*pts), style, marker=marker, label=f"{name} ({drift_kind} drift)")
        else:
            stale = [r[metric] for r in rows if r["strategy"] == "stale-topk" and metric in r]
            if stale:
                ax.axhline(statistics.fmean(stale), color="gray", ls=":", label="stale-topk (baseline)")
            for name, marker in (("corrector-mlp-ce+mse", "o"), ("corrector-linear", "v")):
                pts = _mean_points([r for r in rows if r["strategy"] == name], metric)
                if pts:
                    ax.plot(*zip(*pts), marker=marker, ls="-" if kind == "data" else "none", label=name)
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n = rows[0].get("num_queries", "?")
    fig.suptitle(f"Corrector bound term swept: {kind} (synthetic testbed, {n} probe queries, "
                 f"{len({r['seed'] for r in rows})} seed(s))")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_points(rows: list[dict], metric: str) -> list[tuple[float, float]]:
    by_x: dict[float, list[float]] = {}
    for r in rows:
        if r.get("x") is not None and metric in r:
            by_x.setdefault(r["x"], []).append(r[metric])
    return sorted((x, statistics.fmean(v)) for x, v in by_x.items())


def run_e2e(args) -> dict[str, Any]:
    from hf_corrector.testbed import make_testbed
    from hf_corrector.testbed.train import retrieval_quality, train_end_to_end

    rows, starts = [], []
    for seed in args.seeds:
        tb = make_testbed(**_testbed_args(args, seed=seed, drift=0, pretrain_steps=args.e2e_pretrain_steps))
        starts.append({"seed": seed, **retrieval_quality(tb.stale_model, tb)})
        for name in args.e2e_strategies:
            r = train_end_to_end(tb, name, steps=args.e2e_steps, k=args.k, lr=args.e2e_lr,
                                 refresh_every=args.refresh_every, seed=seed)
            r.update({"strategy": name, "seed": seed})
            logging.info("e2e seed %d %-16s recall@1 %.4f mrr@10 %.4f nll %.4f (%.0fs)", seed, name,
                         r["recall_at_1"], r["mrr_at_10"], r["test_nll"], r["seconds"])
            rows.append(r)
    metrics = ["recall_at_1", "recall_at_10", "mrr_at_10", "test_nll", "reembeddings", "seconds"]
    summary = summarize(rows, metrics=metrics)
    lines = [f"**End-to-end, N = {args.N:,}, {args.e2e_steps} steps, seeds {args.seeds}** (start: recall@1 "
             f"{statistics.fmean(s['recall_at_1'] for s in starts):.4f})", "",
             "| strategy | recall@1 | MRR@10 | test NLL (full softmax) | re-embeddings | seconds |",
             "|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['strategy']} | {_fmt(e, 'recall_at_1', 4)} | {_fmt(e, 'mrr_at_10', 4)} | "
                     f"{_fmt(e, 'test_nll', 4)} | {int(e['reembeddings']):,} | {e['seconds']:.0f} |")
    return {"rows": rows, "summary": summary, "start": starts, "markdown": "\n".join(lines)}


def run_scale(args) -> dict[str, Any]:
    from hf_corrector.testbed import make_testbed

    rows = []
    for N in args.sizes:
        t0 = time.perf_counter()
        tb = make_testbed(**_testbed_args(args, N=N, seed=args.seeds[0]))
        build = time.perf_counter() - t0
        for name in args.strategies:
            r = measure(tb, name, args, args.seeds[0])
            r.update({"N": N, "testbed_seconds": build})
            rows.append(r)
    lines = ["| N | strategy | top-k recall | KL(P_S‖P) | grad cos | re-embeddings | re-embeddings / N | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['strategy']} | {r['recall_at_k']:.3f} | {r['kl']:.3f} | {r['grad_cos']:.3f} "
                     f"| {r['reembeddings']:,} | {r['reembeddings'] / r['N']:.3g} | "
                     f"{r['build_seconds'] + r['eval_seconds']:.1f} |")
    return {"rows": rows, "markdown": "\n".join(lines)}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["table", "sweep", "e2e", "scale"], default="table")
    p.add_argument("--sweep", choices=sorted(SWEEPS), default="drift")
    p.add_argument("--N", type=int, default=100_000, help="number of targets")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="N values (scale)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--strategies", nargs="+", default=TABLE_STRATEGIES)
    p.add_argument("--dim", type=int, default=32, help="embedding dimension d")
    p.add_argument("--drift", type=int, default=50, help="SGD drift steps from the stale θ' to θ")
    p.add_argument("--drift-lr", type=float, default=3e-3)
    p.add_argument("--pretrain-steps", type=int, default=100)
    p.add_argument("--num-train", type=int, default=4096)
    p.add_argument("--num-test", type=int, default=1024)
    p.add_argument("--k", type=int, default=16, help="negatives per query")
    p.add_argument("--num-queries", type=int, default=256, help="probe queries for the metrics")
    p.add_argument("--draws", type=int, default=4, help="draws of the stochastic samplers (bias / variance)")
    p.add_argument("--corrector-steps", type=int, default=100)
    p.add_argument("--landmarks", type=int, default=256, help="Nyström landmarks")
    p.add_argument("--pool-size", type=int, default=256, help="two-stage candidates per query")
    p.add_argument("--candidate-index", default="ivf")
    p.add_argument("--e2e-strategies", nargs="+",
                   default=["stale", "corrector", "refresh", "oracle", "full-softmax"])
    p.add_argument("--e2e-steps", type=int, default=200)
    p.add_argument("--e2e-lr", type=float, default=1e-2)
    p.add_argument("--e2e-pretrain-steps", type=int, default=30)
    p.add_argument("--refresh-every", type=int, default=50, help="R of the refresh strategy (e2e)")
    p.add_argument("--output", default=None, help="JSON file (default benchmarks/results/synthetic_<mode>.json)")
    p.add_argument("--plot", default=None, help="PNG of a sweep (default next to the JSON)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (pinned: the stored numbers were made with "
                   "1; on a shared 2-core machine 1 thread is also faster)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long configuration (tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.N, args.sizes, args.dim, args.drift, args.pretrain_steps = 600, [300, 600], 8, 5, 5
        args.num_train, args.num_test, args.k, args.num_queries, args.draws = 128, 32, 4, 16, 2
        args.corrector_steps, args.landmarks, args.pool_size, args.candidate_index = 3, 16, 32, "flat"
        args.e2e_steps, args.e2e_pretrain_steps, args.refresh_every = 4, 3, 2
    args.sweep_values = TINY_SWEEPS if args.tiny else SWEEPS
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    result = {"table": run_table, "sweep": run_sweep, "e2e": run_e2e, "scale": run_scale}[args.mode](args)
    result["seconds"] = time.perf_counter() - start
    result["args"] = vars(args)
    result["command"] = "benchmarks/synthetic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    name = f"synthetic_{args.mode}" + (f"_{args.sweep}" if args.mode == "sweep" else "")
    out = Path(args.output) if args.output else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.mode == "sweep":
        result["plot"] = str(plot_sweep(result, Path(args.plot) if args.plot else out.with_suffix(".png")))
    out.write_text(json.dumps(result, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o)
                              else str(o)))
    if "markdown" in result:
        print(result["markdown"])
    print(f"wrote {out} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
