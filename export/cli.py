"""`ctmwa-export`: PyTorch -> ONNX exports with parity validation (encoders, head). Subcommands live beside their modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctmwa_batch.errors import CtmwaError

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "encoders": "export.encoders",
    "head": "export.head",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-export`."""
    parser = argparse.ArgumentParser(prog="ctmwa-export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # onnx_ir and onnxscript log every optimisation pass at INFO; keep the export log readable.
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return modules[args.command].run(args)
    except CtmwaError as e:
        print(f"ctmwa-export {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
