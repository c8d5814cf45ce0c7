"""`ctmwa-train`: train CTMWA on a features Parquet; `ctmwa-train prepare ...` turns raw datasets into one.

    ctmwa-train --features F --out DIR [--seed S] [--epochs N] [--mode meta|late_fusion] [--config JSON]
    ctmwa-train prepare ...   (see `ctmwa-train prepare --help`)

DIR receives model.safetensors and config.json (the checkpoint, see training.model) and metrics.json, written last.
--config is a JSON file or inline JSON: {"model": {CTMWAConfig fields}, "training": {TrainConfig fields}};
flags override it. text_dim, image_dim and num_classes default to the features file's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from ctmwa_batch.errors import CtmwaError
from training.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREPARE_MODULE = "training.prepare"


def build_parser() -> argparse.ArgumentParser:
    """The training command line (the `prepare` subcommand has its own)."""
    parser = argparse.ArgumentParser(
        prog="ctmwa-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", required=True, type=Path, help="features Parquet (DESIGN.md section 5)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the checkpoint and metrics.json")
    parser.add_argument("--config", help="JSON file or inline JSON with 'model' and/or 'training' sections")
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
    """Read features, train, write the checkpoint and metrics; returns the exit status."""
    # torch is imported here, not at the top, so `ctmwa-train prepare` and --help stay quick.
    import torch

    from training.data import read_features
    from training.fit import fit
    from training.meta import TrainConfig
    from training.model import CTMWAConfig, save_checkpoint

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    sections = load_config_json(args.config)
    train_values = dict(sections.get("training", {}))
    for key in ("mode", "seed", "epochs"):
        if getattr(args, key) is not None:
            train_values[key] = getattr(args, key)
    if args.no_unimodal_labels:
        train_values["unimodal_labels"] = False
    config = TrainConfig.from_dict(train_values, where="training config")
    model_values = dict(sections.get("model", {}))

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    data = read_features(
        args.features,
        labels=labels,
        unimodal_labels=config.unimodal_labels,
        text_dim=model_values.get("text_dim"),
        image_dim=model_values.get("image_dim"),
        query_fraction=config.query_fraction,
        seed=config.seed,
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
    logger.info("training CTMWA (%s) on %s: %s", config.mode, args.features, model_config)

    result = fit(data, model_config, config)
    extra = {
        "training": dataclasses.asdict(config),
        "labels": data.labels,
        "unimodal_labels": data.unimodal_labels,
        "features": str(args.features),
        "best_epoch": result.metrics["best_epoch"],
        "class_bias": result.class_bias,  # added to the logits before softmax and argmax (training.class_bias)
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    save_checkpoint(result.model, model_config, args.out, extra)
    metrics_path = Path(args.out) / METRICS_FILE
    metrics_path.write_text(json.dumps(_json_safe(result.metrics), indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", metrics_path)
    return 0


def _json_safe(value: Any) -> Any:
    # NaN (an empty evaluation) is not JSON; write null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctmwa-train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "prepare" if argv[:1] == ["prepare"] else "train"
    try:
        if command == "prepare":
            try:
                prepare = importlib.import_module(PREPARE_MODULE)
            except ModuleNotFoundError as e:
                if e.name != PREPARE_MODULE:
                    raise
                raise CtmwaError(f"{PREPARE_MODULE} is not installed in this version; upgrade ctmwa-batch") from e
            parser = argparse.ArgumentParser(prog="ctmwa-train prepare", description=prepare.__doc__)
            prepare.add_arguments(parser)
            args = parser.parse_args(argv[1:])
            _setup_logging(getattr(args, "verbose", False))
            return int(prepare.run(args))
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        return train(args)
    except CtmwaError as e:
        prog = "ctmwa-train prepare" if command == "prepare" else "ctmwa-train"
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
