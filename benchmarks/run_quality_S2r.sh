#!/usr/bin/env bash
# The quality benchmark as run for BENCHMARKS.md (setting S2r: S2 reduced to fit a contended 2-core CPU).
# Seed 0 runs every row (in priority order); seeds 1 and 2 then repeat the key rows. Results append to one JSON.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
COMMON="--setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 --num-negatives 5
        --query-max-length 32 --doc-max-length 48"
$PY benchmarks/quality.py $COMMON --seeds 0 --rows stale corrector_cemse refresh_half inbatch st_mnrl_hn \
    refresh_quarter corrector_ce corrector_mse st_mnrl corrector_refresh nystrom tele
$PY benchmarks/quality.py $COMMON --seeds 1 2 --rows stale corrector_cemse refresh_half refresh_quarter inbatch \
    --markdown benchmarks/results/quality_S2r.md
