"""Benchmark: end-to-end posts/s and peak memory of `ctmwa-batch score`, against the obvious transformers pipeline.

Not a test. On one machine, in one run, on the same generated posts (photo-like JPEGs of ~500x400 px and 40-60 KB,
short texts):

1. ceilings of each stage alone: image decoding (the decode pool), the image encoder, the text encoder, the head,
   for each encoder precision (`--precision`, default fp32 and int8 on CPU, fp32 and fp16 with `--device cuda`),
   with the execution provider each session got;
2. `ctmwa_batch.scoring.job.score_partition` end to end (Parquet in, Parquet out, committed), per precision;
3. the obvious pipeline: PIL + CLIPImageProcessorPil + tokenizer + CLIPModel fp32 (batch 64, one process) + the torch
   CTMWA head, results written to Parquet;
4. peak RSS of the scorer (and of its decoding workers) at two partition sizes, to show memory does not grow with
   the partition. This part uses the tiny encoders and small JPEGs so that 100k rows fit in a minute on a laptop
   CPU; the pipeline and its queues are the same whatever the model.

The models are full-size ViT-B/32 CLIP encoders with random weights (fixtures.clip.build_random_clip_vit_b32, exported
by ctmwa_export.encoders) and a random CTMWA head (ctmwa_export.head): speed does not depend on the weights. Everything is built
offline and cached under --work.

    python bench/bench_score.py [--posts 256] [--memory-rows 10000 100000] [--workers N] [--work DIR]
                                [--device cpu|cuda] [--precision fp32 --precision int8 ...]

It ends with one Markdown table (posts/s, stage ceilings, providers, ratio to the transformers pipeline) and the CPU's
flags (avx512_vnni, amx_int8, ...) that decide how fast int8 runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_info  # noqa: E402

from ctmwa_batch.config import ScoreConfig  # noqa: E402
from fixtures import images as fixture_images  # noqa: E402

logger = logging.getLogger("bench_score")

LABELS = ["positive", "neutral", "negative"]
PRECISIONS = ("fp32", "fp16", "int8")  # every encoder variant, so one bundle serves every row of the table
WORDS = "good great happy love sad bad angry day night beach cat dog coffee friends trip rain sun city party".split()


# --------------------------------------------------------------------------------------------------- data


def photo_jpeg(rng: np.random.Generator, w: int = 500, h: int = 400, quality: int | None = None) -> bytes:
    """A photo-like JPEG (fixtures.images) with coarser texture and milder noise (40-60 KB at 500x400)."""
    quality = int(rng.integers(90, 93)) if quality is None else quality
    return fixture_images.photo_jpeg(
        w, h, rng, quality=quality, block=16, texture=18.0, noise=float(rng.uniform(5.4, 7.0))
    )


def short_text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(4, 14))))


def write_posts(
    path: Path,
    n: int,
    seed: int,
    image_size: tuple[int, int],
    distinct_images: int | None = None,
    row_group_size: int = 10_000,
) -> dict:
    """A posts partition of n rows; `distinct_images` JPEGs are cycled when set (for big partitions)."""
    rng = np.random.default_rng(seed)
    k = n if distinct_images is None else min(n, distinct_images)
    jpegs = [photo_jpeg(rng, *image_size) for _ in range(k)]
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("post_id", pa.string()), ("text", pa.string()), ("image", pa.binary())])
    # No dictionary on the image column: every row's bytes are in the file, as in a real partition (cycled JPEGs
    # would otherwise be stored once).
    with pq.ParquetWriter(path, schema, use_dictionary=["post_id", "text"]) as writer:
        for start in range(0, n, row_group_size):
            stop = min(n, start + row_group_size)
            writer.write_table(
                pa.table(
                    {
                        "post_id": [f"p{i}" for i in range(start, stop)],
                        "text": [short_text(rng) for _ in range(start, stop)],
                        "image": [jpegs[i % k] for i in range(start, stop)],
                    },
                    schema=schema,
                )
            )
    sizes = [len(j) for j in jpegs]
    return {
        "rows": n,
        "jpeg_kb_mean": round(np.mean(sizes) / 1024, 1),
        "jpeg_kb_min": round(min(sizes) / 1024, 1),
        "jpeg_kb_max": round(max(sizes) / 1024, 1),
        "file_mb": round(path.stat().st_size / 2**20, 1),
    }


# --------------------------------------------------------------------------------------------------- models


def build_bundle(work: Path, size: str) -> tuple[Path, Path]:
    """(full bundle dir, CLIP source dir) for `size` in {"vit-b32", "tiny"}, built once and cached under work."""
    import torch

    from ctmwa_batch.model.bundle import MANIFEST
    from ctmwa_export.assemble import export_encoders, export_head
    from ctmwa_export.encoders import EncoderExportConfig
    from ctmwa_training.model import CTMWA, CTMWAConfig, save_checkpoint
    from fixtures.clip import build_random_clip_vit_b32, build_tiny_clip

    clip_dir, enc_dir, ckpt_dir, full_dir = (work / f"{size}-{p}" for p in ("clip", "encoders", "ctmwa", "bundle"))
    if (full_dir / MANIFEST).exists():
        return full_dir, clip_dir
    t0 = time.perf_counter()
    if not (clip_dir / "config.json").exists():
        (build_random_clip_vit_b32 if size == "vit-b32" else build_tiny_clip)(clip_dir, seed=0)
    if not (enc_dir / MANIFEST).exists():
        export_encoders(
            EncoderExportConfig(source=str(clip_dir), out_dir=enc_dir, overwrite=True, precisions=PRECISIONS)
        )
    dim = 512 if size == "vit-b32" else 16
    config = CTMWAConfig(
        text_dim=dim, image_dim=dim, embed_dim=128 if size == "vit-b32" else 8, num_classes=len(LABELS)
    )
    torch.manual_seed(0)
    save_checkpoint(CTMWA(config).eval(), config, ckpt_dir, {"labels": LABELS})
    export_head(ckpt_dir, enc_dir, full_dir)
    logger.info("built the %s bundle in %.0fs", size, time.perf_counter() - t0)
    return full_dir, clip_dir


# --------------------------------------------------------------------------------------------------- measurements


def ceilings(bundle_dir: Path, posts: Path, workers: int, threads: int, device: str, precision: str) -> dict:
    """Each stage alone, on the same posts: decode (the decode pool), image encoder, text encoder, head."""
    from ctmwa_batch.model.bundle import load_bundle
    from ctmwa_batch.model.posts import ImageDecoder
    from ctmwa_batch.scoring.scorer import ScoreConfig, Scorer

    table = pq.read_table(posts)
    items, texts = table.column("image").to_pylist(), table.column("text").to_pylist()
    n = len(items)
    scorer = Scorer(
        load_bundle(bundle_dir),
        ScoreConfig(device=device, intra_op_threads=threads, workers=workers, precision=precision),
    )
    out: dict = {}
    with ImageDecoder(scorer.image_spec, workers) as decoder:
        decoder.result(decoder.submit(items[:8]))  # start the pool's processes
        t0 = time.perf_counter()
        handles = [decoder.submit(items[i : i + 64]) for i in range(0, n, 64)]
        decoded = [decoder.result(h) for h in handles]
        out["decode_images_per_s"] = n / (time.perf_counter() - t0)
    pixels = np.concatenate([d[0] for d in decoded])
    ok = np.concatenate([d[1] for d in decoded])
    enc = scorer.encoders
    enc.encode_pixels(pixels[:8], ok[:8])  # warm-up
    t0 = time.perf_counter()
    image_emb = np.concatenate([enc.encode_pixels(pixels[i : i + 64], ok[i : i + 64]) for i in range(0, n, 64)])
    out["image_encoder_per_s"] = n / (time.perf_counter() - t0)
    tokens = [enc.tokenizer.encode(texts[i : i + 64]) for i in range(0, n, 64)]
    enc.encode_tokens(tokens[0])  # warm-up
    t0 = time.perf_counter()
    text_emb = np.concatenate([enc.encode_tokens(t).emb for t in tokens])
    out["text_encoder_per_s"] = n / (time.perf_counter() - t0)
    feeds = {"text_emb": text_emb, "image_emb": image_emb, "has_text": np.ones(n, bool), "has_image": np.ones(n, bool)}
    scorer.head.run({k: v[:8] for k, v in feeds.items()})
    t0 = time.perf_counter()
    for _ in range(5):
        scorer.head.run(feeds)
    out["head_per_s"] = 5 * n / (time.perf_counter() - t0)
    # The model alone (encoders + head, no decoding): what inference could do if decoding were free.
    out["model_alone_posts_per_s"] = 1.0 / (
        1.0 / out["image_encoder_per_s"] + 1.0 / out["text_encoder_per_s"] + 1.0 / out["head_per_s"]
    )
    out = {k: round(v, 1) for k, v in out.items()}
    out["precision"] = scorer.precision
    out["providers"] = {
        "image_encoder": enc.image_session.provider,
        "text_encoder": enc.text_session.provider,
        "head": scorer.head.provider,
    }
    return out


def ours(
    bundle_dir: Path,
    posts: Path,
    out_root: Path,
    workers: int,
    threads: int,
    batch_size: int,
    device: str,
    precision: str,
) -> dict:
    """ctmwa-batch score end to end; posts/s over the shard (read -> decode -> encode -> head -> write -> commit)."""
    import shutil

    from ctmwa_batch.scoring.job import ScoreConfig, score_partition

    shutil.rmtree(out_root, ignore_errors=True)
    t0 = time.perf_counter()
    summary = score_partition(
        posts,
        out_root,
        bundle_dir,
        ScoreConfig(
            device=device, workers=workers, intra_op_threads=threads, batch_size=batch_size, precision=precision
        ),
    )
    wall = time.perf_counter() - t0
    rows = summary["rows"]["output"]
    return {
        "posts_per_s": summary["timings"]["rows_per_second"],
        "posts_per_s_incl_startup": round(rows / wall, 1),
        "startup_s": round(wall - summary["timings"]["wall_seconds"], 1),
        "stages_s": summary["timings"]["stages"],
        "by_status": summary["rows"]["by_status"],
        "runtime": summary.get("runtime", {}),
        "scores": str(summary["output_dir"]),
    }


def baseline(clip_dir: Path, bundle_dir: Path, posts: Path, out_path: Path, threads: int, device: str) -> dict:
    """The obvious pipeline: CLIPImageProcessorPil + tokenizer + CLIPModel fp32, batch 64, one process, torch head
    (on the GPU too when --device cuda)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    from ctmwa_training.model import load_checkpoint

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    model = CLIPModel.from_pretrained(clip_dir).eval().to(dev)
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    head, _, _ = load_checkpoint(bundle_dir.parent / bundle_dir.name.replace("-bundle", "-ctmwa"))
    head = head.to(dev)
    table = pq.read_table(posts)
    items, texts, ids = (
        table.column("image").to_pylist(),
        table.column("text").to_pylist(),
        table.column("post_id").to_pylist(),
    )
    rows = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(items), 64):
            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in items[i : i + 64]]
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(dev)
            tok = tokenizer(texts[i : i + 64], padding=True, truncation=True, return_tensors="pt").to(dev)
            image_emb = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
            text_emb = F.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
            out = head(text_emb, image_emb)
            probs = out.logits_m.softmax(-1).cpu().numpy()
            for j, p in enumerate(probs):
                rows.append(
                    {
                        "post_id": ids[i + j],
                        "sentiment": LABELS[int(p.argmax())],
                        "confidence": float(p.max()),
                        "text_weight": float(out.text_weight[j]),
                        "image_weight": float(out.image_weight[j]),
                    }
                )
    pq.write_table(pa.Table.from_pylist(rows), out_path)
    return {"posts_per_s": round(len(items) / (time.perf_counter() - t0), 1), "device": str(dev)}


