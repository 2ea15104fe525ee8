#!/usr/bin/env bash
# Phase 2 of the S2r quality benchmark (after seed 0 of the six key rows): seed 1 of the three headline rows first,
# then the remaining rows of seed 0, then more seeds. Appends to the same JSON (finished (row, seed) pairs are skipped).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
COMMON="--setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 --num-negatives 5
        --query-max-length 32 --doc-max-length 48 --markdown benchmarks/results/quality_S2r.md"
$PY benchmarks/quality.py $COMMON --seeds 1 --rows stale corrector_cemse refresh_half
$PY benchmarks/quality.py $COMMON --seeds 0 --rows corrector_ce corrector_mse st_mnrl corrector_refresh nystrom tele
$PY benchmarks/quality.py $COMMON --seeds 1 --rows refresh_quarter inbatch st_mnrl_hn
$PY benchmarks/quality.py $COMMON --seeds 2 --rows stale corrector_cemse refresh_half refresh_quarter inbatch
