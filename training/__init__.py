"""CTMWA training: raw datasets to features (`ctmwa_training.prepare`), features to a checkpoint (`ctmwa_training.train`).

`ctmwa_training.train(features, out, config) -> metrics` is the library call behind `ctmwa-train`, the release DAG and the
training benchmark (training/run.py). It loads torch on first use, so `ctmwa-train prepare` stays light.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "train":
        from ctmwa_training.run import train

        return train
    raise AttributeError(f"module 'ctmwa_training' has no attribute {name!r}")
