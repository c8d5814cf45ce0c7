"""Turn a raw labelled dataset into training features through the scoring embed path.

Writes the posts Parquet (labels, split, query set) and a summary beside --out, then embeds the posts with the
encoders of --bundle. See the README, "Training on the real datasets".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctmwa_batch.errors import CtmwaError, DatasetError
from ctmwa_batch.schema import (
    FEATURES_REQUIRED,
    FEATURES_SCHEMA,
    HAS_IMAGE,
    HAS_TEXT,
    LABEL,
    POST_ID,
    SPLITS,
    T_LABEL,
    TRAINING_POSTS_SCHEMA,
    V_LABEL,
)
from ctmwa_training.datasets import GenericConfig, ReadOptions, ReadReport, SplitConfig, assign
from ctmwa_training.datasets.common import IMAGE, TEXT, PostsSource
from ctmwa_training.datasets.generic import FORMATS, generic_source
from ctmwa_training.datasets.mvsa import mvsa_source
from ctmwa_training.datasets.tumemo import tumemo_source

logger = logging.getLogger(__name__)

DATASETS = ("mvsa-single", "mvsa-multiple", "tumemo", "generic")
PROGRESS_EVERY_S = 10.0

EmbedFn = Callable[..., object]


@dataclass(frozen=True)
class PrepareConfig:
    """One `prepare` run."""

    # Raw layout: mvsa-single | mvsa-multiple | tumemo | generic.
    dataset: str
    # The dataset folder (generic: the CSV/TSV/JSONL/Parquet file, or a folder of Parquet parts).
    root: str
    # Features Parquet to write; the posts Parquet and the summary JSON go beside it.
    out: str
    # Encoder bundle folder (ctmwa-export encoders); None only with posts_only.
    bundle: str | None = None
    # Stop after the posts Parquet (no encoders needed).
    posts_only: bool = False
    # Splits and query set.
    split: SplitConfig = field(default_factory=SplitConfig)
    # Text decoding and image checks while reading.
    read: ReadOptions = field(default_factory=ReadOptions)
    # Column names and classes of a generic table (ignored for the named datasets).
    generic: GenericConfig = field(default_factory=GenericConfig)
    # Posts per encoder batch.
    batch_size: int = 64
    # Encoder device, passed to the embed path: auto | cpu | cuda (cuda unavailable is an error, not a fallback).
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, not {self.dataset!r}")
        if self.bundle is None and not self.posts_only:
            raise ValueError("an encoder bundle is needed unless posts_only is set")


@dataclass(frozen=True)
class PreparePaths:
    """Files a prepare run writes."""

    features: Path
    posts: Path
    summary: Path

    @staticmethod
    def beside(out: str | Path) -> PreparePaths:
        """features.parquet -> features.posts.parquet and features.summary.json in the same folder."""
        out = Path(out)
        stem = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
        return PreparePaths(out, out.with_name(f"{stem}.posts.parquet"), out.with_name(f"{stem}.summary.json"))


def open_source(config: PrepareConfig, progress: Callable[[ReadReport], None] | None = None) -> PostsSource:
    """The streaming reader of the configured raw layout."""
    if config.dataset == "mvsa-single":
        return mvsa_source(config.root, annotators=1, options=config.read, progress=progress)
    if config.dataset == "mvsa-multiple":
        return mvsa_source(config.root, annotators=3, options=config.read, progress=progress)
    if config.dataset == "tumemo":
        return tumemo_source(config.root, options=config.read, progress=progress)
    return generic_source(config.root, config.generic, options=config.read, progress=progress)


def write_posts(config: PrepareConfig, posts_path: Path) -> dict:
    """Read the raw set, assign splits and the query set, write the posts Parquet; return the summary so far.

    Two passes keep memory to one batch of images: the posts stream to a temporary file while ids, labels and
    modality presence are collected; splits are drawn from those; a second pass adds split and query.
    """
    started = time.monotonic()
    progress = _Progress(started)
    source = open_source(config, progress)
    report = source.report
    tmp1 = posts_path.with_name(posts_path.name + ".read.tmp")
    tmp2 = posts_path.with_name(posts_path.name + ".tmp")
    ids: list[str] = []
    labels: list[int] = []
    query_ok: list[bool] = []
    posts_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pq.ParquetWriter(tmp1, source.schema) as writer:
            for batch in source.batches():
                writer.write_batch(batch)
                ids.extend(batch.column(POST_ID).to_pylist())
                labels.extend(batch.column(LABEL).to_pylist())
                has_both = pc.and_(batch.column(TEXT).is_valid(), batch.column(IMAGE).is_valid())
                if report.unimodal_labels:
                    has_both = pc.and_(
                        has_both, pc.and_(batch.column(T_LABEL).is_valid(), batch.column(V_LABEL).is_valid())
                    )
                query_ok.extend(has_both.to_pylist())
        if not ids:
            raise DatasetError(f"{config.root}: no usable posts (read {report.read}, dropped {report.dropped})")
        assignment = assign(ids, labels, query_ok, report.labels, config.split)
        schema = TRAINING_POSTS_SCHEMA.with_metadata(source.schema.metadata)
        row = 0
        with pq.ParquetWriter(tmp2, schema) as writer:
            for batch in pq.ParquetFile(tmp1).iter_batches(batch_size=config.read.batch_rows):
                n = batch.num_rows
                split = assignment.split[row : row + n]
                query = assignment.query[row : row + n]
                row += n
                keep = pa.array([s is not None for s in split])
                columns = [*batch.columns, pa.array([s or "" for s in split], pa.string()), pa.array(query, pa.bool_())]
                out = pa.RecordBatch.from_arrays(columns, schema=schema).filter(keep)
                if out.num_rows:
                    writer.write_batch(out)
        os.replace(tmp2, posts_path)
    finally:
        tmp1.unlink(missing_ok=True)
        tmp2.unlink(missing_ok=True)
    logger.info(
        "posts: %s (%d posts in %.1f s)",
        posts_path,
        sum(assignment.report.per_split.values()),
        time.monotonic() - started,
    )
    return {
        "dataset": config.dataset,
        "root": str(config.root),
        "labels": report.labels,
        "unimodal_labels": report.unimodal_labels,
        "read": report.to_dict(),
        "splits": assignment.report.to_dict(),
        "posts_path": str(posts_path),
        "read_seconds": round(time.monotonic() - started, 3),
    }


def finish_features(raw_features: Path, features_path: Path, posts_path: Path) -> dict:
    """Rewrite the embed output to the features contract (DESIGN.md section 5) with the label metadata.

    Keeps the features columns only (image bytes and texts stay in the posts file), in schema order, and carries
    `ctmwa.labels` / `ctmwa.unimodal_labels` from the posts file. Returns counts of missing modalities.
    """
    metadata = pq.read_schema(posts_path).metadata
    source = pq.ParquetFile(raw_features)
    names = source.schema_arrow.names
    missing = [c for c in FEATURES_REQUIRED if c not in names]
    if missing:
        raise DatasetError(
            f"{raw_features}: the embed output lacks column(s) {missing} (columns are {names}); "
            "the embed step must pass split, label, t_label, v_label and query through from the posts file"
        )
    fields = [f for f in FEATURES_SCHEMA if f.name in names]
    schema = pa.schema(fields, metadata=metadata)
    counts = {"posts": 0, "without_text": 0, "without_image": 0, "without_both": 0}
    tmp = features_path.with_name(features_path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in source.iter_batches(columns=schema.names):
            table = pa.Table.from_batches([batch])
            table = table.select(schema.names).cast(schema)
            counts["posts"] += table.num_rows
            has_text = _presence(table, HAS_TEXT, "text_emb")
            has_image = _presence(table, HAS_IMAGE, "image_emb")
            counts["without_text"] += sum(not t for t in has_text)
            counts["without_image"] += sum(not i for i in has_image)
            counts["without_both"] += sum(not t and not i for t, i in zip(has_text, has_image, strict=True))
            writer.write_table(table)
    os.replace(tmp, features_path)
    return counts


def _presence(table: pa.Table, flag: str, emb: str) -> list[bool]:
    if flag in table.column_names:
        return [bool(v) for v in table.column(flag).to_pylist()]
    return table.column(emb).is_valid().to_pylist()


def prepare(config: PrepareConfig, embed: EmbedFn | None = None) -> dict:
    """Run the whole preparation; return the summary (also written beside the output as JSON).

    `embed` defaults to `ctmwa_batch.scoring.embed.embed_posts`, the scoring embed path.
    """
    paths = PreparePaths.beside(config.out)
    summary = write_posts(config, paths.posts)
    if not config.posts_only:
        if embed is None:
            try:
                from ctmwa_batch.scoring.embed import embed_posts as embed
            except ImportError as e:
                raise CtmwaError(
                    f"the embed path (ctmwa_batch.scoring.embed) is not available: {e}; install ctmwa-batch with an ONNX "
                    "Runtime extra (cpu or gpu), or use --posts-only"
                ) from e
        started = time.monotonic()
        raw = paths.features.with_name(paths.features.name + ".embed-tmp.parquet")
        try:
            logger.info("embedding %s with the encoders in %s", paths.posts, config.bundle)
            stats = embed(
                config.bundle,
                str(paths.posts),
                str(raw),
                id_column=POST_ID,
                text_column=TEXT,
                image_column=IMAGE,
                batch_size=config.batch_size,
                device=config.device,
            )
            counts = finish_features(raw, paths.features, paths.posts)
        finally:
            raw.unlink(missing_ok=True)
        expected = sum(summary["splits"]["per_split"].values())
        if counts["posts"] != expected:
            raise DatasetError(
                f"{paths.features}: the embed step wrote {counts['posts']} rows for {expected} posts in {paths.posts}"
            )
        summary["features_path"] = str(paths.features)
        summary["missing_modalities"] = counts
        summary["embed_seconds"] = round(time.monotonic() - started, 3)
        if isinstance(stats, dict):
            summary["embed"] = stats
    paths.summary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["summary_path"] = str(paths.summary)
    return summary


class _Progress:
    """Logs posts read and posts/s every few seconds."""

    def __init__(self, started: float):
        self.started = started
        self.last = started

    def __call__(self, report: ReadReport) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            done = report.kept + report.dropped_total
            logger.info("read %d/%d posts (%.0f posts/s)", done, report.read, done / max(now - self.started, 1e-9))


def format_summary(summary: dict) -> str:
    """The summary as a few human-readable lines."""
    read = summary["read"]
    splits = summary["splits"]
    labels = summary["labels"]
    width = max(len(name) for name in labels)
    lines = [
        f"{summary['dataset']} from {summary['root']}: {read['read']} labelled, {read['kept']} kept, "
        f"{read['dropped_total']} dropped {read['dropped'] or ''}".rstrip(),
        f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in (*SPLITS, "all")),
    ]
    for name in labels:
        per = [splits["per_split_class"][s][name] for s in SPLITS]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{n:>6}" for n in (*per, sum(per))))
    lines.append(
        f"query set: {splits['query']} of {splits['per_split']['train']} training posts"
        + ("" if summary["unimodal_labels"] else " (no text/image labels: the query step uses the post label)")
    )
    lines.append(
        f"missing texts {read['missing_texts']}, empty texts {read['empty_texts']}, missing images "
        f"{read['missing_images']}, unreadable images {read['unreadable_images']}, replaced characters "
        f"{read['replaced_chars']} in {read['texts_with_replacements']} texts"
    )
    if splits["not_in_split_file"] or splits["unknown_in_split_file"]:
        lines.append(
            f"split file: {splits['not_in_split_file']} posts not listed (left out), "
            f"{splits['unknown_in_split_file']} listed ids not among the posts"
        )
    if "missing_modalities" in summary:
        m = summary["missing_modalities"]
        lines.append(
            f"features: {m['posts']} rows, {m['without_text']} without text, {m['without_image']} without image"
        )
        lines.append(f"wrote {summary['features_path']}")
    lines.append(f"wrote {summary['posts_path']} and {summary['summary_path']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ctmwa-train prepare`."""
    parser.add_argument("dataset", choices=DATASETS, help="raw layout of --root")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--root", required=True, help="dataset folder (generic: the table file)")
    parser.add_argument("--bundle", help="encoder bundle folder from `ctmwa-export encoders`")
    parser.add_argument("--out", required=True, help="features Parquet to write (posts and summary go beside it)")
    parser.add_argument("--posts-only", action="store_true", help="write the posts Parquet and summary only")
    parser.add_argument("--seed", type=int, default=SplitConfig.seed, help="seed of splits and query set")
    parser.add_argument(
        "--query-fraction",
        type=float,
        default=SplitConfig.query_fraction,
        help="query set size as a fraction of the training split",
    )
    parser.add_argument("--split-file", help="CSV/TSV of 'id,split' to use instead of seeded splits")
    parser.add_argument("--split-ratios", default="8:1:1", help="train:valid:test proportions")
    parser.add_argument("--no-stratify", action="store_true", help="plain (not per-class) seeded splits")
    parser.add_argument("--batch-size", type=int, default=PrepareConfig.batch_size, help="posts per encoder batch")
    parser.add_argument("--device", default=PrepareConfig.device, help="encoder device: cpu, cuda or auto")
    parser.add_argument("--workers", type=int, default=ReadOptions.workers, help="threads reading files")
    parser.add_argument(
        "--check-images",
        choices=("decode", "open", "none"),
        default=ReadOptions.check_images,
        help="how images are checked while reading",
    )
    parser.add_argument(
        "--text-fallback-encoding",
        default=ReadOptions.text_fallback_encoding,
        help="encoding for bytes that are not UTF-8 ('none': U+FFFD)",
    )
    generic = parser.add_argument_group("generic tables")
    generic.add_argument("--format", choices=FORMATS, help="table format (default: from the extension)")
    generic.add_argument("--id-column", default=GenericConfig.id_column, help="post id column")
    generic.add_argument("--text-column", default=GenericConfig.text_column, help="text column; '' for none")
    generic.add_argument(
        "--image-column", default=GenericConfig.image_column, help="image column, bytes or paths; '' for none"
    )
    generic.add_argument("--image-root", help="folder image paths are relative to (default: the table's folder)")
    generic.add_argument(
        "--label-column", default=GenericConfig.label_column, help="post label column (names or indices)"
    )
    generic.add_argument("--t-label-column", help="text label column (default: t_label if present)")
    generic.add_argument("--v-label-column", help="image label column (default: v_label if present)")
    generic.add_argument("--labels", help="class names in class order, comma-separated (default: inferred, sorted)")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Build the PrepareConfig of parsed arguments (ValueError on inconsistent ones)."""
    try:
        ratios = tuple(int(x) for x in args.split_ratios.split(":"))
    except ValueError as e:
        raise ValueError(f"--split-ratios must look like 8:1:1, not {args.split_ratios!r}") from e
    fallback = None if (args.text_fallback_encoding or "").lower() in ("", "none") else args.text_fallback_encoding
    return PrepareConfig(
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        bundle=args.bundle,
        posts_only=args.posts_only,
        split=SplitConfig(
            seed=args.seed,
            ratios=ratios,
            stratify=not args.no_stratify,
            query_fraction=args.query_fraction,
            split_file=args.split_file,
        ),
        read=ReadOptions(text_fallback_encoding=fallback, check_images=args.check_images, workers=args.workers),
        generic=GenericConfig(
            format=args.format,
            id_column=args.id_column,
            text_column=args.text_column or None,
            image_column=args.image_column or None,
            image_root=args.image_root,
            label_column=args.label_column,
            t_label_column=args.t_label_column,
            v_label_column=args.v_label_column,
            labels=tuple(x.strip() for x in args.labels.split(",")) if args.labels else None,
        ),
        batch_size=args.batch_size,
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    """Run `prepare` from parsed arguments; print the summary (a CtmwaError is the caller's to report)."""
    try:
        config = config_from_args(args)
    except (ValueError, LookupError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    summary = prepare(config)
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ctmwa_training.prepare ...` (the same as `ctmwa-train prepare ...`)."""
    from ctmwa_training.cli import run_command

    return run_command("ctmwa-train prepare", sys.modules[__name__], sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
