"""Export a ctmwa-train checkpoint's head to ONNX and join it to an encoders bundle: a full, scoring-ready bundle.

The head is validated against PyTorch at several batch sizes under every missing-modality case; a failed validation
writes nothing. See the README, "From posts to scores" and "Releasing a model".
"""

from __future__ import annotations

import argparse
import logging

from ctmwa_batch.io.storage import local_path
from ctmwa_batch.model.bundle import load_bundle
from ctmwa_export import assemble
from ctmwa_export.head import HeadExportConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-export head` arguments."""
    d = HeadExportConfig()
    parser.add_argument("--checkpoint", required=True, type=local_path, help="checkpoint folder written by ctmwa-train")
    parser.add_argument(
        "--encoders", required=True, type=local_path, help="encoders-only bundle written by ctmwa-export encoders"
    )
    parser.add_argument("--out", required=True, type=local_path, help="full bundle folder to write")
    parser.add_argument(
        "--fp16", action="store_true", help="compute in float16 inside the graph (inputs/outputs stay float32)"
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="fit temperature scaling on the valid split of --features"
    )
    parser.add_argument("--features", type=local_path, help="features Parquet for --calibrate")
    parser.add_argument("--labels", help="comma-separated class names (default: the checkpoint's)")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also write end_to_end.onnx: encoders + head in one graph"
    )
    parser.add_argument(
        "--no-fold", action="store_true", help="keep the translators' attention in the graph (for comparisons)"
    )
    parser.add_argument("--opset", type=int, default=d.opset, help=f"ONNX opset (default {d.opset})")
    parser.add_argument("--atol", type=float, default=d.atol, help=f"fp32 validation tolerance (default {d.atol:g})")
    parser.add_argument("--torchscript", action="store_true", help="use the TorchScript exporter instead of dynamo")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def run(args: argparse.Namespace) -> int:
    """Build the config from the arguments and export."""
    config = HeadExportConfig(
        fp16=args.fp16,
        calibrate=args.calibrate,
        features=args.features,
        labels=tuple(s.strip() for s in args.labels.split(",")) if args.labels else None,
        fold_translators=not args.no_fold,
        opset=args.opset,
        atol=args.atol,
        dynamo=not args.torchscript,
        end_to_end=args.end_to_end,
        overwrite=args.overwrite,
    )
    out = assemble.export_head(args.checkpoint, args.encoders, args.out, config)
    logger.info("done: %s (model_version %s)", out, load_bundle(out).model_version)
    return 0
