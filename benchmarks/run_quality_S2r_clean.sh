#!/usr/bin/env bash
# Clean re-run of setting S2r (second session, 2026-11-22): every row, including refresh_tenth, seeds 0-2, one
# code version, on an otherwise idle 2-core machine, into a fresh JSON. Finished (row, seed) pairs are skipped on
# a rerun, so an interrupted run resumes.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 1 2 \
    --rows stale corrector_cemse refresh_quarter refresh_tenth refresh_half corrector_ce corrector_mse \
           corrector_refresh inbatch nystrom tele st_mnrl st_mnrl_hn \
    --output benchmarks/results/quality_S2r_clean.json --work-dir benchmarks/results/quality_S2r_work \
    --markdown benchmarks/results/quality_S2r_clean.md
