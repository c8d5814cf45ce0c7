"""Benchmark: a backfill at the cost of the head, and each distinct image encoded once.

Not a test. On one machine, in one run, with full-size ViT-B/32 CLIP encoders (random weights: speed does not depend on
them; fixtures.clip.build_random_clip_vit_b32, exported fp32 + int8) and two random CTMWA heads over the same encoder
files, on generated posts (photo-like JPEGs of ~500x400 px, short texts):

1. the first head scores `--days` daily partitions with `keep_embeddings` (int8 encoders on the CPU);
2. the second head rescores the same days twice: the full rescoring of today (`embedding_reuse=False`: every row
   through the encoders) and the head-only rescoring from the kept embeddings; rows/s of each and their ratio (the
   goal is >= 50x), the largest probability difference between the two against the float16 tolerance derived for
   this head (tests/ctmwa_batch/scoring/test_backfill.py::probability_tolerance says how), and the bytes kept per post;
3. a partition where `--repeat-share` of the posts repeat another post's image: the first head with and without
   reuse (each distinct image decoded and encoded once), rows/s and the speed-up, and how far the scores moved
   (int8 scales each batch's activations, so an image's embedding moves ~1e-3 with the company it keeps).

    python bench/bench_backfill.py [--days 7] [--rows-per-day 200] [--repeat-rows 200] [--repeat-share 0.3]
                                   [--workers N] [--threads N] [--work DIR]

Every day is scored as the backfill task does (ctmwa_batch.scoring.job.score_partition per day, in one process). It ends
with a Markdown table and the CPU's flags and load average (the figures are as noisy as the machine is busy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_score import LABELS, photo_jpeg, short_text, write_posts  # noqa: E402
from machine import cpu_flags, cpu_info  # noqa: E402

from ctmwa_batch.config import JobConfig, ScoreConfig  # noqa: E402

logger = logging.getLogger("bench_backfill")


def build_bundles(work: Path) -> tuple[Path, Path]:
    """(first head's bundle, second head's bundle): one ViT-B/32 encoder export (fp32 + int8), two random heads."""
    import torch

    from ctmwa_batch.model.bundle import MANIFEST
    from ctmwa_export.assemble import export_encoders, export_head
    from ctmwa_export.encoders import EncoderExportConfig
    from ctmwa_training.model import CTMWA, CTMWAConfig, save_checkpoint
    from fixtures.clip import build_random_clip_vit_b32

    clip_dir, enc_dir = work / "vit-b32-clip", work / "vit-b32-encoders"
    heads = [work / f"head-{k}-bundle" for k in (1, 2)]
    if all((h / MANIFEST).exists() for h in heads):
        return heads[0], heads[1]
    t0 = time.perf_counter()
    if not (clip_dir / "config.json").exists():
        build_random_clip_vit_b32(clip_dir, seed=0)
    if not (enc_dir / MANIFEST).exists():
        export_encoders(
            EncoderExportConfig(source=str(clip_dir), out_dir=enc_dir, overwrite=True, precisions=("fp32", "int8"))
        )
    config = CTMWAConfig(text_dim=512, image_dim=512, embed_dim=128, num_classes=len(LABELS))
    for seed, out in enumerate(heads):
        torch.manual_seed(seed)
        ckpt = work / f"head-{seed + 1}-ctmwa"
        save_checkpoint(CTMWA(config).eval(), config, ckpt, {"labels": LABELS})
        export_head(ckpt, enc_dir, out)
    logger.info("built the bundles in %.0fs", time.perf_counter() - t0)
    return heads[0], heads[1]


def write_repeats(path: Path, n: int, share: float, seed: int) -> dict:
    """n posts where `share` of them repeat the image of another post of the partition (shuffled)."""
    rng = np.random.default_rng(seed)
    distinct = n - int(round(n * share))
    jpegs = [photo_jpeg(rng) for _ in range(distinct)]
    images = jpegs + [jpegs[int(k)] for k in rng.integers(0, distinct, n - distinct)]
    images = [images[int(k)] for k in rng.permutation(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "post_id": [f"r{i}" for i in range(n)],
                "text": [short_text(rng) for _ in range(n)],
                "image": pa.array(images, pa.binary()),
            }
        ),
        path,
        use_dictionary=["post_id", "text"],
    )
    return {"rows": n, "distinct_images": distinct}


def score_days(days: list[Path], out: Path, bundle: Path, config: JobConfig) -> dict:
    """Score each day as the backfill task does; rows/s over the whole range, and each day's summary."""
    from ctmwa_batch.scoring import job

    t0, c0 = time.perf_counter(), cpu_seconds()
    results = [job.score_partition(day, out, bundle, config) for day in days]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rows = sum(r["rows"]["output"] for r in results)
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(rows / cpu, 1),
        "days": results,
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers): steadier than wall time on a busy
    machine, where other processes take the cores for a while."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def scores_of(result: dict) -> pa.Table:
    """A committed partition's rows in input order."""
    out_dir = Path(result["output_dir"])
    success = json.loads((out_dir / "_SUCCESS.json").read_text())
    return pa.concat_tables([pq.read_table(out_dir / p) for p in success["parts"]])


