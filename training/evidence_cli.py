"""`ctmwa-train evidence`: fit the modality-evidence classifiers of a trained checkpoint, without retraining.

For a checkpoint trained before the evidence read the raw embeddings (or before it existed), or to refit it on
other rows. Reads the features file's train split (query rows included), fits txt_e_c / img_e_c on the frozen
model (ctmwa_training.evidence; the backbone and the weight nets are not touched), and writes the checkpoint back (or
to --out). Its metrics.json, where there is one, gets the new evidence report and test AUCs.
"""

from __future__ import annotations

import argparse
import json
import logging

from ctmwa_batch.io.storage import local_path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ctmwa-train evidence`."""
    parser.add_argument("--checkpoint", required=True, type=local_path, help="checkpoint folder (`ctmwa-train --out`)")
    parser.add_argument("--features", required=True, type=local_path, help="features Parquet the model was trained on")
    parser.add_argument("--out", type=local_path, help="write the refitted checkpoint here (default: in place)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    """Refit and save; returns the exit status."""
    import torch

    from ctmwa_training.data import read_features
    from ctmwa_training.evidence import evidence_metrics, fit_evidence
    from ctmwa_training.model import load_checkpoint, save_checkpoint
    from ctmwa_training.run import METRICS_FILE, json_safe

    model, config, extra = load_checkpoint(args.checkpoint, evidence=False)
    data = read_features(
        args.features,
        labels=extra.get("labels"),
        unimodal_labels=extra.get("unimodal_labels"),
        text_dim=config.text_dim,
        image_dim=config.image_dim,
        with_query=False,  # the query rows stay in the train split: the evidence fits on both
    )
    report = fit_evidence(model, data)
    out = args.out or args.checkpoint
    save_checkpoint(model, config, out, {**extra, "evidence": report})
    metrics_path = args.checkpoint / METRICS_FILE
    if metrics_path.is_file():
        bias = (extra.get("class_bias") or {}).get("bias")
        metrics = json.loads(metrics_path.read_text())
        metrics.update(
            evidence_metrics(model, data.test, None if bias is None else torch.tensor(bias, dtype=torch.float32))
        )
        metrics["evidence"] = report
        (out / METRICS_FILE).write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    print(f"fitted modality evidence of {args.checkpoint} ({report['method']}) -> {out}")
    return 0
