"""Benchmark: which output says "this modality carried the post's sentiment"? And does the minority class starve?

    python bench/bench_evidence.py [--posts 10000] [--epochs 20] [--seeds 1111 1112 1113] [--jobs 1] [--json F]
    python bench/bench_evidence.py --posts 2000 --scaled-lr    # the quick small set (minutes, not an hour)

Per seed: its own synthetic features (`fixtures/features.py`, data seed 0, 1, 2 beside training seeds 1111, 1112,
1113, so that the three test sets differ; the generator knows where each post's cue is: both modalities, the
text only, the image only; 10,000 posts: 1,000 test posts, so that a difference of 0.01 in accuracy is not noise),
`ctmwa-train`'s defaults exactly (meta mode, 20 epochs, batch 32, the reference's step sizes, class bias on;
`--scaled-lr` for the step sizes that bench_training.py and the demo use on 2,000 posts, under which the
reference's still underfit), the head exported to ONNX (what a bundle ships) and run by ONNX Runtime on the test
split. Then:

AUC of each candidate score for "this modality carries the cue", on the test posts that have both a text and an
image: text AUC = P(score of a random text-only-cue post > score of a random image-only-cue post), ties counting
half; image AUC = the same with the roles swapped (image-only-cue posts against text-only-cue posts). Posts with
the cue in both modalities are in neither side. Candidates:

- paper weights: `text_weight` / `image_weight` (the meta weight nets, fed the model's own prediction);
- unimodal head: the text (image) classifier t_c (v_c)'s probability of the predicted class;
- counterfactual: the drop in the predicted class's probability when the text (image) is replaced by its translation;
- query head: a logistic regression of the *unimodal* label (t_label, v_label) on the neck output m_t (m_v),
  fitted on the query rows only, its probability of the predicted class;
- neck, post label: the evidence as first shipped, a logistic regression of the post label on m_t (m_v) over
  every training row, its probability of the predicted class;
- evidence (shipped): `text_evidence` / `image_evidence` from head.onnx (ctmwa_training.evidence: a logistic regression
  of each modality's own label on its raw embedding over every training row, read as p_c / (p_c + p_neutral)).

Also printed: test accuracy and weighted F1 by default (the probe blend and the class bias, ctmwa_training.probe and
ctmwa_training.class_bias, both chosen on the valid split), as trained (neither), and of a logistic regression on
the concatenated embeddings (L2 chosen on the valid split), the obvious alternative. Not a test: each seed trains for minutes.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fixtures and demo are not installed

from machine import cpu_flags  # noqa: E402

from ctmwa_batch.model.bundle import IMAGE_EVIDENCE, IMAGE_WEIGHT, PROBS, TEXT_EVIDENCE, TEXT_WEIGHT  # noqa: E402
from ctmwa_batch.model.runtime import RuntimeConfig, create_session  # noqa: E402
from ctmwa_export.head import HeadExportConfig, export_head_graph  # noqa: E402
from ctmwa_training.data import read_features  # noqa: E402
from ctmwa_training.evidence import auc, fit_logistic, logistic_baseline  # noqa: E402
from ctmwa_training.fit import fit  # noqa: E402
from ctmwa_training.meta import TrainConfig  # noqa: E402
from ctmwa_training.model import CTMWAConfig, save_checkpoint  # noqa: E402
from demo.train import DEMO_TRAINING  # noqa: E402
from fixtures.features import SyntheticSpec, synthetic_cues, write_synthetic_features  # noqa: E402

logger = logging.getLogger("bench_evidence")

CANDIDATES = (
    "paper weights",
    "unimodal head",
    "counterfactual",
    "query head",
    "neck, post label",
    "evidence (shipped)",
)


def run_seed(args: argparse.Namespace, seed: int, data_seed: int, work: Path) -> dict:
    """Write this seed's features; train, export, score the test split, and measure every candidate."""
    torch.set_num_threads(args.threads)
    features = write_synthetic_features(
        work / f"features-{data_seed}.parquet", args.posts, args.classes, args.dim, data_seed, _spec(args)
    )
    start = time.perf_counter()
    training = dict(DEMO_TRAINING) if args.scaled_lr else {}
    config = TrainConfig.from_dict({**training, "seed": seed, "epochs": args.epochs})
    data = read_features(features)
    result = fit(data, CTMWAConfig(text_dim=args.dim, image_dim=args.dim, num_classes=args.classes), config)
    model, bias = result.model, result.class_bias["bias"]
    train_seconds = time.perf_counter() - start
    if args.keep:
        save_checkpoint(
            model, model.config, args.keep / f"seed-{seed}", {"class_bias": result.class_bias, "labels": data.labels}
        )
        (args.keep / f"seed-{seed}" / "metrics.json").write_text(json.dumps(result.metrics, indent=1, default=str))

    # The shipped outputs, from the exported graph through ONNX Runtime.
    test = data.test
    report = export_head_graph(
        model, work / f"head-{seed}.onnx", HeadExportConfig(extra_batch_sizes=()), class_bias=bias
    )
    session = create_session(report.path, RuntimeConfig(device="cpu", intra_op_threads=args.threads))
    onnx_out = session.run(
        {
            "text_emb": test.text.numpy(),
            "image_emb": test.image.numpy(),
            "has_text": test.has_text.numpy(),
            "has_image": test.has_image.numpy(),
        }
    )
    predicted = torch.from_numpy(onnx_out[PROBS].argmax(1))
    rows = torch.arange(len(test))
    bias_t = torch.tensor(bias, dtype=torch.float32)

    def p_pred(logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits, dim=1)[rows, predicted].numpy()

    with torch.no_grad():
        out = model(test.text, test.image, test.has_text, test.has_image, class_bias=bias_t)
        assert torch.equal((out.logits + bias_t).argmax(1), predicted), "torch and onnx disagree on the prediction"
        p_both = p_pred(out.logits + bias_t)
        no_text = model(test.text, test.image, torch.zeros_like(test.has_text), test.has_image, label=predicted)
        no_image = model(test.text, test.image, test.has_text, torch.zeros_like(test.has_image), label=predicted)
        # The query head: unimodal labels, query rows only (the third candidate).
        q = data.query
        q_out = model(q.text, q.image, q.has_text, q.has_image)
        wt, bt = fit_logistic(q_out.m_t, q.t_label, args.classes, 1e-2)
        wv, bv = fit_logistic(q_out.m_v, q.v_label, args.classes, 1e-2)
        # The first shipped evidence: the post label on the neck outputs, every training row.
        rows_all = data.train_split()
        a_out = model(rows_all.text, rows_all.image, rows_all.has_text, rows_all.has_image)
        nt, nbt = fit_logistic(a_out.m_t[rows_all.has_text], rows_all.label[rows_all.has_text], args.classes, 1e-2)
        nv, nbv = fit_logistic(a_out.m_v[rows_all.has_image], rows_all.label[rows_all.has_image], args.classes, 1e-2)
        scores = {
            "paper weights": (onnx_out[TEXT_WEIGHT], onnx_out[IMAGE_WEIGHT]),
            "unimodal head": (p_pred(out.logits_t), p_pred(out.logits_v)),
            "counterfactual": (p_both - p_pred(no_text.logits + bias_t), p_both - p_pred(no_image.logits + bias_t)),
            "query head": (p_pred(out.m_t.double() @ wt.T + bt), p_pred(out.m_v.double() @ wv.T + bv)),
            "neck, post label": (p_pred(out.m_t.double() @ nt.T + nbt), p_pred(out.m_v.double() @ nv.T + nbv)),
            "evidence (shipped)": (onnx_out[TEXT_EVIDENCE], onnx_out[IMAGE_EVIDENCE]),
        }

    cues = synthetic_cues(args.posts, args.classes, args.dim, data_seed, _spec(args))
    cue = cues[[int(p.rsplit("-", 1)[1]) for p in test.post_id]]
    both = (test.has_text & test.has_image).numpy()
    text_only, image_only = (cue == "text") & both, (cue == "image") & both
    aucs = {
        name: (float(auc(t[text_only], t[image_only])), float(auc(v[image_only], v[text_only])))
        for name, (t, v) in scores.items()
    }
    lr_acc, lr_f1 = logistic_baseline(data.train_split(), data.valid, test, args.classes)
    m = result.metrics
    return {
        "seed": seed,
        "data_seed": data_seed,
        "auc": aucs,
        "rows": {"text_only": int(text_only.sum()), "image_only": int(image_only.sum())},
        "test_accuracy": m["test_accuracy"],
        "test_f1_weighted": m["test_f1_weighted"],
        "test_accuracy_without_class_bias": m["test_accuracy_without_class_bias"],
        "test_f1_weighted_without_class_bias": m["test_f1_weighted_without_class_bias"],
        "class_bias": result.class_bias,
        "probe_blend_weight": m["probe_blend"]["weight"],
        "logreg_test_accuracy": lr_acc,
        "logreg_test_f1_weighted": lr_f1,
        "best_epoch": m["best_epoch"],
        "train_seconds": train_seconds,
    }


