"""Benchmark: CTMWA (meta weight step) against the late-fusion ablation on the same synthetic features.

    python bench/bench_training.py [--posts 2000] [--dim 512] [--epochs 10] [--seeds 1111 1112 1113]

Trains each run once per seed on one synthetic features file and prints mean ± std (over seeds) of test
accuracy and weighted F1, the missing-modality test accuracies, seconds per epoch, and the meta/late-fusion
differences. Runs: meta (query rows carved out of the training batches), late_fusion (whole train split), and
lf_same_rows (late fusion on exactly meta's training batches: the features without the query rows). Every run is
one `ctmwa_training.train` call, as `ctmwa-train` makes it. Test figures are with the probe blend and the class bias chosen on
the valid split (ctmwa_training.probe, ctmwa_training.class_bias: the defaults); the "as trained" columns are the same models
without either. A logistic
regression on the concatenated embeddings (L2 chosen on the valid split) is the obvious alternative, printed beside
them. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fixtures and demo are not installed

from machine import cpu_flags  # noqa: E402

import ctmwa_training  # noqa: E402
from ctmwa_training.data import read_features  # noqa: E402
from ctmwa_training.evidence import logistic_baseline  # noqa: E402
from ctmwa_training.meta import TrainConfig  # noqa: E402
from demo.train import DEMO_TRAINING  # noqa: E402
from fixtures.features import write_synthetic_features  # noqa: E402

logger = logging.getLogger("bench_training")

# (row label, training mode, query rows left out of the features file)
RUNS = (
    ("meta", "meta", False),
    ("late_fusion", "late_fusion", False),  # trains on the whole train split
    ("lf_same_rows", "late_fusion", True),  # trains on exactly meta's training batches: isolates the meta step
)
COLUMNS = [
    ("test acc", "test_accuracy"),
    ("test F1 (w)", "test_f1_weighted"),
    ("acc, as trained", "test_accuracy_without_class_bias"),
    ("F1, as trained", "test_f1_weighted_without_class_bias"),
    ("acc, no text", "missing_text_test_accuracy"),
    ("acc, no image", "missing_image_test_accuracy"),
    ("s/epoch", "seconds_per_epoch"),
]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=2000, help="synthetic posts (80/10/10 split)")
    parser.add_argument("--dim", type=int, default=512, help="text and image embedding width")
    parser.add_argument("--classes", type=int, default=3, help="number of classes")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113], help="training seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic features")
    parser.add_argument("--reference-lr", action="store_true", help="the reference's step sizes instead of the demo's")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is faster on a busy machine"
    )
    parser.add_argument("--json", type=Path, help="also write every run's metrics here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    training_values = {} if args.reference_lr else dict(DEMO_TRAINING)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in RUNS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        features = write_synthetic_features(
            Path(tmp) / "features.parquet", args.posts, args.classes, args.dim, args.data_seed
        )
        table = pq.read_table(features)
        without_query = Path(tmp) / "features.without_query.parquet"
        pq.write_table(table.filter(pc.invert(table.column("query"))), without_query)
        plain = read_features(features, with_query=False)
        lr_acc, lr_f1 = logistic_baseline(plain.train, plain.valid, plain.test, args.classes)
        for seed in args.seeds:
            for name, mode, drop_query in RUNS:
                config = TrainConfig.from_dict({**training_values, "mode": mode, "seed": seed, "epochs": args.epochs})
                out = Path(tmp) / f"{name}-{seed}"
                metrics = ctmwa_training.train(without_query if drop_query else features, out, config)
                runs[name].append(metrics)
                print(
                    f"  seed {seed} {name:<12} test acc {metrics['test_accuracy']:.4f}  F1 {metrics['test_f1_weighted']:.4f}  "
                    f"best epoch {metrics['best_epoch']:>2}  {metrics['seconds_per_epoch']:.2f} s/epoch",
                    flush=True,
                )
    total = time.perf_counter() - start

    lr = "reference lr" if args.reference_lr else ", ".join(f"{k} {v}" for k, v in training_values.items())
    print(
        f"\nCTMWA vs late fusion: {args.posts} synthetic posts, {args.dim}-d, {args.classes} classes, {args.epochs} epochs, "
        f"batch 32, {lr}; seeds {args.seeds}"
    )
    print(f"{'run':<13}" + "".join(f"{name:>18}" for name, _ in COLUMNS))
    summary = {}
    for name, _, _ in RUNS:
        cells = []
        for _, key in COLUMNS:
            m, s = mean_std([r[key] for r in runs[name]])
            summary[(name, key)] = m
            cells.append(f"{m:>10.4f} ± {s:.4f}" if key != "seconds_per_epoch" else f"{m:>11.2f} ± {s:.2f}")
        print(f"{name:<13}" + "".join(f"{c:>18}" for c in cells))
    acc_gain = summary[("meta", "test_accuracy")] - summary[("late_fusion", "test_accuracy")]
    f1_gain = summary[("meta", "test_f1_weighted")] - summary[("late_fusion", "test_f1_weighted")]
    ratio = summary[("meta", "seconds_per_epoch")] / summary[("late_fusion", "seconds_per_epoch")]
    same_gain = summary[("meta", "test_accuracy")] - summary[("lf_same_rows", "test_accuracy")]
    print(
        f"meta − late_fusion: test acc {acc_gain:+.4f}, weighted F1 {f1_gain:+.4f}; meta − lf_same_rows: test acc "
        f"{same_gain:+.4f}; seconds per epoch meta / late_fusion {ratio:.2f}x"
    )
    bias_f1 = summary[("meta", "test_f1_weighted")] - summary[("meta", "test_f1_weighted_without_class_bias")]
    bias_acc = summary[("meta", "test_accuracy")] - summary[("meta", "test_accuracy_without_class_bias")]
    print(
        f"probe blend + class bias (meta): weighted F1 {bias_f1:+.4f}, accuracy {bias_acc:+.4f}; logistic regression on the "
        f"concatenated embeddings: test acc {lr_acc:.4f}, weighted F1 {lr_f1:.4f}; meta − logistic regression: F1 "
        f"{summary[('meta', 'test_f1_weighted')] - lr_f1:+.4f}"
    )
    print(f"CPU flags: {cpu_flags()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}; total {total:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
