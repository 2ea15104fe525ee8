#!/usr/bin/env bash
# Setting S2L ("S2 longer"): the S2r setting trained 3x longer (T = 60 steps), so the encoder drifts further and the
# refresh rows pay for more refreshes. Key rows only, seeds 0-2. Seed 0 ran with --threads 1 beside another benchmark; the run was then restarted
# without it (torch default, 2 threads) and resumed at seed 1 (finished (row, seed) pairs are skipped).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S2L --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 60 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 1 2 \
    --rows stale corrector_cemse refresh_half refresh_quarter refresh_tenth \
    --markdown benchmarks/results/quality_S2L.md
