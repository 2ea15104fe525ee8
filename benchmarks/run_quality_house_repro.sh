#!/usr/bin/env bash
# Issue 22 acceptance: seed 0 of the S2r rows stale, corrector_cemse, refresh_half, nystrom, tele (settings of
# run_quality_S2r_seed0_redesign.sh) and the S2L corrector_view10 row (settings of run_quality_view.sh, one thread as
# stored) after the strategy / context / cache split. Compare with benchmarks/compare_quality.py against
# quality_S2r_seed0_redesign.json and quality_S2L_view.json. DATA: the BEIR SciFact folder.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DATA=${DATA:-../shared/data/scifact}
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-house}   # suffix of the result files (house = the stage-1 run of BENCHMARKS 1d)
WORK=${WORK:-$OUT/quality_${TAG}_work}
$PY benchmarks/quality.py --data "$DATA" --setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 \
    --batch-size 16 --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 \
    --rows stale corrector_cemse refresh_half nystrom tele \
    --output "$OUT/quality_S2r_seed0_${TAG}.json" --work-dir "$WORK" --markdown "$OUT/quality_S2r_seed0_${TAG}.md"
$PY benchmarks/quality.py --data "$DATA" --setting S2L_view --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 60 \
    --batch-size 16 --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 --threads 1 \
    --rows corrector_view10 \
    --output "$OUT/quality_S2L_view10_seed0_${TAG}.json" --work-dir "$WORK" --markdown "$OUT/quality_S2L_view10_seed0_${TAG}.md"
