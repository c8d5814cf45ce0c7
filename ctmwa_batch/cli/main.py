"""`ctmwa-batch`: the runtime's command line (embed, inspect, score, models, report). Subcommands live beside their modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io import storage

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "embed": "ctmwa_batch.scoring.embed",
    "inspect": "ctmwa_batch.model.bundle",
    "score": "ctmwa_batch.cli.score",
    "models": "ctmwa_batch.model.registry",
    "report": "ctmwa_batch.monitoring.report",
    "table": "ctmwa_batch.cli.table",  # tables: maintain
}


def short_description(doc: str | None) -> str:
    """A module docstring's first paragraph: what `--help` shows above the flags (the full story is in the README)."""
    return (doc or "").strip().split("\n\n")[0]


def run_subcommands(
    prog: str,
    description: str,
    subcommands: Mapping[str, str],
    argv: list[str] | None,
    quiet_loggers: tuple[str, ...] = (),
) -> int:
    """Parse `argv` for one of `subcommands` and run it; a CtmwaError is one line on stderr and exit status 2.

    `quiet_loggers` are raised to WARNING unless --verbose (libraries that log every step at INFO)."""
    parser = argparse.ArgumentParser(prog=prog, description=short_description(description))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in subcommands.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        summary = short_description(module.__doc__)
        sub_parser = sub.add_parser(name, help=summary.splitlines()[0], description=summary)
        module.add_arguments(sub_parser)
        sub_parser.add_argument(
            "--storage-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"object-store setting for every location of this command (repeatable; over the AWS variables and "
            f"{storage.ENV_OPTIONS}); keys: {', '.join(storage.KEYS)}",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        for name in quiet_loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        storage.configure(storage.parse_options(args.storage_option))
        with storage.translate_errors():
            return modules[args.command].run(args)
    except CtmwaError as e:
        # One line, no traceback, no secret (a store's error names the store, the bucket and the fix).
        print(f"{prog} {args.command}: {type(e).__name__}: {storage.redact(e)}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-batch`."""
    return run_subcommands("ctmwa-batch", __doc__, SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
