"""Benchmark `embed` against the obvious transformers pipeline on the same posts (not a test).

Measures, on generated posts (photo-like JPEGs of ~40-60 KB, short texts):
  1. preprocessing alone (decode + resize + crop to uint8), one process and a process pool over all cores;
  2. `embed` end to end (Parquet in, Parquet out) on the tiny random CLIP and on a full-size ViT-B/32-shaped CLIP
     with random weights, against CLIPProcessor (CLIPImageProcessorPil + tokenizer) + CLIPModel fp32, batch 64.

usage: python -m bench.bench_embed [--posts 256] [--work-dir /tmp/ctmwa-bench] [--skip-full]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import logging
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fixtures are not installed

from ctmwa_batch.model.bundle import load_bundle  # noqa: E402
from ctmwa_batch.model.preprocess import ImageSpec, decode_images  # noqa: E402
from ctmwa_batch.scoring.embed import embed_posts  # noqa: E402
from fixtures import images as fixture_images  # noqa: E402

WORDS = (
    "i love this so much great day at the beach with friends terrible service never again what a view happy sad".split()
)


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs."""

    posts: int = 256  # number of generated posts
    work_dir: Path = Path("/tmp/ctmwa-bench")  # models, bundles and Parquet files (kept between runs)
    transformers_batch: int = 64  # batch size of the transformers baseline
    embed_batch: int = 64  # batch size of `embed`
    skip_full: bool = False  # skip the full-size ViT-B/32 part (export takes a few minutes on 2 cores)
    repeats: int = 2  # each figure is the best of this many runs (the machine may be shared)


def photo_jpeg(seed: int, w: int = 640, h: int = 480) -> bytes:
    """A photo-like JPEG (fixtures.images, blurred), ~40-60 KB at 640x480, quality 85."""
    return fixture_images.photo_jpeg(w, h, seed, quality=85, blur=1)


def make_posts(path: Path, n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "post_id": [f"p{i:05d}" for i in range(n)],
            "text": [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))) for _ in range(n)],
            "image": pa.array([photo_jpeg(i) for i in range(n)], pa.binary()),
        }
    )
    pq.write_table(table, path)
    return table


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def best_of(repeats: int, fn, *args, **kwargs) -> float:
    """Fewest seconds over `repeats` runs: other load on a shared machine only ever slows a run down."""
    return min(timed(fn, *args, **kwargs)[0] for _ in range(repeats))


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def bench_preprocess(images: list[bytes], spec: ImageSpec, workers: int, repeats: int) -> float:
    """Images/s of decode + resize + crop; the pool is started and warmed before the clock starts."""
    if workers <= 1:
        decode_images(images[:8], spec)
        return len(images) / best_of(repeats, decode_images, images, spec)
    chunk = 16

    def run_pool(pool: cf.ProcessPoolExecutor) -> None:
        futures = [pool.submit(decode_images, images[i : i + chunk], spec) for i in range(0, len(images), chunk)]
        for f in futures:
            f.result()

    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(decode_images, [images[:4]] * workers, [spec] * workers))
        return len(images) / best_of(repeats, run_pool, pool)