def agreement(scores_dir: str, baseline_path: Path) -> float:
    """Share of posts whose sentiment equals the transformers pipeline's (random weights: near-ties are common)."""
    ours_t = pq.read_table(scores_dir, columns=["post_id", "sentiment"]).to_pylist()
    theirs = {r["post_id"]: r["sentiment"] for r in pq.read_table(baseline_path).to_pylist()}
    return round(float(np.mean([theirs.get(r["post_id"]) == r["sentiment"] for r in ours_t])), 4)


def gpu_name() -> str | None:
    """The CUDA device's name, where torch sees one."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def print_table(report: dict) -> None:
    """One Markdown table, ready to paste into the README."""
    base = (report.get("baseline") or {}).get("posts_per_s")
    print()
    print(
        f"machine: {report['machine']['cpu']['model']}, {report['machine']['cpu']['cpus']} CPUs, flags {' '.join(report['machine']['cpu']['flags'])}, "
        f"GPU {report['machine']['gpu'] or 'none'}, load {report['machine']['cpu']['load_1min']} at start, {report['machine']['load_end']} at end"
    )
    print(f"posts: {json.dumps(report['posts'], default=float)}")
    print()
    print(
        "| run | precision | providers (image / text / head) | decode img/s | image enc /s | text enc /s | head rows/s | models alone /s | end to end posts/s | vs transformers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in report["runs"]:
        c, o = run["ceilings"], run["ours"]
        prov = " / ".join(p.replace("ExecutionProvider", "") for p in c["providers"].values())
        ratio = f"{o['posts_per_s'] / base:.2f}x" if base else "-"
        print(
            f"| ctmwa-batch score | {c['precision']} | {prov} | {c['decode_images_per_s']:,} | {c['image_encoder_per_s']:,} | {c['text_encoder_per_s']:,} | "
            f"{c['head_per_s']:,} | {c['model_alone_posts_per_s']:,} | **{o['posts_per_s']:,}** ({o['posts_per_s_incl_startup']:,} with start-up) | {ratio} |"
        )
    if base:
        b = report["baseline"]
        print(
            f"| transformers pipeline (CLIPImageProcessorPil + CLIPModel fp32, batch 64, torch head) | fp32 | torch {b['device']} | | | | | | **{base:,}** | 1.00x |"
        )
    for run in report["runs"]:
        if "agreement_with_transformers" in run:
            print(
                f"sentiment agreement with the transformers pipeline, {run['ceilings']['precision']}: {run['agreement_with_transformers']:.2%}"
            )


def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def memory_run(bundle_dir: Path, posts: Path, out_root: Path, workers: int, batch_size: int) -> dict:
    """Score one partition in this (fresh) process; peak RSS of this process (VmHWM) and of this process plus its
    decoding workers together (sampled every 50 ms). getrusage would not do: ru_maxrss survives fork + exec."""
    import shutil
    import threading

    from ctmwa_batch.scoring.job import ScoreConfig, score_partition

    shutil.rmtree(out_root, ignore_errors=True)
    peak_total = [0]
    done = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not done.is_set():
            total = _status_kb(me, "VmRSS") + sum(_status_kb(c, "VmRSS") for c in _children(me))
            peak_total[0] = max(peak_total[0], total)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    summary = score_partition(
        posts, out_root, bundle_dir, ScoreConfig(device="cpu", workers=workers, batch_size=batch_size)
    )
    done.set()
    sampler.join()
    return {
        "rows": summary["rows"]["output"],
        "seconds": round(time.perf_counter() - t0, 1),
        "posts_per_s": summary["timings"]["rows_per_second"],
        "peak_rss_mb_scorer": round(_status_kb("self", "VmHWM") / 1024, 1),
        "peak_rss_mb_scorer_plus_decode_workers": round(peak_total[0] / 1024, 1),
    }


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=256, help="posts in the throughput partition (full-size models)")
    parser.add_argument(
        "--memory-rows",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        help="partition sizes for the memory part (none: skip it)",
    )
    parser.add_argument(
        "--workers", type=int, default=ScoreConfig().decode_workers, help="decoding processes (default: the scorer's)"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0 = all cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where ctmwa-batch and the transformers pipeline run"
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=["fp32", "fp16", "int8"],
        help="encoder variants to run, repeatable (default: fp32 and int8 on cpu, fp32 and fp16 on cuda)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctmwa_bench_work"), help="cache for models and data")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--_memory-run", nargs=3, metavar=("BUNDLE", "POSTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    if args._memory_run:
        bundle, posts, out = (Path(p) for p in args._memory_run)
        print(json.dumps(memory_run(bundle, posts, out, args.workers, args.batch_size)))
        return 0

    precisions = args.precision or (["fp32", "int8"] if args.device == "cpu" else ["fp32", "fp16"])
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    threads = args.threads or os.cpu_count() or 1
    report: dict = {
        "machine": {
            "cpu": cpu_info(),
            "gpu": gpu_name(),
            "device": args.device,
            "decode_workers": args.workers,
            "threads": threads,
            "batch_size": args.batch_size,
        }
    }
    print("machine:", json.dumps(report["machine"]), flush=True)
    t_all = time.perf_counter()

    bundle, clip_dir = build_bundle(work, "vit-b32")
    posts = work / "posts" / f"n={args.posts}" / "posts.parquet"
    if not posts.exists():
        report["posts"] = write_posts(posts, args.posts, seed=1, image_size=(500, 400))
    else:
        report["posts"] = {
            "rows": pq.ParquetFile(posts).metadata.num_rows,
            "file_mb": round(posts.stat().st_size / 2**20, 1),
        }
    print("posts:", json.dumps(report["posts"]), flush=True)

    if not args.skip_baseline:
        report["baseline"] = baseline(clip_dir, bundle, posts, work / "baseline.parquet", threads, args.device)
        print(
            "transformers pipeline (CLIPImageProcessorPil + CLIPModel fp32, batch 64, + torch head):",
            json.dumps(report["baseline"]),
            flush=True,
        )
    report["runs"] = []
    for precision in precisions:
        run = {"ceilings": ceilings(bundle, posts, args.workers, threads, args.device, precision)}
        print(f"ceilings, {precision} (each stage alone, per second):", json.dumps(run["ceilings"]), flush=True)
        run["ours"] = ours(
            bundle, posts, work / f"scores-{precision}", args.workers, threads, args.batch_size, args.device, precision
        )
        print(f"ctmwa-batch score, {precision}:", json.dumps(run["ours"]), flush=True)
        if "baseline" in report:
            run["agreement_with_transformers"] = agreement(run["ours"]["scores"], work / "baseline.parquet")
            ratio = run["ours"]["posts_per_s"] / report["baseline"]["posts_per_s"]
            print(f"ratio ctmwa-batch ({precision}) / transformers: {ratio:.2f}x", flush=True)
        report["runs"].append(run)
    report["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    print_table(report)

    if args.memory_rows:
        tiny, _ = build_bundle(work, "tiny")
        memory = []
        for rows in args.memory_rows:
            mem_posts = work / "posts" / f"small-{rows}" / "posts.parquet"
            if not mem_posts.exists():
                write_posts(mem_posts, rows, seed=2, image_size=(128, 96), distinct_images=256)
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_memory-run",
                    str(tiny),
                    str(mem_posts),
                    str(work / f"scores-{rows}"),
                    "--workers",
                    str(args.workers),
                    "--batch-size",
                    "256",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            memory.append(
                json.loads(result.stdout.strip().splitlines()[-1])
                | {"input_mb": round(mem_posts.stat().st_size / 2**20, 1)}
            )
            print("memory (tiny encoders, 128x96 JPEGs, batch 256):", json.dumps(memory[-1]), flush=True)
        report["memory"] = memory
    print(f"total bench time {time.perf_counter() - t_all:.0f}s", flush=True)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
