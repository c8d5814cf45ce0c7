"""Export a CLIP model's image and text encoders to ONNX as an encoders-only bundle.

Each graph is validated against PyTorch and the runtime's preprocessing against transformers'; only a bundle that
passes every check is written. See the README, "From posts to scores".
"""

from __future__ import annotations

import argparse
import logging

from ctmwa_batch.io.storage import local_path
from ctmwa_batch.model.bundle import FP32, PRECISIONS
from ctmwa_export import assemble
from ctmwa_export.encoders import EncoderExportConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-export encoders` arguments."""
    d = EncoderExportConfig()
    parser.add_argument(
        "--from", dest="source", default=d.source, help=f"hub id or local folder of a CLIP model (default {d.source})"
    )
    parser.add_argument("--out", required=True, type=local_path, help="bundle folder to write")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag, commit)")
    parser.add_argument("--opset", type=int, default=d.opset, help=f"ONNX opset (default {d.opset})")
    parser.add_argument("--atol", type=float, default=d.atol, help=f"validation tolerance (default {d.atol:g})")
    parser.add_argument(
        "--max-text-length", type=int, default=None, help="tokens per text (default: the model's limit)"
    )
    parser.add_argument(
        "--extra-batch-sizes", type=int, nargs="*", default=[], help="batch sizes to validate besides 1 3 7"
    )
    parser.add_argument("--torchscript", action="store_true", help="use the TorchScript exporter instead of dynamo")
    parser.add_argument(
        "--no-jpeg-draft", action="store_true", help="decode JPEGs at full size (slower, bit-exact with transformers)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument(
        "--precision",
        action="append",
        choices=PRECISIONS,
        default=None,
        metavar="P",
        help=f"encoder variant to write, repeatable: {' | '.join(PRECISIONS)} (default {' + '.join(d.precisions)}; "
        "fp32 is always written: int8 serves CPU workers, fp16 GPU workers)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the config from the arguments and export."""
    config = EncoderExportConfig(
        source=args.source,
        out_dir=args.out,
        revision=args.revision,
        opset=args.opset,
        atol=args.atol,
        max_text_length=args.max_text_length,
        extra_batch_sizes=tuple(args.extra_batch_sizes),
        dynamo=not args.torchscript,
        jpeg_draft=not args.no_jpeg_draft,
        overwrite=args.overwrite,
        precisions=tuple(dict.fromkeys([FP32, *(args.precision or EncoderExportConfig.precisions)])),
    )
    bundle = assemble.export_encoders(config)
    logger.info("done: %s (model_version %s)", bundle.root, bundle.model_version)
    return 0
