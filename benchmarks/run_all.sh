#!/usr/bin/env bash
# Run both side-by-side benchmarks in their own environment (.venv-bench).
#
# The peers (activeft 0.1.1, apricot-select 0.6.1 + scikit-learn, which apricot imports
# without declaring it) live only here, never in the product or CI environment.
# torch is installed first and pinned through constraints.txt: an unpinned torch would
# pull several GB of CUDA wheels. The scripts import sift_ops from the repository root,
# so the product itself (ray, prefect, ...) is not installed into this environment.
#
#   bash benchmarks/run_all.sh                      # full size (about 10-15 min on 2 cores)
#   SIFT_ARGS="--B 200" DIVERSITY_ARGS="--n 5000 --budget 500" bash benchmarks/run_all.sh
#
# JSON lines go to stdout and to $BENCH_OUT/{sift,diversity}.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv-bench}
OUT=${BENCH_OUT:-benchmarks/results}

if ! "$VENV/bin/python" -c 'import torch, faiss, activeft, apricot, sklearn' 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -c constraints.txt \
    numpy numba faiss-cpu activeft==0.1.1 apricot-select==0.6.1 scikit-learn
fi

mkdir -p "$OUT"
# shellcheck disable=SC2086  # word splitting of the *_ARGS is intended
"$VENV/bin/python" benchmarks/bench_sift.py ${SIFT_ARGS:-} | tee "$OUT/sift.jsonl"
# shellcheck disable=SC2086
"$VENV/bin/python" benchmarks/bench_diversity.py ${DIVERSITY_ARGS:-} | tee "$OUT/diversity.jsonl"