def transformers_pipeline(clip_dir: Path, posts: Path, out: Path, batch: int) -> int:
    """The obvious way: PIL decode, CLIPProcessor, CLIPModel fp32 (both towers), batch 64, write Parquet."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(clip_dir),
        tokenizer=AutoTokenizer.from_pretrained(clip_dir),
    )
    rows = 0
    with pq.ParquetWriter(
        str(out),
        pa.schema(
            [("post_id", pa.string()), ("text_emb", pa.list_(pa.float32())), ("image_emb", pa.list_(pa.float32()))]
        ),
    ) as writer:
        for record_batch in pq.ParquetFile(posts).iter_batches(batch_size=batch):
            texts = record_batch.column("text").to_pylist()
            pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in record_batch.column("image").to_pylist()]
            inputs = processor(text=texts, images=pil, return_tensors="pt", padding=True, truncation=True)
            with torch.no_grad():
                image = torch.nn.functional.normalize(
                    model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1
                )
                text = torch.nn.functional.normalize(
                    model.get_text_features(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).pooler_output,
                    dim=-1,
                )
            writer.write_table(
                pa.table(
                    {
                        "post_id": record_batch.column("post_id"),
                        "text_emb": list(text.numpy()),
                        "image_emb": list(image.numpy()),
                    }
                )
            )
            rows += record_batch.num_rows
    return rows


def compare_outputs(a: Path, b: Path) -> float:
    """Largest |difference| between the image embeddings of two runs (same posts, same order)."""
    x = np.array(pq.read_table(a, columns=["image_emb"]).column(0).to_pylist(), dtype=np.float32)
    y = np.array(pq.read_table(b, columns=["image_emb"]).column(0).to_pylist(), dtype=np.float32)
    return float(np.abs(x - y).max())


def bench_model(name: str, clip_dir: Path, bundle_dir: Path, posts: Path, config: BenchConfig, n: int) -> None:
    work = config.work_dir
    slug = "".join(c if c.isalnum() else "_" for c in name)
    embed_posts(bundle_dir, posts, work / f"warm-{slug}.parquet", batch_size=config.embed_batch, device="cpu")
    results = {}
    for workers in (0, os.cpu_count() or 1):
        seconds = best_of(
            config.repeats,
            embed_posts,
            bundle_dir,
            posts,
            work / f"embed-{slug}-{workers}.parquet",
            batch_size=config.embed_batch,
            device="cpu",
            workers=workers,
        )
        results[workers] = n / seconds
        print(f"{name}: embed end to end, decode workers {workers}: {results[workers]:8.1f} posts/s", flush=True)
    seconds = best_of(
        config.repeats, transformers_pipeline, clip_dir, posts, work / f"hf-{slug}.parquet", config.transformers_batch
    )
    baseline = n / seconds
    print(
        f"{name}: transformers pipeline (CLIPProcessor + CLIPModel fp32, batch {config.transformers_batch}): {baseline:8.1f} posts/s",
        flush=True,
    )
    best = max(results.values())
    print(f"{name}: ratio embed (best) / transformers = {best / baseline:.2f}x", flush=True)
    diff = compare_outputs(work / f"embed-{slug}-0.parquet", work / f"hf-{slug}.parquet")
    print(f"{name}: max |image_emb difference| embed vs transformers = {diff:.2e} (JPEG draft on)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print each figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=BenchConfig.posts)
    parser.add_argument("--work-dir", type=Path, default=BenchConfig.work_dir)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    args = parser.parse_args(argv)
    config = BenchConfig(posts=args.posts, work_dir=args.work_dir, skip_full=args.skip_full, repeats=args.repeats)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime
    import torch

    from ctmwa_export.assemble import export_encoders
    from ctmwa_export.encoders import EncoderExportConfig
    from fixtures.clip import build_random_clip_vit_b32, build_tiny_clip

    work = config.work_dir
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, "
        f"onnxruntime {onnxruntime.__version__} ({onnxruntime.get_available_providers()[0] if 'CUDAExecutionProvider' in onnxruntime.get_available_providers() else 'CPUExecutionProvider'}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {load()}",
        flush=True,
    )
    posts = work / f"posts-{config.posts}.parquet"
    table = make_posts(posts, config.posts) if not posts.exists() else pq.read_table(posts)
    images = table.column("image").to_pylist()
    sizes = np.array([len(b) for b in images]) / 1024
    print(
        f"posts: {config.posts}, JPEG 640x480, {sizes.mean():.1f} KB mean ({sizes.min():.1f}-{sizes.max():.1f} KB), texts 5-30 words",
        flush=True,
    )

    for size in (224, 32):
        for draft in (True, False):
            spec = ImageSpec(size=size, resize_shortest_edge=size, jpeg_draft=draft)
            one = bench_preprocess(images, spec, 1, config.repeats + 1)
            pool = bench_preprocess(images, spec, os.cpu_count() or 1, config.repeats + 1)
            print(
                f"preprocess to {size}x{size} uint8 (JPEG draft {'on ' if draft else 'off'}): 1 process {one:7.1f} img/s, "
                f"{os.cpu_count()}-process pool {pool:7.1f} img/s",
                flush=True,
            )

    tiny_dir, tiny_bundle = work / "tiny_clip", work / "tiny_bundle"
    if not tiny_bundle.exists():
        build_tiny_clip(tiny_dir)
        export_encoders(EncoderExportConfig(source=str(tiny_dir), out_dir=tiny_bundle))
    bench_model("tiny CLIP", tiny_dir, tiny_bundle, posts, config, config.posts)

    if not config.skip_full:
        full_dir, full_bundle = work / "vit_b32_random", work / "vit_b32_bundle"
        if not full_bundle.exists():
            seconds, _ = timed(build_random_clip_vit_b32, full_dir)
            print(f"ViT-B/32 random: built in {seconds:.0f}s", flush=True)
            seconds, _ = timed(export_encoders, EncoderExportConfig(source=str(full_dir), out_dir=full_bundle))
            print(f"ViT-B/32 random: exported + validated + parity-checked in {seconds:.0f}s", flush=True)
        print(
            f"ViT-B/32 random: bundle {load_bundle(full_bundle).model_version}, "
            f"{sum(p.stat().st_size for p in full_bundle.iterdir()) / 1e6:.0f} MB",
            flush=True,
        )
        bench_model("ViT-B/32 random", full_dir, full_bundle, posts, config, config.posts)
    print(f"done; {load()} (other processes on this machine count in it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
