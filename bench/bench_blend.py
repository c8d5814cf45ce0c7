"""Benchmark: the probe blend and the class bias on already-trained checkpoints, against a logistic regression.

    python bench/bench_evidence.py --jobs 3 --keep kept/          # trains (with the blend), keeps the checkpoints
    python bench/bench_blend.py kept/ [--class-shares 0.59 0.10 0.31] [--posts 10000]

The blend and the class bias are fitted after training on the frozen model (ctmwa_training.probe, ctmwa_training.class_bias),
so they can be re-chosen on any kept checkpoint without retraining; this script does, with the shipped code, and
prints per seed: test accuracy / weighted F1 of the model as trained (neither), with the class bias alone, with the
blend and the class bias (the default), and of a logistic regression on the concatenated embeddings (L2 chosen on
the valid split: the obvious alternative, bench_evidence.py's baseline). The synthetic features are rebuilt from
the data seeds (0, 1, 2, ... beside the kept seeds in order, as bench_evidence.py draws them). Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fixtures are not installed

from machine import cpu_flags  # noqa: E402

from ctmwa_training.data import read_features  # noqa: E402
from ctmwa_training.evidence import logistic_baseline  # noqa: E402
from ctmwa_training.fit import choose_class_bias, evaluate  # noqa: E402
from ctmwa_training.meta import TrainConfig  # noqa: E402
from ctmwa_training.model import PROBE_WEIGHT, load_checkpoint  # noqa: E402
from ctmwa_training.probe import fit_probe_blend  # noqa: E402
from fixtures.features import SyntheticSpec, write_synthetic_features  # noqa: E402

ROWS = ("as trained", "class bias only", "blend + class bias", "logistic regression")


def measure(checkpoint: Path, features: Path) -> dict:
    """Test (accuracy, weighted F1) of each row of ROWS for one kept checkpoint."""
    data = read_features(features)
    model, _, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        getattr(model, PROBE_WEIGHT).zero_()
    as_trained = evaluate(model, data.test)
    bias, _ = choose_class_bias(model, data, TrainConfig())
    bias_only = evaluate(model, data.test, bias)
    blend = fit_probe_blend(model, data)
    bias, report = choose_class_bias(model, data, TrainConfig())
    final = evaluate(model, data.test, bias)
    lr = logistic_baseline(data.train_split(), data.valid, data.test, model.config.num_classes)
    figures = [(r["accuracy"], r["f1_weighted"]) for r in (as_trained, bias_only, final)] + [lr]
    return {
        "rows": dict(zip(ROWS, figures)),
        "weight": blend["weight"],
        "bias": report["bias"],
        "valid_gain": blend["valid_f1_weighted_after"] - blend["valid_f1_weighted_before"],
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every kept checkpoint and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, help="bench_evidence.py --keep folder (seed-NNNN/ checkpoints)")
    parser.add_argument("--posts", type=int, default=10000, help="synthetic posts, as bench_evidence.py was run")
    parser.add_argument("--dim", type=int, default=512, help="embedding width, as bench_evidence.py was run")
    parser.add_argument("--class-shares", type=float, nargs="+", help="as bench_evidence.py was run (default uniform)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = sorted(args.kept.glob("seed-*"))
    if not kept:
        parser.error(f"{args.kept} has no seed-NNNN checkpoints; run bench_evidence.py --keep {args.kept} first")
    spec = SyntheticSpec(class_shares=tuple(args.class_shares) if args.class_shares else None)
    start = time.perf_counter()
    runs = []
    for data_seed, checkpoint in enumerate(kept):
        features = write_synthetic_features(
            args.kept / f"features-{data_seed}.parquet", args.posts, 3, args.dim, data_seed, spec
        )
        run = measure(checkpoint, features)
        runs.append(run)
        cells = "  ".join(f"{name} {a:.3f}/{f:.3f}" for name, (a, f) in run["rows"].items())
        print(
            f"{checkpoint.name} (data {data_seed}): {cells}; blend weight {run['weight']} (valid F1 {run['valid_gain']:+.4f}), bias {[round(b, 2) for b in run['bias']]}"
        )
    print(
        f"\nTest accuracy / weighted F1, mean over {len(runs)} seeds ({args.posts} posts, class shares {args.class_shares or 'uniform'})"
    )
    for name in ROWS:
        acc = statistics.fmean(r["rows"][name][0] for r in runs)
        f1 = statistics.fmean(r["rows"][name][1] for r in runs)
        print(f"{name:<22} acc {acc:.4f}   F1 {f1:.4f}")
    gap = statistics.fmean(r["rows"]["blend + class bias"][1] - r["rows"]["logistic regression"][1] for r in runs)
    print(f"blend + class bias − logistic regression: F1 {gap:+.4f}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_flags()}), Python {platform.python_version()}, torch {torch.__version__}; {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
