#!/usr/bin/env python
"""Tree sampler benchmarks (issue 19), ratios against the exhaustive scan measured inside one run.

For each N in ``--sizes`` (synthetic unit vectors in d = ``--dim``: ``clustered`` = a mixture of ``--centers``
spherical clusters, the structure real embeddings have; ``isotropic`` = uniform on the sphere, the worst case)
and each inverse temperature in ``--betas``, with B = ``--queries`` queries near cache rows and k = ``--k``
negatives without replacement:

* build time of the tree (faiss k-means, two-level above 200k rows) against one exhaustive Gumbel-top-k pass;
* per step: tree sampling time against the exhaustive pass, proposals and exactly scored rows per drawn negative,
  acceptance rate, the certified unexamined-mass bound;
* maintenance: in-place update of a write-back batch (B x (k + 1) rows), a full radius refresh after every vector
  drifted, one local re-clustering; and the step cost after the drift (the tree is not rebuilt);
* gradient error (``--grad-size``): relative error of the query gradient of the full softmax loss against (a) the
  mean of k i.i.d. tree draws (unbiased), (b) the softmax over positive + k tree negatives (what the trainer's loss
  does with them) and (c) the softmax over positive + the exact top-k ("oracle brute-force mining");
* accelerator memory arithmetic for 21M x 768 (exhaustive scan with the cache on the device vs tree and cache in
  host memory).

Run:  nohup $PY benchmarks/tree.py > benchmarks/results/tree.log 2>&1 &
      $PY benchmarks/tree.py --sizes 5000 --grad-size 5000 --grad-k 5 --steps 1 --output tree_tiny.json  # seconds
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import write_json_atomic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--centers", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.5, help="within-cluster noise (relative to unit centres)")
    p.add_argument("--kinds", nargs="+", default=["clustered", "isotropic"])
    p.add_argument("--isotropic-max", type=int, default=100_000, help="largest N for the isotropic case")
    p.add_argument("--betas", type=float, nargs="+", default=[5.0, 20.0, 100.0])
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--grad-size", type=int, default=100_000, help="N of the gradient part (0: skip it)")
    p.add_argument("--grad-queries", type=int, default=32)
    p.add_argument("--grad-k", type=int, nargs="+", default=[5, 20, 100])
    p.add_argument("--output", default=str(HERE / "results" / "tree.json"))
    return p.parse_args(argv)


def make_vectors(n, d, kind, centers, spread, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, d)
    mu = torch.nn.functional.normalize(torch.randn(centers, d, generator=g), dim=1)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        if kind == "clustered":
            x = mu[torch.randint(0, centers, (m,), generator=g)] + spread / math.sqrt(d) * torch.randn(m, d, generator=g)
        else:
            x = torch.randn(m, d, generator=g)
        out[s : s + m] = torch.nn.functional.normalize(x, dim=1)
    return out


def make_queries(vectors, b, seed=1):
    import torch

    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, vectors.shape[0], (b,), generator=g)
    q = torch.nn.functional.normalize(vectors[pos] + 0.5 / math.sqrt(vectors.shape[1]) * torch.randn(
        b, vectors.shape[1], generator=g), dim=1)
    return q, pos


def setup(vectors, beta, seed=0, write_back=True, tree=None):
    """A cache manager over ``vectors`` with a tree sampler (``tree``: a built ClusterTree to start from, copied)
    and an exhaustive Gumbel sampler at the same temperature."""
    from hf_corrector.cache.manager import CacheManager
    from hf_corrector.cache.stale_cache import StaleCache
    from hf_corrector.negatives import ClusterTree, ExhaustiveSampler, SamplerContext, TreeSampler

    n = vectors.shape[0]
    manager = CacheManager(StaleCache([f"d{i}" for i in range(n)], vectors), [""] * n, encode_targets=None,
                           write_back=write_back)
    sampler = TreeSampler("gumbel", 1.0 / beta)
    sampler.setup(SamplerContext(manager.reader(), encode_queries=None, seed=seed))
    if tree is not None:
        sampler.tree = ClusterTree.from_tensors(tree.tensors())
        sampler._reset_counters()
        sampler._sync(manager.read_chunk(0, n), "cache", 0)  # the same vectors: radii recomputed, same values
    ex = ExhaustiveSampler("gumbel", 1.0 / beta)
    ex.setup(SamplerContext(manager.reader(), encode_queries=None, seed=seed))
    return manager, sampler, ex


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def step_stats(tree, ex, q, pos, k, steps, step0):
    import statistics

    exclude = [[int(p)] for p in pos]
    keys = [str(i) for i in range(q.shape[0])]
    t_tree, t_ex, props, rows, bounds = [], [], [], [], []
    for s in range(steps):
        before = dict(tree.stats)
        dt, _ = timed(lambda: tree.sample(q, exclude, keys, k, step0 + s))
        t_tree.append(dt)
        draws = tree.stats["draws"] - before["draws"]
        props.append((tree.stats["proposals"] - before["proposals"]) / draws)
        rows.append((tree.stats["exact_rows"] - before["exact_rows"]) / draws)
        bounds.append(max(tree.last_stats["unexamined_bound"]))
        acc = (tree.stats["accepted"] - before["accepted"]) / max(tree.stats["proposals"] - before["proposals"], 1)
        dt, _ = timed(lambda: ex.sample(q, exclude, keys, k, step0 + s))
        t_ex.append(dt)
    t_tree_m, t_ex_m = statistics.median(t_tree), statistics.median(t_ex)
    return {"tree_step_s": t_tree_m, "exhaustive_step_s": t_ex_m, "speedup_vs_exhaustive": t_ex_m / t_tree_m,
            "proposals_per_sample": statistics.mean(props), "exact_rows_per_sample": statistics.mean(rows),
            "exact_rows_fraction_of_N_per_query": statistics.mean(rows) * k / len(tree.ctx.cache),
            "acceptance_rate_last_step": acc, "unexamined_bound_max": max(bounds)}


def part_scale(args, res):
    import torch

    for kind in args.kinds:
        for n in args.sizes:
            if kind == "isotropic" and n > args.isotropic_max:
                continue
            vectors = make_vectors(n, args.dim, kind, args.centers, args.spread)
            q, pos = make_queries(vectors, args.queries)
            built = None
            for beta in args.betas:
                key = f"{kind}_N{n}_beta{beta:g}"
                print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
                manager, tree, ex = setup(vectors.clone(), beta, tree=built)
                if built is None:  # one build per (kind, N), timed once; the other temperatures start from a copy
                    t_build, _ = timed(lambda: tree._sync(manager.read_chunk(0, n), "cache", 0))
                    built = tree.tree
                r = {"N": n, "dim": args.dim, "kind": kind, "beta": beta, "clusters": tree.tree.num_clusters,
                     "build_s": t_build, "max_radius": float(tree.tree.radius.max()),
                     "mean_radius": float(tree.tree.radius.mean())}
                r["before_drift"] = step_stats(tree, ex, q, pos, args.k, args.steps, 1)
                t_scan = r["before_drift"]["exhaustive_step_s"]  # median exhaustive step of the same run
                r["exhaustive_pass_s"] = t_scan
                # write-back of one step's targets: in place
                rows = torch.randperm(n, generator=torch.Generator().manual_seed(3))[: args.queries * (args.k + 1)]
                fresh = torch.nn.functional.normalize(manager.cache.rows(rows) + 0.1 / math.sqrt(args.dim) *
                                                      torch.randn(rows.numel(), args.dim), dim=1)
                manager.cache.update(rows, fresh, 1)
                r["writeback_update_s"], _ = timed(lambda: tree.on_targets(rows))
                # every vector drifts (a refresh): radii recomputed in place, no rebuild
                m = manager.cache.matrix()
                g = torch.Generator().manual_seed(4)
                for s in range(0, n, 65536):
                    blk = m[s : s + 65536]
                    blk.copy_(torch.nn.functional.normalize(blk + 0.2 / math.sqrt(args.dim) *
                                                            torch.randn(blk.shape, generator=g), dim=1))
                r["refresh_radii_s"], _ = timed(lambda: tree.on_cache_refreshed(2))
                r["degraded_clusters_after_drift"] = len(tree.degraded_clusters())
                c = int(torch.argmax(tree.tree.counts))
                r["local_rebuild_s"], _ = timed(lambda: tree.tree.rebuild_local(m, c, 4, seed=1))
                r["after_drift"] = step_stats(tree, ex, q, pos, args.k, args.steps, 10)
                for name in ("build_s", "writeback_update_s", "refresh_radii_s", "local_rebuild_s"):
                    r[f"{name[:-2]}_over_exhaustive_pass"] = r[name] / t_scan
                res["scale"][key] = r
                write_json_atomic(args.output, res)
                print({k_: v for k_, v in r.items() if not isinstance(v, dict)}, r["before_drift"], flush=True)
            del vectors


def part_gradient(args, res):
    """Relative error of the query gradient of the full softmax loss, per estimator (see the module docstring)."""
    import torch

    n = args.grad_size
    vectors = make_vectors(n, args.dim, "clustered", args.centers, args.spread, seed=7)
    q, pos = make_queries(vectors, args.grad_queries, seed=8)
    for beta in args.betas:
        manager, tree, _ = setup(vectors, beta)
        s = q @ vectors.T
        p = torch.softmax(beta * s.double(), dim=1).float()
        full = beta * (p @ vectors - vectors[pos])  # d/dq of -beta s_pos + logsumexp(beta s)
        out = {}
        for k in args.grad_k:
            iid, _ = tree.draw_iid(q, k, step=k, keys=[str(i) for i in range(len(q))])
            mean_est = beta * (vectors[iid].mean(1) - vectors[pos])
            sel = tree.sample(q, [[int(x)] for x in pos], [str(i) for i in range(len(q))], k, step=k)

            def softmax_grad(idx):
                cand = torch.cat([pos[:, None], idx], 1)
                w = torch.softmax(beta * torch.gather(s, 1, cand), dim=1)
                return beta * ((w[:, :, None] * vectors[cand]).sum(1) - vectors[pos])

            masked = s.clone()
            masked[torch.arange(len(q)), pos] = float("-inf")
            top = masked.topk(k, dim=1).indices

            def rel(g):
                return float(((g - full).norm(dim=1) / full.norm(dim=1)).mean())

            out[str(k)] = {"tree_iid_mean (unbiased)": rel(mean_est),
                           "tree_negatives_in_softmax (trainer loss)": rel(softmax_grad(sel.indices)),
                           "oracle_topk_in_softmax": rel(softmax_grad(top)),
                           "mass_of_oracle_topk": float((torch.gather(p, 1, top).sum(1)).mean())}
        res["gradient"][f"beta{beta:g}"] = out
        write_json_atomic(args.output, res)
        print("gradient", beta, out, flush=True)


def part_memory(res, n=21_000_000, d=768, b=16):
    """Accelerator bytes for 21M x 768: an exhaustive scan with the cache on the device against the tree with the
    cache in host memory (device: centroids and radii for the bounds, plus the rows one query batch scores
    exactly, at the fraction of N measured in ``scale``). Arithmetic, not measured on a GPU."""
    c = int(round(4 * math.sqrt(n)))
    fractions = {f"{key}_{when}": r[when]["exact_rows_fraction_of_N_per_query"] for key, r in res["scale"].items()
                 for when in ("before_drift", "after_drift")}
    out = {"N": n, "dim": d, "clusters": c, "query_batch": b, "measured_fractions": fractions}
    for dtype, nbytes in (("float32", 4), ("float16", 2)):
        cache = n * d * nbytes
        centroids = c * d * 4 + c * 4
        entry = {"exhaustive_cache_on_device_bytes": cache, "tree_centroids_on_device_bytes": centroids,
                 "host_bytes_tree_and_cache": cache + centroids + 2 * n * 8 + 2 * c * 8}
        for key, frac in fractions.items():
            rows = min(1.0, b * frac) * n  # the union of the rows the batch scores (at most all N)
            entry[f"tree_device_bytes[{key}]"] = centroids + rows * d * nbytes
            entry[f"ratio[{key}]"] = cache / (centroids + rows * d * nbytes)
        out[dtype] = entry
    res["memory_21M"] = out


def main(argv=None):
    import torch

    args = parse_args(argv)
    res = {"host": platform.node(), "threads": torch.get_num_threads(), "args": vars(args), "scale": {},
           "gradient": {}}
    res["command"] = "benchmarks/tree.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    if args.grad_size:
        part_gradient(args, res)
    part_scale(args, res)
    part_memory(res)
    res["seconds"] = time.perf_counter() - t0
    write_json_atomic(args.output, res)
    print("memory", res["memory_21M"], flush=True)
    print(f"done in {res['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
