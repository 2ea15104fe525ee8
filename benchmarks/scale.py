#!/usr/bin/env python
"""Scale benchmarks of issue 15, as ratios measured inside one run (robust to a shared, noisy CPU).

Parts (each result is written to ``--output`` JSON as soon as it is measured):

1. ``selection``: at N = ``--size`` (default 100,000) rows x d, B = 16 queries: the plain GEMM rate (8192 x d x 2d),
   the plain scoring pass (``select_negatives`` without a transform) in float32 / bfloat16 / float16 and its GFLOP/s
   against the GEMM rate, the materialisation of the corrected view (h over N rows in chunks of 8192) against the
   GEMM rate, today's per-step corrected pass, and the overlap@k of the negatives chosen in reduced precision with
   float32 (random corrector-mapped cache, queries near cache rows).
2. ``step``: one real training step (``--step-model`` cut to 2 layers, batch 16, 5 negatives, documents at 48
   tokens) and the per-step selection cost at N as a fraction of it: per-step corrector (today), and amortised
   (scan + materialisation / M) for several M.
3. ``sharded``: a saved ``--sharded-size`` x d cache; one process with one thread vs two processes (gloo, one
   thread each, ``cache_sharding="sharded"``, the same global batch of 16 queries): each rank's cache-attributable
   peak RSS (peak RSS minus the RSS before the cache is loaded) and the per-step selection time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import PeakRSS, write_json_atomic
from speed import best_time as best, rand_cache  # the same yardsticks as speed.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--view-steps", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--sharded-size", type=int, default=1_000_000)
    p.add_argument("--sharded-steps", type=int, default=4)
    p.add_argument("--step-model", default=None)
    p.add_argument("--step-count", type=int, default=4)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    p.add_argument("--parts", nargs="+", default=["selection", "step", "sharded"])
    p.add_argument("--output", default=str(HERE / "results" / "scale.json"))
    p.add_argument("--work-dir", default=None, help="where the saved sharded-size cache goes (default a temp dir)")
    p.add_argument("--rank-worker", nargs=3, default=None, help=argparse.SUPPRESS)  # cache_path mode out_json
    return p.parse_args(argv)


def corrector(d):
    import torch

    from hf_corrector import CorrectorConfig, CorrectorModel

    torch.manual_seed(0)
    h = CorrectorModel(CorrectorConfig(embedding_dim=d, architecture="mlp"))
    torch.nn.init.normal_(h.mlp[-1].weight, std=0.02)  # a trained corrector is not the identity
    return h.eval()


def part_selection(args, res):
    import torch

    from hf_corrector.negatives.topk import select_negatives
    from hf_corrector.negatives.transforms import CorrectorTransform, _apply_eval

    n, d, b, k = args.size, args.dim, args.queries, args.k
    a, w = torch.randn(8192, d), torch.randn(d, 2 * d)
    t_gemm, _ = best(lambda: a @ w, max(args.repeats, 5))
    gemm = 2 * 8192 * d * 2 * d / t_gemm / 1e9
    cache = rand_cache(n, d)
    h = corrector(d)
    hidden = h.config.hidden_dim
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(cache[torch.randint(0, n, (b,), generator=g)] + 0.5 * torch.randn(b, d, generator=g), dim=-1)
    excl = [[i] for i in range(b)]
    out = {"n": n, "d": d, "queries": b, "k": k, "gemm_shape": [8192, d, 2 * d], "gemm_gflops": gemm,
           "threads": torch.get_num_threads()}

    class Ctx:  # the transform's view needs a cache manager: the local rows and chunks
        local_rows = (0, n)
        dim = d
        write_back = False

        def read_chunk(self, s, e):
            return cache[s:e]

    transform = CorrectorTransform(lambda: h, view_steps=1)
    transform.setup(type("C", (), {"cache": Ctx()})())

    def materialise():
        transform.view_due = True
        transform.view(0)

    # paired with its yardstick, alternated (the shared CPU's speed drifts): the MLP's own two GEMMs over the same
    # rows in the same chunks, and a large plain GEMM of the same FLOPs
    w1, w2 = torch.randn(d, hidden), torch.randn(hidden, d)

    def mlp_gemms():
        for s in range(0, n, 8192):
            (cache[s : s + 8192] @ w1) @ w2

    flops_h = 2 * n * (d * hidden + hidden * d)
    reps = int(flops_h / (2 * 8192 * d * 2 * d))

    def big_gemm(r=reps):
        for _ in range(r):
            a @ w

    pairs = []
    for _ in range(2):
        tg, _ = best(big_gemm, 1)
        tm, _ = best(mlp_gemms, 1)
        tv, _ = best(materialise, 1)
        pairs.append((tg, tm, tv))
    t_view = min(p[2] for p in pairs)
    view = transform._view
    out.update(view_s=t_view, view_pairs_s=pairs, view_gflops=flops_h / t_view / 1e9,
               view_fraction_of_gemm=statistics.median(p[0] / p[2] for p in pairs),
               view_fraction_of_its_own_gemms=statistics.median(p[1] / p[2] for p in pairs))
    res["selection"] = out
    chosen = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        v = view if dtype is None else view.to(dtype)  # the view is stored in the scoring dtype

        def scan(v=v, dtype=dtype):
            return select_negatives(q, v, k, exclude=excl, num_rows=n, score_dtype=dtype)

        flops_s = 2 * n * d * b
        scan_pairs = []
        for _ in range(args.repeats):
            tr, _ = best(lambda v=v: v.sum(dtype=torch.float32), 1)  # one streaming read of the rows
            tg, _ = best(lambda: a @ w, 1)
            ts, _ = best(scan, 1)
            scan_pairs.append((tr, tg * flops_s / (2 * 8192 * d * 2 * d), ts))
        t = min(p[2] for p in scan_pairs)
        chosen[name] = scan().indices
        out[f"scan_{name}_s"] = t
        out[f"scan_{name}_pairs_s"] = scan_pairs
        out[f"scan_{name}_gflops"] = flops_s / t / 1e9
        out[f"scan_{name}_fraction_of_gemm"] = statistics.median(p[1] / p[2] for p in scan_pairs)
        out[f"scan_{name}_fraction_of_read_rate"] = statistics.median(p[0] / p[2] for p in scan_pairs)
        if name != "float32":
            same = [len(set(a_.tolist()) & set(c.tolist())) / k for a_, c in zip(chosen[name], chosen["float32"])]
            out[f"overlap_at_k_{name}_vs_float32"] = statistics.fmean(same)
            out[f"exact_match_{name}_vs_float32"] = float(torch.equal(chosen[name], chosen["float32"]))
        res["selection"] = out
    # the sharded case scores every process's queries: W x 16 queries per row read
    for b_all in (32, 64):
        q_all = torch.nn.functional.normalize(torch.randn(b_all, d, generator=g), dim=-1)
        ex_all = [[i] for i in range(b_all)]
        t, _ = best(lambda q_all=q_all, ex_all=ex_all: select_negatives(q_all, view, k, exclude=ex_all, num_rows=n), 2)
        tg, _ = best(lambda: a @ w, 3)
        out[f"scan_float32_{b_all}q_fraction_of_gemm"] = (2 * n * d * b_all / t) / (2 * 8192 * d * 2 * d / tg)
    t_today, _ = best(lambda: select_negatives(q, cache, k, exclude=excl, num_rows=n,
                                                       transform=_apply_eval(h)), 1)
    out.update(per_step_corrected_s=t_today, per_step_corrected_fraction_of_gemm=(flops_h + 2 * n * d * b) / t_today / 1e9 / gemm)
    res["selection"] = out


def part_step(args, res):

    from quality import default_model
    from transformers import TrainerCallback

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel, StaleCache
    from hf_corrector.data import load_beir

    times = []

    class CB(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    train = load_beir(args.data, split="train")
    model = args.step_model or default_model()
    r = RetrieverModel.from_backbone(model, num_hidden_layers=2, target_max_length=48, query_max_length=32)
    cache = StaleCache(list(train.corpus["doc_id"]), rand_cache(len(train.corpus), r.embedding_dim), provenance=r.provenance())
    with tempfile.TemporaryDirectory() as out:
        targs = CorrectorTrainingArguments(out, max_steps=args.step_count, per_device_train_batch_size=16,
                                           learning_rate=1e-4, num_negatives=5, use_cpu=True, save_strategy="no",
                                           report_to="none", disable_tqdm=True, logging_steps=1000, correction="none",
                                           cache_from_other_weights=True)
        CorrectorTrainer(model=r, args=targs, train_dataset=train, cache=cache, callbacks=[CB()]).train()
    step_s = statistics.median(times[1:])
    sel = res["selection"]
    out = {"model": model, "layers": 2, "doc_max_length": 48, "batch": 16, "negatives": 5, "step_times_s": times,
           "median_step_s": step_s, "n": sel["n"],
           "per_step_corrected_fraction_of_step": sel["per_step_corrected_s"] / step_s,
           "note": "the step is timed with a stale SciFact-size cache; selection costs come from part 'selection'"}
    for m in args.view_steps:
        for name in ("float32", "bfloat16"):
            cost = sel[f"scan_{name}_s"] + sel["view_s"] / m
            out[f"amortised_M{m}_{name}_s"] = cost
            out[f"amortised_M{m}_{name}_fraction_of_step"] = cost / step_s
    out["scan_only_float32_fraction_of_step"] = sel["scan_float32_s"] / step_s
    res["step"] = out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rank_worker(cache_path: str, mode: str, out_json: str, steps: int, queries: int, k: int) -> None:
    """One process of the sharded measurement (run alone, or under accelerate launch with 2 processes)."""
    import torch

    torch.set_num_threads(1)
    from accelerate import Accelerator

    from hf_corrector import StaleCache
    from hf_corrector.cache.manager import CacheManager
    from hf_corrector.cache.sharding import row_range
    from hf_corrector.negatives import ExhaustiveSampler, SamplerContext

    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    info = json.loads((Path(cache_path) / "cache_info.json").read_text())
    n, d = info["num_rows"], info["embedding_dim"]
    texts = [f"d{i}" for i in range(n)]  # the corpus is not the cache: held before the baseline RSS
    gc.collect()
    base = rss_mb()
    with PeakRSS(interval=0.01) as peak:
        rows = row_range(n, world, rank) if mode == "sharded" else None
        cache = StaleCache.load(cache_path, verify="rows", rows=rows)
        manager = CacheManager(cache, texts, encode_targets=None, accelerator=acc if world > 1 else None,
                               sharding=mode)
        sampler = ExhaustiveSampler("topk")
        sampler.setup(SamplerContext(manager, encode_queries=None, seed=0))
        per_rank = queries // world
        g = torch.Generator().manual_seed(0)
        q_all = torch.nn.functional.normalize(torch.randn(queries, d, generator=g), dim=-1)
        q = q_all[rank * per_rank : (rank + 1) * per_rank]
        times, chosen = [], None
        for step in range(steps):
            acc.wait_for_everyone()
            t0 = time.perf_counter()
            sel = sampler.sample(q, [[] for _ in range(per_rank)], [str(i) for i in range(per_rank)], k, step)
            times.append(time.perf_counter() - t0)
            chosen = sel.indices
        # the same scan without any communication: this rank's rows, all the step's queries
        from hf_corrector.negatives.topk import select_negatives_sharded

        local = []
        for _ in range(3):
            t0 = time.perf_counter()
            select_negatives_sharded(q_all, manager.read_chunk, k, manager.local_rows, n, lambda t: [t],
                                     exclude=[[] for _ in range(queries)])
            local.append(time.perf_counter() - t0)
    result = {"local_scan_only_s": min(local), "mode": mode, "world": world, "rank": rank, "rows_held": len(manager.cache), "base_rss_mb": base,
              "peak_rss_mb": peak.peak_mb, "cache_attributable_peak_mb": peak.peak_mb - base,
              "cache_bytes_mb": n * d * 4 / 2**20, "step_times_s": times, "median_select_s": statistics.median(times[1:]),
              "chosen": chosen.tolist(), "queries_per_rank": per_rank}
    Path(f"{out_json}.rank{rank}").write_text(json.dumps(result))


def part_sharded(args, res):
    from hf_corrector import StaleCache

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scale_"))
    path = work / f"cache_{args.sharded_size}x{args.dim}"
    if not (path / "cache_info.json").exists():
        emb = rand_cache(args.sharded_size, args.dim)
        StaleCache([f"d{i}" for i in range(args.sharded_size)], emb).save(path)
        del emb
        gc.collect()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    me = [str(Path(__file__).resolve())]
    tail = ["--rank-worker", str(path)]
    out = {}
    for mode, launcher in (("replicated", [sys.executable]),
                           ("sharded", [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
                                        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                                        "--dynamo_backend", "no", "--main_process_port", "0"])):
        target = work / f"{mode}.json"
        cmd = launcher + me + tail + [mode, str(target), "--sharded-steps", str(args.sharded_steps),
                                      "--queries", str(args.queries), "--k", str(args.k)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        out[mode] = [json.loads(p.read_text()) for p in sorted(work.glob(f"{mode}.json.rank*"))]
    one = out["replicated"][0]
    ranks = out["sharded"]
    summary = {"n": args.sharded_size, "d": args.dim, "global_batch": args.queries,
               "same_negatives": all(r["chosen"] == one["chosen"][r["rank"] * r["queries_per_rank"]:
                                                                (r["rank"] + 1) * r["queries_per_rank"]] for r in ranks),
               "single": {k: v for k, v in one.items() if k != "chosen"},
               "ranks": [{k: v for k, v in r.items() if k != "chosen"} for r in ranks]}
    summary["memory_ratio_per_rank"] = [r["cache_attributable_peak_mb"] / one["cache_attributable_peak_mb"] for r in ranks]
    summary["select_time_ratio_per_rank"] = [r["median_select_s"] / one["median_select_s"] for r in ranks]
    res["sharded"] = summary


def main(argv=None):
    args = parse_args(argv)
    if args.rank_worker:
        cache_path, mode, out_json = args.rank_worker
        rank_worker(cache_path, mode, out_json, args.sharded_steps, args.queries, args.k)
        return None
    import torch

    torch.set_num_threads(1)
    out_path = Path(args.output)
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    res.setdefault("runs", [])
    run = {"argv": sys.argv if argv is None else ["scale.py", *argv], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "loadavg_start": os.getloadavg()}
    res["runs"].append(run)
    for name in args.parts:
        t0 = time.perf_counter()
        {"selection": part_selection, "step": part_step, "sharded": part_sharded}[name](args, run)
        run[f"{name}_wall_s"] = time.perf_counter() - t0
        run["loadavg_now"] = os.getloadavg()
        write_json_atomic(out_path, res)
        print(name, json.dumps(run[name], indent=1)[:3000], flush=True)
    return run


if __name__ == "__main__":
    main()
