#!/usr/bin/env bash
# The GPU check, in one go, on a machine with a CUDA device and onnxruntime-gpu:
#   1. what this Python has (onnxruntime-gpu and its CUDA provider, torch, transformers, onnx, pytest);
#   2. a CUDA smoke check as a plain script: onnxruntime.preload_dlls(), a tiny CLIP bundle (fp32 + fp16 encoders)
#      opened with --device cuda and --precision auto, fp16 picked, embeddings against the CPU's fp32;
#   3. the gpu-marked tests (pytest -m gpu), where pytest is installed (skipped with a message where it is not);
#   4. bench/bench_score.py --device cuda for fp32 and fp16: one table of posts/s, stage ceilings and the provider
#      each session got, against the transformers pipeline on the same GPU.
#
#   bench/gpu_check.sh                       # from the repository root, or: make gpu-check
#   PYTHON=/usr/bin/python3.12 bench/gpu_check.sh --posts 2048
#
# Works in the project's .venv (make ORT_EXTRA=gpu install) or in a plain Python 3.12 with torch, transformers, pyarrow,
# pillow and onnxruntime-gpu: PYTHONPATH=. (and the import names below) is all it adds. Building the bundles (export) also needs `onnx` and
# `onnxscript`, which the `export` extra installs; where they are missing, step 1 says so and the script stops.
# Extra arguments go to bench_score.py.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK="${CTMWA_GPU_CHECK_WORK:-/tmp/ctmwa_gpu_check}"
mkdir -p "$WORK/import_names"
# training/ and export/ import as ctmwa_training and ctmwa_export (pyproject.toml package-dir); without an install of
# the project, two symlinks in the work folder give them those names.
ln -sfn "$PWD/training" "$WORK/import_names/ctmwa_training"
ln -sfn "$PWD/export" "$WORK/import_names/ctmwa_export"
export PYTHONPATH=".:$WORK/import_names${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0

echo "== 1. environment ($PYTHON)"
"$PYTHON" - <<'EOF' || exit 1
import importlib, sys
print("python", sys.version.split()[0])
missing = []
for name in ("onnxruntime", "torch", "transformers", "pyarrow", "PIL", "tokenizers", "onnx", "onnxscript", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:<12} {getattr(module, '__version__', '?')}")
    except ImportError:
        print(f"  {name:<12} MISSING")
        missing.append(name)
import onnxruntime as ort
providers = ort.get_available_providers()
print("  onnxruntime providers", providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("no CUDAExecutionProvider: install onnxruntime-gpu (pip install 'ctmwa-batch[gpu]', or onnxruntime-gpu[cuda,cudnn]) in place of onnxruntime")
need = [m for m in ("onnx", "onnxscript") if m in missing]
if need:
    sys.exit(f"{need} missing: the check exports its test bundles from PyTorch, which needs them (the project's `export` extra)")
import torch
print("  torch CUDA", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

echo "== 2. CUDA smoke check (plain script)"
"$PYTHON" - "$WORK" <<'EOF' || status=1
import logging, sys
from pathlib import Path
import numpy as np
logging.basicConfig(level=logging.WARNING)
work = Path(sys.argv[1])
from ctmwa_batch.model import runtime
from ctmwa_batch.model.bundle import MANIFEST, load_bundle
from ctmwa_batch.scoring.embed import Encoders
from ctmwa_batch.model.runtime import RuntimeConfig
from ctmwa_export.assemble import export_encoders
from ctmwa_export.encoders import EncoderExportConfig
from fixtures.clip import build_tiny_clip
clip = work / "tiny-clip"
if not (clip / "config.json").exists():
    build_tiny_clip(clip, seed=0)
enc = work / "tiny-encoders"
if not (enc / MANIFEST).exists():
    export_encoders(EncoderExportConfig(source=str(clip), out_dir=enc, overwrite=True, precisions=("fp32", "fp16", "int8")))
bundle = load_bundle(enc)
gpu = Encoders(bundle, RuntimeConfig(device="cuda"), "auto")
cpu = Encoders(bundle, RuntimeConfig(device="cpu"), "fp32")
pixels = np.random.default_rng(0).integers(0, 256, (8, bundle.image_spec.size, bundle.image_spec.size, 3), dtype=np.uint8)
ok = np.ones(8, bool)
a, b = gpu.encode_pixels(pixels, ok), cpu.encode_pixels(pixels, ok)
cos = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
events = list(runtime.EVENTS)
print(f"  auto on cuda took {gpu.precision}; providers image {gpu.image_session.provider}, text {gpu.text_session.provider}")
print(f"  min cosine fp16 (CUDA) vs fp32 (CPU): {cos:.6f}")
print(f"  runtime events: {events[:4]}")
assert gpu.precision == "fp16" and gpu.image_session.on_gpu and gpu.text_session.on_gpu, "CUDA sessions expected"
assert events[0][0] == "preload_dlls", "preload_dlls must come before the first CUDA session"
assert cos > 0.999, cos
print("  OK")
EOF

echo "== 3. gpu-marked tests"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  # -p no:cacheprovider: the checkout may be read-only; -o addopts= and no timeout plugin needed
  "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests || status=1
else
  echo "  pytest is not installed in $PYTHON: skipping the gpu-marked tests (step 2 ran the CUDA checks as a plain script)"
fi

echo "== 4. bench_score.py --device cuda (fp32, fp16)"
"$PYTHON" bench/bench_score.py --device cuda --precision fp32 --precision fp16 --memory-rows --work "$WORK/bench" "$@" || status=1
exit $status
