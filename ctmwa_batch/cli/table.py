"""Maintain a scores table: compaction of small files, snapshot expiry / vacuum, orphan files and old markers.

    ctmwa-batch table maintain --format iceberg --table lake.scores --catalog lake --older-than-hours 168
    ctmwa-batch table maintain --format delta --table s3://lake/scores

Each compaction is one table commit per partition (readers see the partition whole before and after); orphans are
the data files of killed attempts and of expired snapshots, removed only when older than --older-than-hours, so a
run in flight keeps its files. Run it from Airflow as a task of its own (docs/tables.md, "Maintenance").
"""

from __future__ import annotations

import argparse
import json

from ctmwa_batch.errors import CtmwaError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch table` arguments."""
    from ctmwa_batch.io.tables import MaintainConfig

    d = MaintainConfig("iceberg", "")
    sub = parser.add_subparsers(dest="table_command", required=True)
    maintain = sub.add_parser("maintain", help="compact, expire / vacuum, remove orphans", description=__doc__)
    maintain.add_argument("--format", required=True, choices=("delta", "iceberg"), help="the table's format")
    maintain.add_argument(
        "--table", required=True, help="Delta: the table's location; Iceberg: namespace.table in --catalog"
    )
    maintain.add_argument(
        "--catalog", default=None, metavar="NAME", help="Iceberg catalog (.pyiceberg.yaml, PYICEBERG_CATALOG__NAME__*)"
    )
    maintain.add_argument(
        "--staging", default=None, metavar="LOCATION", help="the scoring runs' --staging, where their markers are"
    )
    maintain.add_argument(
        "--older-than-hours",
        type=float,
        default=d.older_than_hours,
        help=f"snapshots / versions, orphan files and markers older than this go (default {d.older_than_hours:g})",
    )
    maintain.add_argument(
        "--compact-min-files",
        type=int,
        default=d.compact_min_files,
        help=f"rewrite a partition as one file from this many files on (default {d.compact_min_files})",
    )
    maintain.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")


def run(args: argparse.Namespace) -> int:
    """Run the table subcommand."""
    from ctmwa_batch.io.tables import MaintainConfig, maintain

    if args.compact_min_files < 2 or args.older_than_hours < 0:
        raise CtmwaError("--compact-min-files must be at least 2 and --older-than-hours not negative")
    config = MaintainConfig(
        format=args.format,
        table=args.table,
        catalog=args.catalog,
        staging=args.staging,
        older_than_hours=args.older_than_hours,
        compact_min_files=args.compact_min_files,
        dry_run=args.dry_run,
    )
    print(json.dumps(maintain(config), indent=2))
    return 0
