"""Export CTMWA to ONNX model bundles, each graph validated against PyTorch (see the README for the whole story)."""

from __future__ import annotations

import sys

from ctmwa_batch.cli.main import run_subcommands

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "encoders": "ctmwa_export.cli_encoders",
    "head": "ctmwa_export.cli_head",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-export`."""
    # onnx_ir and onnxscript log every optimisation pass at INFO; keep the export log readable.
    return run_subcommands("ctmwa-export", __doc__, SUBCOMMANDS, argv, quiet_loggers=("onnx_ir", "onnxscript"))


if __name__ == "__main__":
    sys.exit(main())