def compare(a_days: list[dict], b_days: list[dict]) -> dict:
    """Statuses equal? Largest probability difference between two runs of the same head over the same days."""
    same_status, diff = True, 0.0
    for a, b in zip(a_days, b_days):
        ta, tb = scores_of(a), scores_of(b)
        same_status &= ta.column("status").to_pylist() == tb.column("status").to_pylist()
        same_status &= ta.column("error").to_pylist() == tb.column("error").to_pylist()
        for label in LABELS:
            pa_, pb_ = (np.asarray(t.column(f"prob_{label}").to_numpy(zero_copy_only=False), float) for t in (ta, tb))
            diff = max(diff, float(np.nanmax(np.abs(pa_ - pb_))))
    return {"statuses_and_errors_equal": bool(same_status), "max_prob_diff": diff}


def tolerance(bundle: Path, kept_days: list[dict]) -> float:
    """The float16 tolerance on probabilities for this head on the kept rows of the first day (test_backfill's
    derivation: the head's measured gain x float16's unit roundoff x sqrt(2) for the pair, x2 for unseen directions)."""
    from ctmwa_batch import schema
    from ctmwa_batch.scoring import embeddings
    from tests.ctmwa_batch.scoring.test_backfill import probability_tolerance

    kept = kept_days[0]["embeddings"]
    location = Path(kept["location"])
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(location.glob("*.parquet"))])
    t = embeddings.float32_matrix(rows.column(schema.TEXT_EMB), 512)
    v = embeddings.float32_matrix(rows.column(schema.IMAGE_EMB), 512)
    masks = (
        np.asarray(rows.column(schema.HAS_TEXT).to_numpy(zero_copy_only=False), bool),
        np.asarray(rows.column(schema.HAS_IMAGE).to_numpy(zero_copy_only=False), bool),
    )
    return probability_tolerance(bundle, t, v, masks)