def _spec(args: argparse.Namespace) -> SyntheticSpec:
    return SyntheticSpec(class_shares=tuple(args.class_shares) if args.class_shares else None)


def _ms(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=10000, help="synthetic posts (80/10/10 split)")
    parser.add_argument("--dim", type=int, default=512, help="text and image embedding width")
    parser.add_argument("--classes", type=int, default=3, help="number of classes")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="epochs (default: ctmwa-train's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113], help="training seeds")
    parser.add_argument(
        "--data-seeds", type=int, nargs="+", help="seeds of each run's synthetic features (default: 0, 1, 2, ...)"
    )
    parser.add_argument(
        "--class-shares",
        type=float,
        nargs="+",
        help="share of each post label (default uniform; MVSA-Single-like: 0.59 0.10 0.31)",
    )
    parser.add_argument(
        "--scaled-lr",
        action="store_true",
        help="the demo's step sizes (lr 0.01, inner_lr 0.06) instead of the defaults",
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads per seed")
    parser.add_argument("--json", type=Path, help="also write every seed's figures here")
    parser.add_argument("--keep", type=Path, help="keep each seed's checkpoint and metrics.json under this folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )

    data_seeds = args.data_seeds or list(range(len(args.seeds)))
    if len(data_seeds) != len(args.seeds):
        parser.error(
            f"--data-seeds gives {len(data_seeds)} seeds for {len(args.seeds)} --seeds; give one per training seed"
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = len(args.seeds)
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                runs = list(pool.map(run_seed, [args] * n, args.seeds, data_seeds, [work] * n))
        else:
            runs = [run_seed(args, seed, data_seed, work) for seed, data_seed in zip(args.seeds, data_seeds)]
    total = time.perf_counter() - start
    for r in runs:
        print(
            f"  seed {r['seed']} (data {r['data_seed']}): test acc {r['test_accuracy']:.4f} F1 {r['test_f1_weighted']:.4f} (no bias {r['test_accuracy_without_class_bias']:.4f} / "
            f"{r['test_f1_weighted_without_class_bias']:.4f}; blend {r['probe_blend_weight']}, bias {[round(b, 2) for b in r['class_bias']['bias']]}), logreg {r['logreg_test_accuracy']:.4f} / "
            f"{r['logreg_test_f1_weighted']:.4f}; best epoch {r['best_epoch']}, {r['train_seconds']:.0f} s; AUC rows {r['rows']}"
        )
    print(
        f"\nModality evidence: {args.posts} synthetic posts, {args.dim}-d, {args.classes} classes; default ctmwa-train "
        f"(meta, {args.epochs} epochs, {'lr 0.01, inner_lr 0.06, wnet_lr 5e-4' if args.scaled_lr else 'default step sizes'}); "
        f"seeds {args.seeds} on data seeds {data_seeds}; class shares {args.class_shares or 'uniform'}; test posts with text and image"
    )
    print("AUC for 'this modality carries the cue' (text: text-only-cue vs image-only-cue posts; image: the reverse)")
    print(f"{'candidate':<22}{'text':>16}{'image':>16}")
    for name in CANDIDATES:
        t = [r["auc"][name][0] for r in runs]
        v = [r["auc"][name][1] for r in runs]
        print(f"{name:<22}{_ms(t):>16}{_ms(v):>16}")
    print("\nTest accuracy and weighted F1 (mean ± std over seeds)")
    for label, acc, f1 in (
        ("CTMWA (default)", "test_accuracy", "test_f1_weighted"),
        ("CTMWA as trained", "test_accuracy_without_class_bias", "test_f1_weighted_without_class_bias"),
        ("logistic regression", "logreg_test_accuracy", "logreg_test_f1_weighted"),
    ):
        print(f"{label:<22} acc {_ms([r[acc] for r in runs])}   F1 {_ms([r[f1] for r in runs])}")
    gap = statistics.fmean(r["test_f1_weighted"] - r["logreg_test_f1_weighted"] for r in runs)
    gain = statistics.fmean(r["test_f1_weighted"] - r["test_f1_weighted_without_class_bias"] for r in runs)
    dacc = statistics.fmean(r["test_accuracy"] - r["test_accuracy_without_class_bias"] for r in runs)
    print(
        f"probe blend + class bias: F1 {gain:+.4f}, accuracy {dacc:+.4f}; CTMWA (default) − logistic regression: F1 {gap:+.4f}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_flags()}), {args.threads} thread(s) per seed, {args.jobs} job(s), "
        f"Python {platform.python_version()}, torch {torch.__version__}; total {total:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
