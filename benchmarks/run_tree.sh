#!/usr/bin/env bash
# Tree sampler benchmarks (issue 19): N = 1e5 (both kinds, with the gradient part at N = 1e5), then N = 1e6 (clustered).
set -euo pipefail
PY=${PY:-python}
cd "$(dirname "$0")/.."
$PY benchmarks/tree.py --sizes 100000 --output benchmarks/results/tree_1e5.json
$PY benchmarks/tree.py --sizes 1000000 --kinds clustered --betas 20 100 --grad-size 0 --steps 2 \
    --output benchmarks/results/tree_1e6.json
