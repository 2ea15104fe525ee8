#!/usr/bin/env bash
# Issue 14: serving from the deployable corrected index vs a fresh re-encoding of the whole corpus.
# Train once per seed (S2L: quality.py's corrector_cemse row; stdlib: recipes/configs/stdlib_default.yaml), then
# evaluate every serving method and budget on each trained model. One thread, sequential; results appended to JSON.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-python3}
for SETTING in S2L stdlib; do
    $PY benchmarks/serving.py --setting $SETTING --phase train --seeds 0 1 2 --threads 1
    $PY benchmarks/serving.py --setting $SETTING --phase eval --seeds 0 1 2 --threads 1 --ceilings 0 \
        --markdown benchmarks/results/serving_${SETTING}.md
done
$PY benchmarks/serving.py --summary benchmarks/results/serving_S2L.json benchmarks/results/serving_stdlib.json \
    | tee benchmarks/results/serving_summary.md
