"""Benchmark: what a CPU-int8 or GPU-fp16 worker gives up against the fp32 features that trained the head.

Not a test. For each encoder size (a tiny random CLIP, and a full-size ViT-B/32 with random weights; nothing is
downloaded), in one run:

1. generated labelled posts (the demo's generator: the sentiment cue in text and image, or in one of them) are
   embedded with the fp32 encoders, the way training features are made (`ctmwa-batch embed`, precision fp32);
2. a CTMWA head is trained on the training split (`ctmwa-train`);
3. the held-out test posts are embedded again with each encoder variant (fp32, int8, fp16) and go through that head;
4. it prints, per variant: the share of held-out posts whose prediction equals the fp32 prediction, accuracy against
   the generated labels, min / mean cosine of the embeddings against fp32, and the encoders' speed here.

The weights are random (the hub is not reachable from this machine): the figures say how far quantization moves
predictions of a head trained on fp32 features of those encoders, not what a real CLIP would score.

    python bench/bench_precision.py [--sizes tiny vit-b32] [--posts 1500 600] [--epochs 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

logger = logging.getLogger("bench_precision")
PRECISIONS = ("fp32", "int8", "fp16")


def encoders_for(work: Path, size: str) -> Path:
    """The encoders-only bundle of `size` with every precision variant (bench_score builds and caches it)."""
    from bench_score import build_bundle

    full, _ = build_bundle(work, size)
    return full.parent / full.name.replace("-bundle", "-encoders")


def _features(path: Path) -> dict:
    t = pq.read_table(path)
    n = t.num_rows

    def emb(col: str) -> np.ndarray:
        values = t.column(col).to_pylist()
        dim = len(next(v for v in values if v is not None))
        return np.array([v if v is not None else [0.0] * dim for v in values], dtype=np.float32)

    return {
        "post_id": t.column("post_id").to_pylist(),
        "text_emb": emb("text_emb"),
        "image_emb": emb("image_emb"),
        "has_text": np.array(t.column("has_text").to_pylist(), bool),
        "has_image": np.array(t.column("has_image").to_pylist(), bool),
        "label": np.array(t.column("label").to_pylist()) if "label" in t.column_names else np.zeros(n),
    }


def run_size(work: Path, size: str, n_posts: int, epochs: int) -> dict:
    import torch

    from ctmwa_batch.scoring.embed import embed_posts
    from ctmwa_training.cli import main as train_main
    from ctmwa_training.model import load_checkpoint
    from fixtures.posts import LABELS, write_training_posts

    enc = encoders_for(work, size)
    folder = work / f"precision-{size}-{n_posts}"
    folder.mkdir(parents=True, exist_ok=True)
    posts = folder / "posts.parquet"
    if not posts.exists():
        write_training_posts(posts, n=n_posts, key="precision", split=(0.6, 0.1, 0.3))
    table = pq.read_table(posts)
    test_posts = folder / "test_posts.parquet"
    pq.write_table(table.filter(np.array(table.column("split").to_pylist()) == "test"), test_posts)
    feats = folder / "features_fp32.parquet"
    t0 = time.perf_counter()
    if not feats.exists():
        embed_posts(enc, posts, feats, device="cpu", precision="fp32")
    ckpt = folder / "ctmwa"
    if not (ckpt / "config.json").exists():
        # the demo's training settings (demo/run_demo.py): batch 64, lr 0.005
        assert (
            train_main(
                [
                    "--features",
                    str(feats),
                    "--out",
                    str(ckpt),
                    "--epochs",
                    str(epochs),
                    "--seed",
                    "0",
                    "--labels",
                    ",".join(LABELS),
                    "--config",
                    json.dumps({"training": {"batch_size": 64, "lr": 0.005}}),
                ]
            )
            == 0
        )
    logger.info("%s: fp32 features and head ready in %.0fs", size, time.perf_counter() - t0)
    model, _, _ = load_checkpoint(ckpt)
    results: dict = {"held_out_posts": None}
    preds: dict[str, np.ndarray] = {}
    embs: dict[str, dict] = {}
    for precision in PRECISIONS:
        out = folder / f"test_{precision}.parquet"
        t0 = time.perf_counter()
        stats = embed_posts(enc, test_posts, out, device="cpu", precision=precision)
        seconds = time.perf_counter() - t0
        f = _features(out)
        with torch.no_grad():
            logits = model(
                torch.from_numpy(f["text_emb"]),
                torch.from_numpy(f["image_emb"]),
                torch.from_numpy(f["has_text"]),
                torch.from_numpy(f["has_image"]),
            ).logits_m.numpy()
        preds[precision], embs[precision] = logits.argmax(1), f
        results["held_out_posts"] = len(f["post_id"])
        results[precision] = {
            "accuracy": round(float((preds[precision] == f["label"]).mean()), 4),
            "embed_posts_per_s": round(stats["rows"] / seconds, 1),
        }
    for precision in PRECISIONS:
        r = results[precision]
        r["agreement_with_fp32"] = round(float((preds[precision] == preds["fp32"]).mean()), 4)
        r["flipped_posts"] = int((preds[precision] != preds["fp32"]).sum())
        for col, mask in (("image_emb", "has_image"), ("text_emb", "has_text")):
            a, b, m = embs[precision][col], embs["fp32"][col], embs["fp32"][mask]
            cos = (a[m] * b[m]).sum(1) / np.linalg.norm(a[m], axis=1) / np.linalg.norm(b[m], axis=1)
            r[f"{col}_cosine_min"], r[f"{col}_cosine_mean"] = round(float(cos.min()), 5), round(float(cos.mean()), 6)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "vit-b32"], choices=["tiny", "vit-b32"])
    parser.add_argument(
        "--posts", nargs="+", type=int, default=[1500, 600], help="generated posts per size (30%% held out)"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctmwa_bench_work"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    from machine import cpu_info

    print("machine:", json.dumps(cpu_info()), flush=True)
    report = {}
    for size, n in zip(args.sizes, args.posts):
        report[size] = run_size(args.work, size, n, args.epochs)
        print(f"{size}:", json.dumps(report[size]), flush=True)
    print()
    print(
        "| encoders | precision | held-out posts | prediction = fp32 | flipped | accuracy (generated labels) | image emb cosine min / mean | text emb cosine min / mean | embed posts/s (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size, r in report.items():
        for p in PRECISIONS:
            x = r[p]
            print(
                f"| {size} | {p} | {r['held_out_posts']} | {x['agreement_with_fp32']:.2%} | {x['flipped_posts']} | {x['accuracy']:.2%} | "
                f"{x['image_emb_cosine_min']:.5f} / {x['image_emb_cosine_mean']:.6f} | {x['text_emb_cosine_min']:.5f} / {x['text_emb_cosine_mean']:.6f} | {x['embed_posts_per_s']} |"
            )
    (args.work / "precision_report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
