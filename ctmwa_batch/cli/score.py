"""Score a posts partition into a committed scores partition (one output row per input row).

The partition is planned into shards of whole row groups, each shard is scored into a part, and `_SUCCESS.json` is
written last; a rerun skips what is committed or finished. See the README ("From posts to scores") for the layout.
"""

from __future__ import annotations

import argparse
import json
import sys

from ctmwa_batch import imagepolicy
from ctmwa_batch.config import DEVICES, INPUT_FORMATS, OUTPUT_FORMATS, PRECISIONS, JobConfig, ScoreConfig
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.scoring.job import score_partition


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch score` arguments."""
    _add_run_arguments(parser)
    _add_column_arguments(parser)
    _add_table_arguments(parser)
    _add_embedding_arguments(parser)
    imagepolicy.add_arguments(parser)  # --max-image-bytes, --allow-image-host, --image-root


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What to score with, from where to where, on what, in how many shards."""
    d, j = ScoreConfig(), JobConfig()
    parser.add_argument(
        "--bundle",
        required=True,
        help="model bundle: a folder, or a published version in an object store (s3://.../models/VERSION, copied once into a local cache)",
    )
    parser.add_argument(
        "--input", required=True, help="posts partition: a Parquet file, a folder, a hive path, or a URI (s3://...)"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="scores root (parts go to ROOT/model_version=V/PARTITION/); with --format delta the table's location, "
        "with --format iceberg the table namespace.table",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default=d.device, help=f"{' | '.join(DEVICES)} (default {d.device})"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per batch (default {d.batch_size})")
    parser.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="image-decoding processes (default: one per core but one, none on two cores or fewer; 0: the reader thread)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=d.intra_op_threads,
        help="ONNX Runtime threads per session (default 0: all cores)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rescore even if committed for this input and model")
    parser.add_argument(
        "--max-rows-per-shard",
        type=int,
        default=j.max_rows_per_shard,
        help=f"rows per shard / part (default {j.max_rows_per_shard})",
    )
    parser.add_argument(
        "--shard",
        type=int,
        action="append",
        metavar="K",
        help="score only shard K (repeatable); the last shard to finish commits",
    )


def _add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """The input's columns, images by URI, and the encoders' precision."""
    d = ScoreConfig()
    parser.add_argument("--id-column", default=d.id_column, help=f"id column (default {d.id_column!r})")
    parser.add_argument(
        "--text-column", default=d.text_column, help=f"text column (default {d.text_column!r}; '' for none)"
    )
    parser.add_argument(
        "--image-column",
        default=d.image_column,
        help=f"image bytes or path column (default {d.image_column!r}; '' for none)",
    )
    parser.add_argument(
        "--passthrough", nargs="*", default=[], metavar="COLUMN", help="input columns to copy to the output"
    )
    parser.add_argument("--scored-at", default=None, help="ISO-8601 time stamped on every row (default: now)")
    parser.add_argument(
        "--fetch-concurrency",
        type=int,
        default=d.fetch_concurrency,
        help=f"image GETs in flight when the image column holds URIs (default {d.fetch_concurrency})",
    )
    parser.add_argument(
        "--max-fetch-failures",
        type=int,
        default=d.max_fetch_failures,
        metavar="N",
        help="rows per shard that may be committed as image_missing when the image store fails past its retries "
        "(default 0: the shard fails, nothing is committed, a retry scores it later)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="encoder variant (default auto: int8 on CPU, fp16 on CUDA where the bundle has them, else fp32; logged)",
    )


def _add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Tables (ctmwa_batch.io.tables): scores into an Iceberg or Delta table, posts from one."""
    j = JobConfig()
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default=j.format,
        help="parquet (folders with _SUCCESS.json; default) | delta (--output is the table's location) | iceberg "
        "(--output is namespace.table in --catalog); one table commit per partition",
    )
    parser.add_argument(
        "--catalog",
        default=j.catalog,
        metavar="NAME",
        help="Iceberg catalog, configured as pyiceberg does (.pyiceberg.yaml, PYICEBERG_CATALOG__NAME__*); "
        "default: pyiceberg's default catalog",
    )
    parser.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default=j.input_format,
        help="parquet (default) | delta (--input is a location) | iceberg (--input is namespace.table in --catalog)",
    )
    parser.add_argument(
        "--partition",
        default=j.partition,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="table input: the partition to score (pinned to the table's current snapshot/version); also the "
        "output partition's name",
    )
    parser.add_argument(
        "--staging",
        default=j.staging,
        metavar="LOCATION",
        help="table output: where shard markers and commit receipts go (a path or URI; needed where the table's store "
        "takes only data files, e.g. S3 Tables buckets); default: beside the data files",
    )


def _add_embedding_arguments(parser: argparse.ArgumentParser) -> None:
    """Kept embeddings and head-only rescoring (ctmwa_batch.scoring.embeddings, docs/backfill.md)."""
    parser.add_argument(
        "--keep-embeddings",
        action="store_true",
        help="also keep the encoders' outputs (float16, ~2 KB a post at 512-d) beside the scores, committed with "
        "them, so a later head with the same encoders rescores this partition without the encoders",
    )
    parser.add_argument(
        "--no-embedding-reuse",
        dest="embedding_reuse",
        action="store_false",
        help="run the encoders on every row: neither score from kept embeddings nor reuse a repeated image's embedding",
    )


def config_from(args: argparse.Namespace) -> JobConfig:
    """The job config the arguments ask for; CtmwaError naming the bad value."""
    try:
        score = ScoreConfig(
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            intra_op_threads=args.threads,
            id_column=args.id_column,
            text_column=args.text_column or None,
            image_column=args.image_column or None,
            passthrough=tuple(args.passthrough),
            scored_at=args.scored_at,
            precision=args.precision,
            fetch_concurrency=args.fetch_concurrency,
            max_fetch_failures=args.max_fetch_failures,
            **imagepolicy.from_args(args),
        )
        return JobConfig(
            score=score,
            overwrite=args.overwrite,
            max_rows_per_shard=args.max_rows_per_shard,
            format=args.format,
            catalog=args.catalog,
            input_format=args.input_format,
            partition=args.partition,
            staging=args.staging,
            keep_embeddings=args.keep_embeddings,
            embedding_reuse=args.embedding_reuse,
        )
    except ValueError as e:
        raise CtmwaError(str(e)) from e


def run(args: argparse.Namespace) -> int:
    """Build the config from the arguments and score the partition."""
    result = score_partition(
        args.input, args.output, args.bundle, config_from(args), shards=args.shard, interactive=sys.stderr.isatty()
    )
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ctmwa_batch.cli.score ...`: the same as `ctmwa-batch score ...`."""
    from ctmwa_batch.cli.main import main as cli_main

    return cli_main(["score", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
