#!/usr/bin/env bash
# Setting S1r (full 6-layer MiniLM, lr 2e-5: a strong start that barely drifts), one seed, key rows.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S1r --num-layers 6 --lr 2e-5 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 \
    --rows stale corrector_cemse refresh_half inbatch refresh_quarter st_mnrl_hn --markdown benchmarks/results/quality_S1r.md
