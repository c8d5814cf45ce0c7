"""Train CTMWA on a features Parquet (`ctmwa-train prepare ...` makes one from a raw dataset).

DIR (--out) receives model.safetensors, config.json and metrics.json (written last). The README's "Training on the real
datasets" section tells the whole story.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io.storage import local_path
from ctmwa_training.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # ctmwa_training.run.METRICS_FILE (repeated here so --help does not load torch)
PREPARE_MODULE = "ctmwa_training.prepare"
SUBCOMMANDS = {"prepare": PREPARE_MODULE, "evidence": "ctmwa_training.evidence_cli"}


def build_parser() -> argparse.ArgumentParser:
    """The training command line (the `prepare` subcommand has its own)."""
    parser = argparse.ArgumentParser(
        prog="ctmwa-train",
        usage="%(prog)s --features F --out DIR [options]\n       %(prog)s prepare DATASET --root R --out F [options]\n"
        "       %(prog)s evidence --checkpoint DIR --features F [--out DIR]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", required=True, type=local_path, help="features Parquet (DESIGN.md section 5)")
    parser.add_argument(
        "--out", required=True, type=local_path, help="output folder for the checkpoint and metrics.json"
    )
    parser.add_argument(
        "--config",
        help='JSON file or inline JSON: {"model": {CTMWAConfig fields}, "training": {TrainConfig fields}}; flags override it',
    )
    parser.add_argument("--mode", choices=["meta", "late_fusion"], help="training mode (default: meta)")
    parser.add_argument("--seed", type=int, help="random seed (default 1111)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 20)")
    parser.add_argument("--labels", help="comma-separated class names, overriding the file's ctmwa.labels metadata")
    parser.add_argument(
        "--no-unimodal-labels",
        action="store_true",
        help="the dataset has no text/image labels (TumEmo): the query step uses the multimodal label",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice, one per core); 1 avoids stalls on a CPU shared with other jobs",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def load_config_json(value: str | None) -> dict[str, Any]:
    """The --config argument as a dict with optional 'model' and 'training' sections."""
    if not value:
        return {}
    text = value if value.lstrip().startswith("{") else None
    if text is None:
        try:
            text = Path(value).read_text()
        except OSError as e:
            raise ConfigError(f"--config {value!r}: cannot read it ({e}); give a JSON file or inline JSON") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {value!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or set(data) - {"model", "training"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(
            f"--config has keys {keys}; expected an object with 'model' and/or 'training' sections, "
            'e.g. {"training": {"lr": 0.001}, "model": {"embed_dim": 64}}'
        )
    return data


def train(args: argparse.Namespace) -> int:
    """Train with the parsed arguments through `ctmwa_training.train`; returns the exit status."""
    # torch loads here, not at the top, so `ctmwa-train prepare` and --help stay quick.
    from ctmwa_training.meta import TrainConfig
    from ctmwa_training.run import train as train_run

    sections = load_config_json(args.config)
    train_values = dict(sections.get("training", {}))
    for key in ("mode", "seed", "epochs"):
        if getattr(args, key) is not None:
            train_values[key] = getattr(args, key)
    if args.no_unimodal_labels:
        train_values["unimodal_labels"] = False
    config = TrainConfig.from_dict(train_values, where="training config")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    train_run(args.features, args.out, config, model=sections.get("model", {}), labels=labels, threads=args.threads)
    return 0


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_command(prog: str, module: ModuleType, argv: list[str]) -> int:
    """Parse `argv` with `module.add_arguments`, set up logging, run `module.run(args)`; a CtmwaError is one line
    on stderr and exit status 2 (`ctmwa-train prepare` and `python -m ctmwa_training.prepare` both come through here)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        return int(module.run(args))
    except CtmwaError as e:
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        name = SUBCOMMANDS[argv[0]]
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            print(
                f"ctmwa-train {argv[0]}: CtmwaError: {name} is not installed in this version; upgrade ctmwa-batch",
                file=sys.stderr,
            )
            return 2
        return run_command(f"ctmwa-train {argv[0]}", module, argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return train(args)
    except CtmwaError as e:
        print(f"ctmwa-train: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
