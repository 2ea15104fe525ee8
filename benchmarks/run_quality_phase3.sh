#!/usr/bin/env bash
# Phase 3 (run once the shared CPU became quiet): every row for seeds 0-2 in S2r (finished pairs are skipped),
# then a reduced S1 (full 6-layer model, lr 2e-5, 1 seed, key rows).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
COMMON="--setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 --num-negatives 5
        --query-max-length 32 --doc-max-length 48 --markdown benchmarks/results/quality_S2r.md"
$PY benchmarks/quality.py $COMMON --seeds 0 1 2
$PY benchmarks/quality.py --setting S1r --num-layers 6 --lr 2e-5 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 \
    --rows stale corrector_cemse refresh_half inbatch refresh_quarter st_mnrl_hn --markdown benchmarks/results/quality_S1r.md
