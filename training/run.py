"""`ctmwa_training.train(features, out, config) -> metrics`: one training run as a library call.

The CLI (`ctmwa-train`), the release (ctmwa_export.release) and bench/bench_training.py all train through here. OUT
receives model.safetensors and config.json (the checkpoint, see ctmwa_training.model) and metrics.json, written last.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ctmwa_training.data import read_features
from ctmwa_training.errors import ConfigError
from ctmwa_training.fit import fit
from ctmwa_training.meta import TrainConfig
from ctmwa_training.model import CTMWAConfig, save_checkpoint

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def train(
    features: str | Path,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    model: Mapping[str, Any] | None = None,
    labels: list[str] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train CTMWA on a features Parquet; write the checkpoint and metrics.json into `out`; return the metrics.

    `model`: CTMWAConfig fields (text_dim, image_dim and num_classes default to the features file's); `labels`:
    class names overriding the file's `ctmwa.labels`; `threads`: torch CPU threads for this run (None: torch's).
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} must be at least 1")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(Path(features), Path(out), config, dict(model or {}), labels)
    finally:
        torch.set_num_threads(before)


def _train(
    features: Path, out: Path, config: TrainConfig, model_values: dict[str, Any], labels: list[str] | None
) -> dict[str, Any]:
    data = read_features(
        features,
        labels=labels,
        unimodal_labels=config.unimodal_labels,
        text_dim=model_values.get("text_dim"),
        image_dim=model_values.get("image_dim"),
        with_query=config.mode == "meta",
    )
    given_classes = model_values.setdefault("num_classes", len(data.labels))
    if given_classes != len(data.labels):
        raise ConfigError(
            f"model num_classes = {given_classes} but the features have {len(data.labels)} classes {data.labels}; "
            "drop num_classes from --config or pass matching --labels"
        )
    model_values.setdefault("text_dim", data.text_dim)
    model_values.setdefault("image_dim", data.image_dim)
    model_config = CTMWAConfig.from_dict(model_values, where="model config")
    logger.info("training CTMWA (%s) on %s: %s", config.mode, features, model_config)

    result = fit(data, model_config, config)
    extra = {
        "training": dataclasses.asdict(config),
        "labels": data.labels,
        "unimodal_labels": data.unimodal_labels,
        "features": str(features),
        "best_epoch": result.metrics["best_epoch"],
        "class_bias": result.class_bias,  # added to the logits before softmax and argmax (ctmwa_training.class_bias)
        "probe_blend": result.metrics["probe_blend"],  # the linear probe's weight in the answer (ctmwa_training.probe)
        "evidence": result.metrics["evidence"],  # how the evidence classifiers were fitted (ctmwa_training.evidence)
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    save_checkpoint(result.model, model_config, out, extra)
    metrics = json_safe(result.metrics)
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", metrics_path)
    return metrics


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities (an empty evaluation) as None, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
