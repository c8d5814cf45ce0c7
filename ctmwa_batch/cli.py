"""`ctmwa-batch`: the runtime's command line (embed, inspect, score, models). Subcommands live beside their modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctmwa_batch.errors import CtmwaError

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "embed": "ctmwa_batch.embed",
    "inspect": "ctmwa_batch.bundle",
    "score": "ctmwa_batch.job",
    "models": "ctmwa_batch.registry",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-batch`."""
    parser = argparse.ArgumentParser(prog="ctmwa-batch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return modules[args.command].run(args)
    except CtmwaError as e:
        print(f"ctmwa-batch {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
