#!/usr/bin/env bash
# The tree rows (issue 19) in setting S2r beside a same-run stale row, seeds 0-2 (S2r arguments of
# run_quality_S2r_clean.sh). Finished (row, seed) pairs are skipped on a rerun.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY benchmarks/quality.py --setting S2r --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 20 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds 0 1 2 \
    --rows tree tree_nystrom stale \
    --output benchmarks/results/quality_S2r_tree.json --work-dir benchmarks/results/quality_S2r_tree_work \
    --markdown benchmarks/results/quality_S2r_tree.md
# The tree row in setting S2L (the S2L arguments of run_quality_S2L.sh; compare with its stored stale / corrector
# rows, deterministic per seed). Seeds as time allows: TREE_S2L_SEEDS="0 1 2" for all three.
$PY benchmarks/quality.py --setting S2L --num-layers 2 --lr 1e-4 --lr-schedule constant --steps 60 --batch-size 16 \
    --num-negatives 5 --query-max-length 32 --doc-max-length 48 --seeds ${TREE_S2L_SEEDS:-0 1 2} \
    --rows tree \
    --output benchmarks/results/quality_S2L_tree.json --work-dir benchmarks/results/quality_S2L_tree_work \
    --markdown benchmarks/results/quality_S2L_tree.md
