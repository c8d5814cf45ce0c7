"""ctmwa_batch is the runtime a scoring worker installs alone: it must never import torch, transformers or airflow, nor
matplotlib (the report command imports it when it draws, from the `report` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys
import ctmwa_batch
for info in pkgutil.walk_packages(ctmwa_batch.__path__, "ctmwa_batch."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "airflow", "matplotlib"})
print(",".join(bad))
"""


def test_runtime_package_imports_no_training_stack():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"ctmwa_batch imported {result.stdout.strip()}"
