"""`python -m demo.train`: the training path end to end on synthetic features, in about a minute on a laptop CPU.

Writes synthetic features (512-d, like CLIP ViT-B/32; fixtures/features.py), trains CTMWA and the late-fusion
ablation with `ctmwa_training.train` (what `ctmwa-train` runs), and prints their metrics side by side. Everything lands
in demo_output/ (or --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import ctmwa_training
from ctmwa_training.meta import TrainConfig
from fixtures.features import write_synthetic_features

logger = logging.getLogger(__name__)

# The synthetic set is a few hundred times smaller than TumEmo, so the reference's SGD step sizes would barely
# move in a few epochs; the demo (and bench/bench_training.py) scale lr and inner_lr by 20, keeping their 1:6
# ratio, alike for both modes. Adam's steps do not scale with the gradient: wnet_lr stays the reference's.
DEMO_TRAINING = {"lr": 0.01, "inner_lr": 0.06, "wnet_lr": 0.0005}
ROWS = [
    ("valid accuracy", "valid_accuracy"),
    ("test accuracy", "test_accuracy"),
    ("test weighted F1", "test_f1_weighted"),
    ("test accuracy, every text missing", "missing_text_test_accuracy"),
    ("test accuracy, every image missing", "missing_image_test_accuracy"),
    ("majority-class test accuracy", "majority_test_accuracy"),
    ("best epoch", "best_epoch"),
    ("seconds per epoch", "seconds_per_epoch"),
]


def metrics_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per metric, one column per run."""
    names = list(results)
    width = max(len(label) for label, _ in ROWS)
    lines = [f"{'':<{width}}  " + "  ".join(f"{n:>12}" for n in names)]
    for label, key in ROWS:
        cells = []
        for n in names:
            value = results[n].get(key)
            cells.append(
                f"{value:>12}" if isinstance(value, int) else f"{value:>12.4f}" if value is not None else f"{'-':>12}"
            )
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m demo.train", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="folder for features, checkpoints, metrics"
    )
    parser.add_argument("--posts", type=int, default=1500, help="synthetic posts")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (text and image)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run")
    parser.add_argument("--seed", type=int, default=1111, help="seed of data and training")
    # Batches of 32 gain little from a second thread, and two threads stall badly when another job shares the CPU.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    features = write_synthetic_features(
        args.out / "features.parquet", n=args.posts, num_classes=3, dim=args.dim, seed=args.seed
    )
    results = {}
    for mode in ("meta", "late_fusion"):
        config = TrainConfig.from_dict({**DEMO_TRAINING, "mode": mode, "epochs": args.epochs, "seed": args.seed})
        metrics = ctmwa_training.train(features, args.out / mode, config, threads=args.threads)
        results["CTMWA" if mode == "meta" else "late fusion"] = metrics

    print()
    print(
        f"CTMWA on {args.posts} synthetic posts ({args.dim}-d), {args.epochs} epochs, seed {args.seed}; outputs in {args.out}/"
    )
    print(metrics_table(results))
    print(
        f"\ncheckpoint: {args.out / 'meta'}/model.safetensors + config.json; metrics: {args.out / 'meta'}/metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
