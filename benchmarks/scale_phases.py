#!/usr/bin/env python
"""Phase table of issue 21: each process's peak memory (RSS) in every phase of a run, 2 sharded processes against 1.

Over a synthetic corpus of ``--size`` documents and a generated float16 cache of ``--size`` x ``--dim`` (random
unit rows, with the provenance of the tiny encoder and this corpus; generated, not encoded, so a CPU can reach
millions of rows), saved once as a single-file cache folder. Then, each a fresh launch:

1. ``two``: 2 gloo processes (``accelerate launch``, ``cache_sharding="sharded"``): load (each its rows), 10
   training steps, the checkpoint at step 10 (one shard per process + manifest), evaluation of the stale corpus
   (each its rows, the per-process top-k merged); then the processes end (the "kill");
2. ``resume1``: 1 process resumes from the 2-process checkpoint (2 -> 1), 2 more steps, evaluation;
3. ``one``: the single-process run of phase 1 (replicated, the baseline).

Per process and phase: the peak RSS and the peak above the RSS before the cache was loaded (model, corpus texts
and the interpreter excluded). Training: a tiny 2-layer encoder (hidden 384), batch 8 a process (16 global), 5
negatives, top-k, no corrector (``correction="none"``: the corrected view would double each number alike).

Example:
    python benchmarks/scale_phases.py --size 1000000 --output benchmarks/results/scale_phases_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PHASES = ("load", "train", "checkpoint", "evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--queries", type=int, default=64, help="training + evaluation queries")
    p.add_argument("--output", default=str(HERE / "results" / "scale_phases.json"))
    p.add_argument("--work-dir", default=None, help="default: a temporary folder")
    p.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)  # mode work_dir out_json
    return p.parse_args(argv)


def corpus_records(n: int, queries: int):
    from tests.tiny import WORDS

    rng = random.Random(0)
    docs = [{"doc_id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(8))} for i in range(n)]
    qs = [{"query_id": f"q{j}", "query": docs[(j * 7919) % n]["text"], "positive_ids": [f"d{(j * 7919) % n}"]}
          for j in range(queries)]
    return docs, qs


def data(n: int, queries: int):
    from hf_corrector import RetrievalData

    docs, qs = corpus_records(n, queries)
    return RetrievalData.from_records(qs, docs, name="synthetic")


def prepare(args, work: Path) -> None:
    """The tiny encoder (saved) and the generated float16 cache with its provenance (saved)."""
    import torch

    from hf_corrector import StaleCache
    from hf_corrector.cache.rank_build import cache_provenance
    from tests.tiny import tiny_retriever

    retriever = tiny_retriever(work / "tok", hidden=args.dim, dropout=0.0)
    retriever.save_pretrained(work / "model")
    retriever.tokenizer.save_pretrained(work / "model")
    corpus = data(args.size, args.queries).corpus
    ids, texts = [str(d) for d in corpus["doc_id"]], list(corpus["text"])
    g = torch.Generator().manual_seed(0)
    emb = torch.empty(args.size, args.dim, dtype=torch.float16)
    for s in range(0, args.size, 65536):
        chunk = torch.randn(min(65536, args.size - s), args.dim, generator=g)
        emb[s : s + chunk.shape[0]] = torch.nn.functional.normalize(chunk, dim=-1)
    prov = cache_provenance(retriever, ids, texts, "float16", retriever.config.target_max_length)
    StaleCache(ids, emb, provenance=prov, dtype="float16").save(work / "cache")


class Phases:
    """Peak RSS per phase label, sampled every 20 ms in a thread; ``phase`` is switched by the run."""

    def __init__(self):
        import psutil

        self.proc, self.phase, self.peaks = psutil.Process(), "setup", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.02)

    def sample(self):
        rss = self.proc.memory_info().rss
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def switch(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> dict:
        self.sample()
        self._stop.set()
        self._thread.join()
        return {k: v / 2**20 for k, v in self.peaks.items()}


def worker(mode: str, work: Path, out_json: Path, args) -> None:
    import torch
    from transformers import TrainerCallback

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, load_retriever

    phases = Phases()
    train = data(args.size, args.queries)
    retriever = load_retriever(str(work / "model"))
    before_cache = phases.proc.memory_info().rss / 2**20
    resume = str(work / "two" / f"checkpoint-{args.steps}") if mode == "resume1" else None
    sharded = mode == "two"
    targs = CorrectorTrainingArguments(
        str(work / mode), max_steps=args.steps + (2 if resume else 0), per_device_train_batch_size=8 if sharded else 16,
        learning_rate=1e-4, num_negatives=5, negative_sampling="topk", correction="none", in_batch_negatives=False,
        use_cpu=True, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, save_strategy="steps",
        save_steps=args.steps, logging_steps=5, report_to="none", seed=0, dataloader_drop_last=True,
        disable_tqdm=True, cache_sharding="sharded" if sharded else "replicated", eval_corpus_embeddings="stale",
        resume_from_checkpoint=resume, save_only_model=False)

    class Switch(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step % args.steps == 0 and not resume:
                phases.switch("checkpoint")

        def on_save(self, a, state, control, **kw):
            phases.switch("train")

    phases.switch("load")
    t0 = time.perf_counter()
    trainer = CorrectorTrainer(model=retriever, args=targs, train_dataset=train,
                               cache=None if resume else str(work / "cache"), callbacks=[Switch()])
    timings = {"load": time.perf_counter() - t0}
    phases.switch("train")
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    timings["train_and_checkpoint"] = time.perf_counter() - t0
    phases.switch("evaluate")
    t0 = time.perf_counter()
    metrics = trainer.evaluate(train)
    timings["evaluate"] = time.perf_counter() - t0
    peaks = phases.stop()
    rank = trainer.accelerator.process_index
    out = {"mode": mode, "rank": rank, "world": trainer.accelerator.num_processes,
           "local_rows": list(trainer.cache_manager.local_rows), "rss_before_cache_mb": before_cache,
           "peak_rss_mb": {p: peaks.get(p) for p in PHASES},
           "peak_above_before_cache_mb": {p: peaks[p] - before_cache if p in peaks else None for p in PHASES},
           "seconds": timings, "stale_recall@100": metrics.get("eval_stale_recall@100"),
           "torch_threads": torch.get_num_threads()}
    Path(f"{out_json}.rank{rank}").write_text(json.dumps(out, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch(mode: str, work: Path, args) -> list[dict]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    out_json = work / f"{mode}.json"
    me = [str(Path(__file__).resolve()), "--size", str(args.size), "--dim", str(args.dim), "--steps", str(args.steps),
          "--queries", str(args.queries), "--worker", mode, str(work), str(out_json)]
    if mode == "two":
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *me]
    else:
        cmd = [sys.executable, *me]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(work.glob(f"{mode}.json.rank*"))]


def main(argv=None) -> dict:
    from _common import write_json_atomic

    args = parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]), args)
        return {}
    tmp = None if args.work_dir else tempfile.TemporaryDirectory()
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "size": args.size, "dim": args.dim,
              "dtype": "float16", "cache_mb": args.size * args.dim * 2 / 2**20, "steps": args.steps, "runs": {}}
    t0 = time.perf_counter()
    prepare(args, work)
    result["prepare_seconds"] = time.perf_counter() - t0
    for mode in ("two", "resume1", "one"):
        result["runs"][mode] = launch(mode, work, args)
        write_json_atomic(args.output, result)
    one = result["runs"]["one"][0]
    result["ratio_rank_to_one_process"] = {
        f"rank{r['rank']}": {p: (r["peak_above_before_cache_mb"][p] / one["peak_above_before_cache_mb"][p]
                                 if r["peak_above_before_cache_mb"][p] and one["peak_above_before_cache_mb"][p]
                                 else None) for p in PHASES} for r in result["runs"]["two"]}
    write_json_atomic(args.output, result)
    print(json.dumps(result["ratio_rank_to_one_process"], indent=1))
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