def print_backfill(b: dict) -> None:
    """The backfill part's table."""
    print()
    print(f"| backfill, {b['days']} days x {b['rows_per_day']} posts, ViT-B/32 int8 on CPU | rows/s |")
    print("|---|---|")
    print(f"| first head, full scoring + keep embeddings | {b['first_head_keep_rows_per_s']:,.1f} |")
    print(f"| second head, full rescoring (encoders) | {b['full_rows_per_s']:,.1f} |")
    print(f"| second head, head-only from kept embeddings | {b['head_only_rows_per_s']:,.1f} |")
    print(f"| **ratio head-only / full** | **{b['ratio']:,.1f}x** |")
    print(
        f"| CPU seconds: keep / full / head-only | {b['cpu_seconds']['keep']} / {b['cpu_seconds']['full']} / {b['cpu_seconds']['head_only']} |"
    )
    print(f"| **ratio in CPU time** | **{b['cpu_ratio']:,.1f}x** |")
    print()
    print(
        f"kept: {b['kept_bytes_per_post']} bytes/post; head-only vs full: statuses and errors equal = "
        f"{b['statuses_and_errors_equal']}, max |dp| = {b['max_prob_diff']:.2e} (float16 tolerance "
        f"{b['float16_tolerance']:.2e})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rows-per-day", type=int, default=200)
    parser.add_argument("--repeat-rows", type=int, default=200, help="posts in the partition with repeated images")
    parser.add_argument("--repeat-share", type=float, default=0.3, help="share of posts whose image is a repeat")
    parser.add_argument("--repeat-runs", type=int, default=3, help="runs of each way, alternated (the fastest counts)")
    parser.add_argument("--skip-backfill", action="store_true", help="only the repeated-images part")
    parser.add_argument("--workers", type=int, default=ScoreConfig().decode_workers, help="decoding processes")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctmwa_bench_backfill"), help="cache for models, data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine_before": cpu_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    print("machine:", cpu_flags(), flush=True)

    head1, head2 = build_bundles(work)
    days = []
    for d in range(args.days):
        day = work / "posts" / f"n={args.rows_per_day}" / f"dt=2026-11-{d + 1:02d}"
        if not (day / "posts.parquet").exists():
            write_posts(
                day / "posts.parquet", args.rows_per_day, seed=100 + d, image_size=(500, 400), row_group_size=100
            )
        days.append(day)
    score = ScoreConfig(
        device="cpu", precision="int8", batch_size=args.batch_size, workers=args.workers, intra_op_threads=args.threads
    )
    runs = work / f"runs-{int(time.time())}"

    if not args.skip_backfill:
        logger.info("first head, %d days x %d posts, keeping the embeddings", args.days, args.rows_per_day)
        first = score_days(days, runs / "lake", head1, JobConfig(score=score, keep_embeddings=True))
        logger.info("second head, full rescoring (every row through the encoders)")
        full = score_days(days, runs / "full", head2, JobConfig(score=score, embedding_reuse=False))
        logger.info("second head, head-only rescoring from the kept embeddings")
        head_only = score_days(days, runs / "lake", head2, JobConfig(score=score))
        assert all(d["source"] == "embeddings" and d["encoder_sessions"] == 0 for d in head_only["days"]), head_only
        assert all(d["source"] == "posts" for d in full["days"])
        agreement = compare(head_only["days"], full["days"])
        tol = tolerance(head2, first["days"])
        kept_bytes = sum(d["embeddings"]["bytes"] for d in first["days"])
        report["backfill"] = {
            "days": args.days,
            "rows_per_day": args.rows_per_day,
            "first_head_keep_rows_per_s": first["rows_per_s"],
            "full_rows_per_s": full["rows_per_s"],
            "head_only_rows_per_s": head_only["rows_per_s"],
            "ratio": round(head_only["rows_per_s"] / full["rows_per_s"], 1),
            "cpu_seconds": {
                "keep": first["cpu_seconds"],
                "full": full["cpu_seconds"],
                "head_only": head_only["cpu_seconds"],
            },
            "cpu_ratio": round(full["cpu_seconds"] / head_only["cpu_seconds"], 1),
            "seconds": {"keep": first["seconds"], "full": full["seconds"], "head_only": head_only["seconds"]},
            "kept_bytes_per_post": round(kept_bytes / first["rows"], 1),
            "float16_tolerance": tol,
            **agreement,
        }

    logger.info("repeated images: %d posts, %.0f%% repeats", args.repeat_rows, 100 * args.repeat_share)
    rep = work / "posts" / f"repeats-{args.repeat_rows}-{args.repeat_share}" / "dt=2026-12-01"
    if not (rep / "posts.parquet").exists():
        write_repeats(rep / "posts.parquet", args.repeat_rows, args.repeat_share, seed=7)
    # Alternated, several times, the fastest of each kept: a busy machine's noise is larger than the effect.
    tries: dict[bool, list[dict]] = {False: [], True: []}
    for k in range(args.repeat_runs):
        for reuse in (False, True):
            out = runs / f"repeats-{k}-{'reuse' if reuse else 'no-reuse'}"
            tries[reuse].append(score_days([rep], out, head1, JobConfig(score=score, embedding_reuse=reuse)))
    without = max(tries[False], key=lambda r: r["rows_per_s"])
    with_reuse = max(tries[True], key=lambda r: r["rows_per_s"])

    def encoder_seconds(result: dict) -> float:
        return round(result["days"][0]["timings"]["stages"]["encode_image"], 2)

    report["repeats"] = {
        "rows": args.repeat_rows,
        "repeat_share": args.repeat_share,
        "images": with_reuse["days"][0]["images"],
        "runs_each": args.repeat_runs,
        "without_reuse_rows_per_s": without["rows_per_s"],
        "with_reuse_rows_per_s": with_reuse["rows_per_s"],
        "speedup": round(with_reuse["rows_per_s"] / without["rows_per_s"], 2),
        "cpu_seconds": {
            "without": [r["cpu_seconds"] for r in tries[False]],
            "with": [r["cpu_seconds"] for r in tries[True]],
        },
        "cpu_speedup": round(
            min(r["cpu_seconds"] for r in tries[False]) / min(r["cpu_seconds"] for r in tries[True]), 2
        ),
        "all_rows_per_s": {
            "without": [r["rows_per_s"] for r in tries[False]],
            "with": [r["rows_per_s"] for r in tries[True]],
        },
        "image_encoder_seconds": {"without": encoder_seconds(without), "with": encoder_seconds(with_reuse)},
        **compare(with_reuse["days"], without["days"]),
    }
    report["machine_after"] = cpu_info()
    (work / ("report-repeats.json" if args.skip_backfill else "report.json")).write_text(json.dumps(report, indent=2))

    r = report["repeats"]
    if not args.skip_backfill:
        print_backfill(report["backfill"])
    print()
    print(
        f"| {r['rows']} posts, {100 * r['repeat_share']:.0f}% repeated images, fastest of {r['runs_each']} | rows/s |"
    )
    print("|---|---|")
    print(f"| every image encoded (--no-embedding-reuse) | {r['without_reuse_rows_per_s']:,.1f} |")
    print(f"| each distinct image once | {r['with_reuse_rows_per_s']:,.1f} |")
    print(f"| **speed-up** | **{r['speedup']}x** |")
    print(
        f"| CPU seconds, every image / each distinct once (least of {r['runs_each']}) | {min(r['cpu_seconds']['without'])} / {min(r['cpu_seconds']['with'])} |"
    )
    print(f"| **speed-up in CPU time** | **{r['cpu_speedup']}x** |")
    print()
    print(
        f"images {r['images']}; image encoder seconds {r['image_encoder_seconds']}; all runs (rows/s) "
        f"{r['all_rows_per_s']}; statuses and errors equal = {r['statuses_and_errors_equal']}, "
        f"max |dp| = {r['max_prob_diff']:.2e} (int8: each batch quantized with its own scale)"
    )
    print("machine before:", json.dumps(report["machine_before"]))
    print("machine after: ", cpu_flags())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
