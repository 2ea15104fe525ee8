#!/usr/bin/env bash
# Issue 11 check: seed 0 of the rows inbatch, stale, refresh_half, corrector_cemse, nystrom and tele with the exact
# settings of run_quality_S2r_clean.sh, after the samplers / cache-manager redesign. Compare with
#   $PY benchmarks/compare_runs.py benchmarks/results/quality_S2r_clean.json benchmarks/results/quality_S2r_seed0_redesign.json
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 \
    --rows inbatch stale refresh_half corrector_cemse nystrom tele \
    --output benchmarks/results/quality_S2r_seed0_redesign.json --work-dir benchmarks/results/quality_S2r_work \
    --markdown benchmarks/results/quality_S2r_seed0_redesign.md
