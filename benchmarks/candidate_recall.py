"""Two-stage candidate selection: recall of the exact corrected top-k inside the index's pool, and time per step.

For a cache (synthetic: ``--num-rows`` random unit vectors around ``--num-clusters`` centres; or a saved
:class:`~hf_corrector.StaleCache` given with ``--cache``), a corrector (``mlp``: the residual MLP with small random
weights in its last layer, scaled so that the mean relative change ``||h(v) - v|| / ||v||`` is ``--perturbation``;
``linear``: ``h(v) = A v + b`` with ``A = I + E``, ``||E v|| / ||v|| ≈ --perturbation``) and each faiss index
(``flat``, ``ivf``, ``hnsw``), this measures, as a function of the pool size P:

* ``recall``: the share of the exact corrected top-k (a full corrected pass over the cache) that is inside the
  pool the index returns. The index is searched with ``q`` for the MLP and with ``A^T q`` for the linear corrector,
  exactly as :class:`~hf_corrector.methods.CandidateSelection` does; since the second stage re-scores the pool
  exactly, this is also the share of the exact top-k that two-stage top-k selection finds.
* time per step (``--batch-size`` queries): index search + re-scoring the pool with the corrector (the trainer's
  code path, :func:`~hf_corrector.training.sampling.select_negatives` with ``candidates``), against the full
  corrected pass (the same function without candidates). ``rescore_rows`` counts corrector applications
  (``B x P`` as implemented; ``unique_rows`` is how many distinct rows the pools hold, and
  ``rescore_distinct_s`` the time of a second stage that corrects each distinct row once).

Results go to ``benchmarks/results/candidate_recall.json`` (``--output``) and a Markdown table is printed.

Example:
    python benchmarks/candidate_recall.py --num-rows 200000 --pool-sizes 64 256 1024 4096
    python benchmarks/candidate_recall.py --cache scifact-cache --num-rows 0   # a saved cache only
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hf_corrector import CorrectorConfig, CorrectorModel, StaleCache  # noqa: E402
from hf_corrector.negatives.candidates import CandidateIndex, ivf_nlist, require_faiss  # noqa: E402
from hf_corrector.negatives.topk import select_negatives  # noqa: E402

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "candidate_recall.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-rows", type=int, default=1_000_000, help="rows of the synthetic cache (0 = skip it)")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension of the synthetic cache")
    p.add_argument("--num-clusters", type=int, default=1000, help="cluster centres of the synthetic cache")
    p.add_argument("--cluster-noise", type=float, default=1.0,
                   help="norm of the noise added to a centre (1.0: as large as the centre itself)")
    p.add_argument("--cache", type=str, default=None, help="also measure on a saved StaleCache folder (e.g. SciFact)")
    p.add_argument("--query-noise", type=float, default=0.5,
                   help="saved cache: queries are random cache rows plus noise of this relative norm")
    p.add_argument("--pool-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096], help="pool sizes P")
    p.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    p.add_argument("--correctors", nargs="+", default=["mlp", "linear"], choices=["mlp", "linear"])
    p.add_argument("--perturbation", type=float, default=0.3, help="relative size of the corrector's change")
    p.add_argument("--k", type=int, default=10, help="top-k whose recall is measured")
    p.add_argument("--batch-size", type=int, default=64, help="queries per step")
    p.add_argument("--num-batches", type=int, default=4, help="query batches (recall averages over all; time too)")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists searched")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    p.add_argument("--chunk-size", type=int, default=65536, help="rows per chunk of the full corrected pass")
    p.add_argument("--threads", type=int, default=None, help="torch / faiss threads (default: library defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


# -- data -------------------------------------------------------------------------------------------------------------
def synthetic(n: int, d: int, clusters: int, noise: float, num_queries: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors ``normalize(centre + noise)``; queries drawn the same way (independent of the rows)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g), dim=-1)
    x = torch.empty(n, d)
    for s in range(0, n, 100_000):
        e = min(s + 100_000, n)
        c = torch.randint(clusters, (e - s,), generator=g)
        x[s:e] = F.normalize(centres[c] + noise * torch.randn(e - s, d, generator=g) / math.sqrt(d), dim=-1)
    c = torch.randint(clusters, (num_queries,), generator=g)
    q = F.normalize(centres[c] + noise * torch.randn(num_queries, d, generator=g) / math.sqrt(d), dim=-1)
    return x, q


def from_cache(path: str, num_queries: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = StaleCache.load(path, verify="rows").matrix().float().contiguous()
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(x.shape[0], (num_queries,), generator=g)
    base = x[rows]
    q = base + noise * base.norm(dim=-1, keepdim=True) * F.normalize(torch.randn(base.shape, generator=g), dim=-1)
    return x, q


# -- correctors -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def make_corrector(kind: str, d: int, perturbation: float, sample: torch.Tensor,
                   seed: int) -> tuple[CorrectorModel, float]:
    """A corrector whose mean relative change on ``sample`` is ``perturbation``; returns it and cos(h(v), v)."""
    torch.manual_seed(seed)
    h = CorrectorModel(CorrectorConfig(embedding_dim=d, architecture=kind)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    layer = h.linear if kind == "linear" else h.mlp[-1]
    delta = torch.randn(layer.weight.shape, generator=g) / math.sqrt(layer.weight.shape[1])
    base = layer.weight.clone()
    layer.weight.copy_(base + delta)
    change = ((h(sample) - sample).norm(dim=-1) / sample.norm(dim=-1)).mean()
    layer.weight.copy_(base + delta * (perturbation / float(change)))
    layer.bias.copy_(0.01 * torch.randn(layer.bias.shape, generator=g))
    cos = float(F.cosine_similarity(h(sample), sample, dim=-1).mean())
    return h, cos


def rescore_distinct(q: torch.Tensor, x: torch.Tensor, pool: torch.Tensor, h: CorrectorModel, k: int) -> torch.Tensor:
    """Top-k inside the pools, correcting each distinct row once (what a de-duplicating second stage would cost)."""
    valid = pool >= 0
    rows, inverse = pool.clamp_min(0).unique(return_inverse=True)
    scores = q @ h(x[rows]).T  # (B, U)
    s = scores.gather(1, inverse).masked_fill(~valid, float("-inf"))
    return pool.gather(1, s.topk(min(k, pool.shape[1]), dim=1).indices)


def search_queries(h: CorrectorModel, q: torch.Tensor) -> torch.Tensor:
    m = h.query_transform()
    return q if m is None else q @ m.T


# -- measurement ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def measure(name: str, x: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    n, d = x.shape
    batches = [queries[i : i + args.batch_size] for i in range(0, len(queries), args.batch_size)]
    get = lambda s, e: x[s:e]  # noqa: E731
    sample = x[torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[:10_000]]
    out: dict[str, Any] = {"dataset": name, "num_rows": n, "dim": d, "correctors": {}, "indexes": {}, "rows": []}
    exact: dict[str, list[torch.Tensor]] = {}
    correctors: dict[str, CorrectorModel] = {}
    for kind in args.correctors:
        h, cos = make_corrector(kind, d, args.perturbation, sample, args.seed)
        correctors[kind] = h
        tops, times = [], []
        for b in batches:
            t0 = time.perf_counter()
            sel = select_negatives(b, get, args.k, num_rows=n, chunk_size=args.chunk_size, transform=h)
            times.append(time.perf_counter() - t0)
            tops.append(sel.indices)
        exact[kind] = tops
        out["correctors"][kind] = {"cos_h_v": round(cos, 4), "full_pass_s": round(sum(times) / len(times), 4)}
        logger.info("%s: %s corrector cos(h(v), v)=%.3f, full corrected pass %.3f s / %d queries", name, kind, cos,
                    out["correctors"][kind]["full_pass_s"], args.batch_size)
    for index_kind in args.indexes:
        index = CandidateIndex(index_kind, pool_size=max(args.pool_sizes), nprobe=args.nprobe, hnsw_m=args.hnsw_m)
        t0 = time.perf_counter()
        index.build(x)
        build_s = time.perf_counter() - t0
        info = {"build_s": round(build_s, 2)}
        if index_kind == "ivf":
            info.update(nlist=ivf_nlist(n), nprobe=min(args.nprobe, ivf_nlist(n)))
        if index_kind == "hnsw":
            info.update(M=args.hnsw_m)
        out["indexes"][index_kind] = info
        logger.info("%s: built %s index in %.1f s", name, index_kind, build_s)
        for p in args.pool_sizes:
            index.pool_size = p
            index._configure()  # hnsw: efSearch >= P
            for kind, h in correctors.items():
                hits, search_t, rescore_t, distinct_t, unique = 0, [], [], [], []
                for b, top in zip(batches, exact[kind]):
                    t0 = time.perf_counter()
                    pool = index.search(search_queries(h, b), p)
                    t1 = time.perf_counter()
                    select_negatives(b, lambda rows: x[rows], args.k, candidates=pool, transform=h)
                    t2 = time.perf_counter()
                    rescore_distinct(b, x, pool, h, args.k)
                    t3 = time.perf_counter()
                    search_t.append(t1 - t0)
                    rescore_t.append(t2 - t1)
                    distinct_t.append(t3 - t2)
                    unique.append(int(pool[pool >= 0].unique().numel()))
                    hits += sum(len(set(a.tolist()) & set(c.tolist())) for a, c in zip(top, pool))
                total = sum(t.numel() for t in exact[kind])
                search_s = sum(search_t) / len(search_t)
                rescore_s = sum(rescore_t) / len(rescore_t)
                full_s = out["correctors"][kind]["full_pass_s"]
                row = {"index": index_kind, "corrector": kind, "P": min(p, n), "recall": round(hits / total, 4),
                       "search_s": round(search_s, 4), "rescore_s": round(rescore_s, 4),
                       "two_stage_s": round(search_s + rescore_s, 4), "full_pass_s": full_s,
                       "speedup": round(full_s / max(search_s + rescore_s, 1e-9), 2),
                       "rescore_distinct_s": round(sum(distinct_t) / len(distinct_t), 4),
                       "rescore_rows": args.batch_size * min(p, n), "unique_rows": round(sum(unique) / len(unique))}
                out["rows"].append(row)
                logger.info("%s", row)
        del index
    return out


def markdown(result: dict[str, Any], k: int, batch: int) -> str:
    lines = [f"### {result['dataset']}: {result['num_rows']:,} x {result['dim']}",
             "",
             "correctors: " + ", ".join(f"{kk} (cos(h(v), v) = {v['cos_h_v']}, full corrected pass "
                                        f"{v['full_pass_s']:.3f} s / {batch} queries)" for kk, v in
                                        result["correctors"].items()),
             "indexes: " + ", ".join(f"{kk} ({', '.join(f'{a}={b}' for a, b in v.items())})"
                                     for kk, v in result["indexes"].items()),
             "",
             f"| index | corrector | P | recall of exact top-{k} in pool | search s | re-score s | two-stage s/step "
             f"| full pass s/step | speed-up | distinct rows | re-score s (distinct rows) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['index']} | {r['corrector']} | {r['P']} | {r['recall']:.3f} | {r['search_s']:.3f} | "
                     f"{r['rescore_s']:.3f} | {r['two_stage_s']:.3f} | {r['full_pass_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['unique_rows']} / {r['rescore_rows']} | {r['rescore_distinct_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    faiss = require_faiss()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    num_queries = args.batch_size * args.num_batches
    results = []
    if args.num_rows > 0:
        x, q = synthetic(args.num_rows, args.dim, args.num_clusters, args.cluster_noise, num_queries, args.seed)
        results.append(measure("synthetic", x, q, args))
        del x
    if args.cache:
        x, q = from_cache(args.cache, num_queries, args.query_noise, args.seed)
        results.append(measure(f"cache:{Path(args.cache).name}", x, q, args))
    report = {"benchmark": "candidate_recall", "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                             for k, v in vars(args).items()},
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "faiss": faiss.__version__, "torch_threads": torch.get_num_threads(),
                              "machine": platform.machine()},
              "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    for r in results:
        print(markdown(r, args.k, args.batch_size))
        print()
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
