#!/usr/bin/env bash
# The GPU benchmark in one go (`pixelkit bench --only gpu`), for a session with a lent GPU:
#
#     bash scripts/gpu_bench.sh            # from the repository root; OUT=... to choose the folder
#
# Needs no network and only torch, lightning, transformers, peft and timm: the models are
# random-init (no weights, no tokenizer downloaded). The bench keeps to BUDGET_S seconds
# (default 420; the paper preset's batch-size search stops when they run out) and the
# whole script to under 10 minutes. Writes into $OUT (default ./gpu_bench_out):
# gpu_bench.json (figures, device and settings under meta.benches.gpu), gpu_bench.log,
# nvidia-smi.txt and versions.txt. Copy the figures into the README's "GPU benchmark"
# section, naming the device.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_bench_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# Freed blocks of any size can be reused after an out-of-memory try in the batch search.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - <<'PYEOF' | tee "$OUT/versions.txt"
import importlib
import platform

import torch

print("python", platform.python_version())
for name in ("torch", "lightning", "transformers", "peft", "timm"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as err:
        print(name, "MISSING", err)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script measures a GPU (`pixelkit bench --only gpu "
                     "--smoke` runs the same code on the CPU)")
PYEOF

timeout 560 "$PY" -m pixelkit bench --only gpu --budget-s "${BUDGET_S:-420}" \
    --out "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
