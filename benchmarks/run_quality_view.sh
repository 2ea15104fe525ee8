#!/usr/bin/env bash
# Amortised correction (issue 15): quality against corrected_view_steps M on S2r (20 steps) and S2L (60 steps),
# corrector (CE+MSE) row only, 3 seeds. One thread each, sequential.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S2r_view --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 1 2 --threads 1 \
    --rows corrector_view1 corrector_view5 corrector_view10 \
    --output benchmarks/results/quality_S2r_view.json --work-dir benchmarks/results/quality_view_work \
    --markdown benchmarks/results/quality_S2r_view.md
$PY benchmarks/quality.py --setting S2L_view --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 60 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 1 2 --threads 1 \
    --rows corrector_view1 corrector_view10 corrector_view30 \
    --output benchmarks/results/quality_S2L_view.json --work-dir benchmarks/results/quality_view_work \
    --markdown benchmarks/results/quality_S2L_view.md
