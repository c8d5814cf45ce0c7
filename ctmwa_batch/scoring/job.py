"""Score posts partitions: streaming, restartable, idempotent; one output row per input row.

`ctmwa-batch score` (ctmwa_batch.cli.score) plans the partition into shards (whole row groups), scores each shard
into a part, and commits (`_SUCCESS.json` last); see ctmwa_batch.io.partitions for the layout. The Airflow DAGs call
the same four functions, passing small JSON only:

    plan(input_path, output_root, bundle_dir, ...) -> plan dict (+ "skip": already committed)
    score_shard(plan, shard_index, bundle_dir, config) -> small stats (a finished shard is skipped: retries are safe)
    commit(plan) -> summary of _SUCCESS.json (rows by status and sentiment, throughput, timings)
    score_partition(input_path, output_root, bundle_dir, config) -> the same summary (plan + every shard + commit)

Inside one process the plan is a `Planned` object; it becomes a dict only where it crosses to another task. A shard
streams through ctmwa_batch.scoring.pipeline (reader, decoders, encoders + head, writer), so memory stays flat whatever the
partition's size.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ctmwa_batch import schema
from ctmwa_batch.config import JobConfig, ScoreConfig
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io import partitions, tables
from ctmwa_batch.io.fetch import Fetcher, fetch_config, local_input_root
from ctmwa_batch.io.partitions import PartitionNotReady, PartitionPlan
from ctmwa_batch.model.bundle import Bundle, load_bundle
from ctmwa_batch.model.posts import ImageDecoder
from ctmwa_batch.model.precision import resolve_for_bundle
from ctmwa_batch.model.runtime import check_device, expects_cuda
from ctmwa_batch.progress import Progress
from ctmwa_batch.scoring import embeddings, pipeline
from ctmwa_batch.scoring.inputs import InputColumns, PlanMismatch, check_input, check_unchanged, planned_columns
from ctmwa_batch.scoring.scorer import Scorer, require_scoring_bundle, value_counts

logger = logging.getLogger(__name__)

__all__ = ["JobConfig", "ScoreConfig", "PlanMismatch", "Planned", "plan", "score_shard", "commit", "score_partition"]

AnyConfig = JobConfig | ScoreConfig | dict[str, Any] | None


# --------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Planned:
    """A partition's plan with its checked input columns, and whether it is already committed (nothing to do)."""

    partition: PartitionPlan  # shards, fingerprint, output dir; its `columns` hold `columns` in JSON form
    columns: InputColumns  # id / passthrough fields and image kind, read once from the footers at plan time
    skip: bool  # committed for this input and model already (and not overwrite)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form an Airflow task hands on through XCom."""
        return {**self.partition.to_dict(), "skip": self.skip}


def _plan(
    input_path: str | Path, output_root: str | Path, bundle: Bundle, config: JobConfig, shards: list[int] | None = None
) -> tuple[Planned, list[str]]:
    """Plan (one footer read per input file), check everything that can be checked (columns, bundle, shard indices),
    then partitions.begin. Returns the plan and the bundle's labels."""
    files, source, partition = _list_input(str(input_path), config)
    columns = check_input(files, config.score, str(input_path))
    labels = require_scoring_bundle(bundle)
    target = None
    if config.format != "parquet":  # the table is created or evolved, or refused, before anything is written
        partition = partition if partition is not None else partitions.partition_of(str(input_path))
        scores = schema.scores_schema(labels, columns.id_field, columns.passthrough_fields)
        target = tables.prepare(
            config.format, str(output_root), config.catalog, bundle.model_version, partition, scores, config.staging
        )
    p = partitions.plan_partition(
        source["location"] if source else str(input_path),
        target.staging_root if target else str(output_root),
        bundle.model_version,
        config.max_rows_per_shard,
        partition=partition,
        files=files,
    )
    p = dataclasses.replace(p, columns=columns.to_dict(), table=target.to_dict() if target else None, source=source)
    for k in shards or []:
        if not 0 <= k < len(p.shards):
            raise CtmwaError(
                f"shard {k} out of range: partition {p.partition} has {len(p.shards)} shard(s); pass --shard 0..{len(p.shards) - 1}"
            )
    # kept embeddings live beside Parquet scores of Parquet posts (JobConfig refuses keeping them elsewhere)
    parquet_only = target is None and source is None
    identity, mtimes = _encoders_identity(str(input_path), files, bundle, config) if parquet_only else (None, {})
    if config.keep_embeddings and identity is not None:
        p = dataclasses.replace(p, keep_embeddings=embeddings.keep_spec(identity, mtimes))
    skip = not (tables.begin if target else partitions.begin)(p, overwrite=config.overwrite)
    if not skip and config.embedding_reuse and identity is not None:
        found = embeddings.find(str(output_root), p, identity, mtimes)
        p = dataclasses.replace(p, embeddings_source=found)
        if found is not None:
            logger.info(
                "%s: scoring from the embeddings kept at %s (model %s, committed %s): the head only, no encoder",
                p.partition,
                found["location"],
                found["model_version"],
                found["committed_at"],
            )
    logger.info(
        "planned %s: %d rows in %d shard(s), plan %s%s",
        p.partition,
        p.num_rows,
        len(p.shards),
        p.plan_id,
        " (already committed: skip)" if skip else "",
    )
    return Planned(p, columns, skip), labels


def _encoders_identity(
    input_path: str, files: list[partitions.InputFile], bundle: Bundle, config: JobConfig
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The identity of the encoders this job would run (precision resolved for its device, no session created) and
    the input files' times, when embeddings are kept or reused; (None, {}) otherwise or without encoders."""
    if not (config.keep_embeddings or config.embedding_reuse) or not bundle.has_encoders:
        return None, {}
    precision = resolve_for_bundle(config.score.precision, bundle, on_gpu=expects_cuda(config.score.device))
    return embeddings.identity(bundle, precision), embeddings.input_mtimes(input_path, files)


# --------------------------------------------------------------------------------------------------- shards


class _Session:
    """What scoring several shards in one process shares: the scorer's sessions, the decoding pool and the image
    fetcher (its stores and connections)."""

    def __init__(
        self,
        bundle: Bundle,
        labels: list[str],
        config: JobConfig,
        head_only: bool = False,
        image_root: str | None = None,
    ):
        self.config = config
        cache = embeddings.ImageCache() if config.embedding_reuse and not head_only else None
        self.scorer = Scorer(bundle, config.score, labels=labels, encoders=not head_only, image_cache=cache)
        workers = 0 if head_only else config.score.decode_workers  # nothing to decode: no pool
        self.decoder = ImageDecoder(self.scorer.image_spec, workers)
        self.fetcher = Fetcher(fetch_config(config.score, image_root))  # image_root: a local input's folder
        self.batches = itertools.count()  # numbers the batches of every shard this session scores (the cache's clock)
        logger.info(
            "scoring with model %s on %s, %s, %d decoding process(es), batch %d",
            self.scorer.model_version,
            self.scorer.provider,
            "the head only (kept embeddings)" if head_only else f"{self.scorer.precision} encoders",
            workers,
            config.score.batch_size,
        )

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fetcher.close()
        self.decoder.close()


@dataclass
class _ScoreCounts:
    """Rows by status and by sentiment, counted in the writer thread."""

    statuses: dict[str, int]
    sentiments: dict[str, int]

    def add(self, batch: Any) -> None:
        for counts, column in ((self.statuses, "status"), (self.sentiments, "sentiment")):
            for value, n in value_counts(batch, column).items():
                counts[value] = counts.get(value, 0) + n


def _list_input(input_path: str, config: JobConfig) -> tuple[list[partitions.InputFile], dict | None, str | None]:
    """The input's Parquet files; for a table input also its pinned snapshot / version and the partition's name."""
    if config.input_format == "parquet":
        return partitions.list_input(input_path), None, None
    return tables.source_files(input_path, config.input_format, config.catalog, config.partition or "")


@dataclass
class _KeptPrepared:
    """A batch of a head-only shard: the posts' id and passthrough columns, and their kept embeddings."""

    ids: pa.Array
    passthrough: list[pa.Array]
    kept: pa.Table  # the kept rows of these posts (ctmwa_batch.schema.kept_embeddings_schema)
    images: list[bytes | None] = dataclasses.field(default_factory=list)  # nothing to decode
    locations: list[str | None] | None = None
    read_errors: list[str | None] = dataclasses.field(default_factory=list)


def _head_only_steps(
    scorer: Scorer, planned: Planned, shard_index: int, out_schema: pa.Schema, keep: bool
) -> tuple[pipeline.Steps, list[str]]:
    """The steps of a shard scored from kept embeddings, and the posts columns it reads (id and passthrough only):
    each posts batch takes as many kept rows, checked to be the same rows (position and id), and the head runs."""
    p, source = planned.partition, planned.partition.embeddings_source
    assert source is not None  # internal: only head-only plans get here
    embeddings.check_source(source)
    start = p.shard_row_start(shard_index)
    cursor = embeddings.RowCursor(embeddings.read_rows(source, start, start + p.shards[shard_index].num_rows))
    dims = scorer.bundle.dims
    text_dim, image_dim = int(dims[schema.TEXT_EMB]), int(dims[schema.IMAGE_EMB])
    next_row = [start]

    def prepare(batch: pa.RecordBatch, base: Any) -> _KeptPrepared:
        ids = batch.column(planned.columns.id_field.name)
        kept = cursor.take(batch.num_rows)
        embeddings.check_rows(kept, ids, next_row[0], source["location"])
        next_row[0] += batch.num_rows
        return _KeptPrepared(ids, [batch.column(f.name) for f in planned.columns.passthrough_fields], kept)

    def infer(prepared: _KeptPrepared, decoded: pipeline.Decoded) -> pa.RecordBatch:
        kept = prepared.kept
        text_ok = kept.column(schema.HAS_TEXT).to_numpy()
        image_ok = kept.column(schema.HAS_IMAGE).to_numpy()
        text_emb = embeddings.float32_matrix(kept.column(schema.TEXT_EMB), text_dim)
        image_emb = embeddings.float32_matrix(kept.column(schema.IMAGE_EMB), image_dim)
        errors = kept.column(schema.IMAGE_ERROR).to_pylist()
        batch = scorer.score_embeddings(
            prepared.ids, prepared.passthrough, text_emb, image_emb, text_ok, image_ok, errors, out_schema
        )
        if not keep:
            return batch
        columns = [*batch.columns, *embeddings.kept_columns(text_emb, image_emb, text_ok, image_ok, errors)]
        return pa.RecordBatch.from_arrays(columns, names=[*batch.schema.names, *embeddings.KEPT_COLUMNS])

    read = [planned.columns.id_field.name, *(f.name for f in planned.columns.passthrough_fields)]
    return pipeline.Steps(prepare=prepare, infer=infer), list(dict.fromkeys(read))


def _score_one(session: _Session, planned: Planned, shard_index: int, progress: Progress | None) -> dict[str, Any]:
    """Score one shard into its part (staged and marked by partitions.part_writer, or a table's data file by
    tables.part_writer); returns the marker stats."""
    config, scorer, p, columns = session.config, session.scorer, planned.partition, planned.columns
    shard = p.shards[shard_index]
    out_schema = scorer.output_schema(columns.id_field, columns.passthrough_fields)
    target = tables.target_of(p) if p.table else None
    file_schema = tables.file_schema(target, out_schema) if target else out_schema
    keep = p.keep_embeddings is not None
    kept_schema = _kept_schema(scorer, columns) if keep else None
    steps, read_columns = _shard_steps(session, planned, shard_index, out_schema, keep)
    counts = _ScoreCounts({}, {})
    model_before = dict(scorer.timings)
    cache = scorer.image_cache
    images_before = cache.counts() if cache is not None else None
    if cache is not None:
        cache.begin(forget=not embeddings.carries_across_shards(scorer.precision, scorer.provider))
    batches = pipeline.shard_batches(p.input_path, shard, read_columns, config.score.batch_size)
    writer = (
        tables.part_writer(p, shard_index, file_schema)
        if target
        else partitions.part_writer(p, shard_index, out_schema, kept_schema)
    )
    with writer as part:
        sink: pipeline.Sink = pipeline.ParquetSink(part.writer, file_schema, config.row_group_rows, counts.add)
        if target:
            sink = tables.TableBatches(sink, file_schema, target.values)
        if keep:
            assert part.embeddings is not None and kept_schema is not None  # internal: part_writer opened it
            sink = embeddings.KeepingSink(
                sink, out_schema, part.embeddings, kept_schema, p.shard_row_start(shard_index), config.row_group_rows
            )
        stats = pipeline.run(
            batches,
            steps,
            session.decoder,
            sink,
            queue_batches=config.queue_batches,
            name=f"score-{shard_index}",
            progress=progress,
            fetcher=session.fetcher,
            fetch_batches=_fetch_batches(config),
        )
        if stats.rows != shard.num_rows:
            raise CtmwaError(
                f"shard {shard_index} of {p.partition}: wrote {stats.rows} rows for {shard.num_rows} input rows; "
                "nothing was published (this is a bug: please report it)"
            )
        timings = stats.seconds.as_dict() | {stage: s - model_before[stage] for stage, s in scorer.timings.items()}
        part.stats.update(_shard_stats(scorer, p, stats.rows, counts, timings))
        if cache is not None and images_before is not None:
            part.stats["images"] = {k: v - images_before[k] for k, v in cache.counts().items()}
        if stats.fetch is not None:
            part.stats["fetch"] = stats.fetch
        marker = dict(part.stats)
    total = stats.seconds.total
    logger.info(
        "shard %d of %s: %d rows in %.1fs (%.0f rows/s) %s",
        shard_index,
        p.partition,
        stats.rows,
        total,
        stats.rows / total if total else 0.0,
        counts.statuses,
    )
    return marker


def _kept_schema(scorer: Scorer, columns: InputColumns) -> pa.Schema:
    """The kept embeddings' schema for this input's id column and the bundle's dimensions."""
    dims = scorer.bundle.dims
    return schema.kept_embeddings_schema(columns.id_field, int(dims[schema.TEXT_EMB]), int(dims[schema.IMAGE_EMB]))


def _shard_steps(
    session: _Session, planned: Planned, shard_index: int, out_schema: pa.Schema, keep: bool
) -> tuple[pipeline.Steps, list[str]]:
    """The pipeline's steps for one shard and the input columns they read: the head alone over kept embeddings, or
    the encoders over the posts (a repeated image's embedding claimed from the session's cache)."""
    scorer, columns = session.scorer, planned.columns
    if planned.partition.embeddings_source is not None:
        return _head_only_steps(scorer, planned, shard_index, out_schema, keep)

    def prepare(batch: pa.RecordBatch, base: Any) -> Any:
        prepared = scorer.prepare(batch, base, image_paths=columns.image_paths)
        prepared.batch = next(session.batches)
        return prepared

    steps = pipeline.Steps(
        prepare=prepare,
        infer=lambda prepared, decoded: scorer.infer(prepared, decoded, out_schema, keep=keep),
        claim=scorer.claim if scorer.image_cache is not None else None,
    )
    return steps, scorer.input_columns()


def _shard_stats(
    scorer: Scorer, p: PartitionPlan, rows: int, counts: _ScoreCounts, timings: dict[str, float]
) -> dict[str, Any]:
    """A shard marker's figures: rows, counts, timings, and what ran (provider, precision, source, encoder sessions)."""
    source = p.embeddings_source
    return {
        "output_rows": rows,
        "status_counts": dict(sorted(counts.statuses.items())),
        "sentiment_counts": dict(sorted(counts.sentiments.items())),
        "timings": {k: round(v, 3) for k, v in sorted(timings.items())},
        "provider": scorer.provider,
        "precision": scorer.precision if source is None else source["encoders"]["precision"],
        "source": "embeddings" if source is not None else "posts",
        "encoder_sessions": scorer.encoder_sessions,
    }


def _fetch_batches(config: JobConfig) -> int:
    """Batches whose images may be in flight at once: at least two batches' worth of the fetch concurrency, so every
    request slot stays busy while the fetch thread hands a finished batch on, and never fewer than the queues hold."""
    return max(config.queue_batches, math.ceil(2 * config.score.fetch_concurrency / config.score.batch_size))


def _shard_summary(marker: dict[str, Any], skipped: bool) -> dict[str, Any]:
    total = (marker.get("timings") or {}).get("total")
    rows = marker.get("output_rows", 0)
    return {
        "shard": marker["shard"],
        "skipped": skipped,
        "rows": rows,
        "status_counts": marker.get("status_counts", {}),
        "seconds": total,
        "rows_per_s": round(rows / total, 1) if total else None,
    }


def _score_shards(
    planned: Planned,
    indices: list[int],
    bundle: Bundle,
    labels: list[str],
    config: JobConfig,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Score the shards of `indices` that are not finished yet (one scorer and one decoding pool for all)."""
    p = planned.partition
    results, todo = [], []
    for k in indices:
        marker = partitions.shard_done(p, k)
        if marker is None:
            todo.append(k)
            continue
        results.append(_shard_summary(marker, skipped=True))
        if progress is not None:
            progress.update(marker.get("output_rows", 0))
    if todo:
        head_only = planned.partition.embeddings_source is not None
        with _Session(bundle, labels, config, head_only, local_input_root(p.input_path)) as session:
            for k in todo:
                marker = partitions.shard_done(p, k)  # a concurrent worker may have finished it meanwhile
                if marker is not None:
                    results.append(_shard_summary(marker, skipped=True))
                    continue
                check_unchanged(p, p.shards[k])
                results.append(_shard_summary({"shard": k, **_score_one(session, planned, k, progress)}, skipped=False))
    return sorted(results, key=lambda r: r["shard"])


# --------------------------------------------------------------------------------------------------- job API


def plan(
    input_path: str | Path,
    output_root: str | Path,
    bundle_dir: str | Path,
    max_rows_per_shard: int | None = None,
    overwrite: bool | None = None,
    config: AnyConfig = None,
) -> dict[str, Any]:
    """Plan the scoring of one partition and get its output ready (partitions.begin).

    Returns the plan as a dict (JSON, small) plus "skip": True when the partition is already committed for this
    input and model (and not `overwrite`). Checks every input file's columns and the bundle first, so a bad schema or
    an encoders-only bundle fails before any output. `max_rows_per_shard` / `overwrite` override the config's.
    """
    config = JobConfig.coerce(config)
    overrides: dict[str, Any] = {"max_rows_per_shard": max_rows_per_shard, "overwrite": overwrite}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    planned, _ = _plan(input_path, output_root, load_bundle(bundle_dir), config)
    return planned.to_dict()


def score_shard(
    plan: dict[str, Any], shard_index: int, bundle_dir: str | Path, config: AnyConfig = None
) -> dict[str, Any]:
    """Score one shard of a plan (the dict from `plan`); a shard already finished is skipped, so a retry is always
    safe. Returns small stats: shard, skipped, rows, status_counts, seconds, rows_per_s."""
    config = JobConfig.coerce(config)
    p = PartitionPlan.from_dict(plan)
    if not 0 <= shard_index < len(p.shards):
        raise ValueError(f"shard_index {shard_index} out of range: the plan has {len(p.shards)} shard(s)")
    if plan.get("skip"):
        return {
            "shard": shard_index,
            "skipped": True,
            "rows": p.shards[shard_index].num_rows,
            "reason": "partition already committed",
        }
    marker = partitions.shard_done(p, shard_index)
    if marker is not None:  # a retry of a finished shard: no bundle to load, nothing to do
        return _shard_summary(marker, skipped=True)
    planned = Planned(p, planned_columns(p, config.score), skip=False)
    bundle = load_bundle(bundle_dir)
    labels = require_scoring_bundle(bundle)
    if bundle.model_version != p.model_version:
        raise PlanMismatch(
            f"bundle {str(bundle_dir)!r} is model {bundle.model_version} but the plan was made for {p.model_version}; "
            "plan the partition again with this bundle"
        )
    progress = Progress(
        p.shards[shard_index].num_rows, config.progress_interval_s, label=f"shard {shard_index}: scored"
    )
    return _score_shards(planned, [shard_index], bundle, labels, config, progress)[0]


def summary(success: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """A partition's _SUCCESS.json without the file listing and the per-shard timings (small enough for XCom)."""
    return {
        "output_dir": output_dir,
        "partition": success["partition"],
        "model_version": success["model_version"],
        "plan_id": success["plan_id"],
        "input": {k: v for k, v in success["input"].items() if k != "files"},
        "rows": success["rows"],
        "timings": {k: v for k, v in success["timings"].items() if k != "shards"},
        "parts": len(success["parts"]),
        "runtime": success.get("runtime", {}),  # encoder precision and execution provider the shards ran with
        "source": success.get("source", "posts"),  # "embeddings": the head alone on kept embeddings
        **{key: success[key] for key in ("embeddings_source", "images", "encoder_sessions") if key in success},
        **(
            {"embeddings": {k: success["embeddings"][k] for k in ("location", "rows", "bytes", "bytes_per_row")}}
            if success.get("embeddings")
            else {}
        ),
        **(
            {"fetch": success["fetch"]} if success.get("fetch") else {}
        ),  # images by reference: requests, bytes, retries, latency
        "committed_at": success["committed_at"],
        **({"table": success["table"]} if success.get("table") else {}),  # format, table, partition, snapshot/version
        **({"data_dir": success["data_dir"]} if success.get("data_dir") else {}),  # a table's files, apart from markers
    }


def fetch_totals(markers: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The image fetch stats of a partition from its shards' markers: counts summed; latency percentiles are the
    worst shard's (percentiles do not add up); None when no shard fetched images by reference."""
    fetches = [m["fetch"] for m in markers if m and m.get("fetch")]
    if not fetches:
        return None
    total: dict[str, Any] = {}
    for f in fetches:
        for key, value in f.items():
            if key.startswith("latency_"):
                known = [v for v in (total.get(key), value) if v is not None]
                total[key] = max(known) if known else None
            elif key == "concurrency":
                total[key] = value
            elif isinstance(value, (int, float)):
                total[key] = round(total.get(key, 0) + value, 3)
    return total


def _commit(p: PartitionPlan) -> dict[str, Any]:
    if p.table is not None:  # one table commit; idempotent (a no-op when the partition holds these files already)
        markers: list[Any] = [partitions.shard_done(p, s.index) for s in p.shards]
        fetch = fetch_totals(markers)
        return summary(tables.commit(p, {"fetch": fetch} if fetch else None), p.output_dir)
    existing = partitions.read_success(p.output_dir)
    if existing is not None and existing.get("plan_id") == p.plan_id and partitions.is_committed(p):
        return summary(existing, p.output_dir)
    markers = [m for m in (partitions.shard_done(p, s.index) for s in p.shards) if m is not None]
    fetch = fetch_totals(markers)
    extra: dict[str, Any] = {"fetch": fetch} if fetch else {}
    extra.update(_embeddings_totals(p, markers))
    return summary(partitions.commit(p, extra), p.output_dir)


def _embeddings_totals(p: PartitionPlan, markers: list[dict[str, Any]]) -> dict[str, Any]:
    """What _SUCCESS.json says of embeddings: the source the shards scored from, the embeddings kept (when asked),
    the distinct images and their reuse, and the encoder sessions the shards' scorers held (0: the head only)."""
    out: dict[str, Any] = {"source": "embeddings" if p.embeddings_source is not None else "posts"}
    if p.embeddings_source is not None:
        out["embeddings_source"] = {
            k: p.embeddings_source[k] for k in ("location", "model_version", "plan_id", "committed_at")
        }
    if p.keep_embeddings is not None and len(markers) == len(p.shards):
        out["embeddings"] = embeddings.record(p, markers)
    images = [m["images"] for m in markers if m.get("images")]
    if images:
        out["images"] = {k: sum(i.get(k, 0) for i in images) for k in ("images", "encoded", "reused")}
    out["encoder_sessions"] = sum(int(m.get("encoder_sessions", 0)) for m in markers)
    return out


def commit(plan: dict[str, Any]) -> dict[str, Any]:
    """Commit a planned partition (the dict from `plan`) once all its shards are scored; returns the summary of its
    `_SUCCESS.json`. Idempotent: a partition already committed by this plan returns its summary unchanged.
    PartitionNotReady names the shards still to score."""
    return _commit(PartitionPlan.from_dict(plan))


def score_partition(
    input_path: str | Path,
    output_root: str | Path,
    bundle_dir: str | Path,
    config: AnyConfig = None,
    *,
    shards: list[int] | None = None,
    interactive: bool = False,
) -> dict[str, Any]:
    """Plan, score every shard (or only `shards`), commit: what `ctmwa-batch score` runs. Returns the commit summary,
    or {"skipped": True, ...} when already committed, or {"committed": False, "waiting_for": [...]} when some shards
    (others' to score) are not finished yet."""
    config = JobConfig.coerce(config)
    t0 = time.perf_counter()
    check_device(config.score.device)  # a missing GPU fails before the output is touched
    bundle = load_bundle(bundle_dir)  # verified once (sha256 of every file), used for the plan and the shards
    planned, labels = _plan(input_path, output_root, bundle, config, shards)
    p = planned.partition
    if planned.skip:
        receipt = partitions.read_success(p.output_dir)
        return {"skipped": True, **(summary(receipt, p.output_dir) if receipt else _commit(p))}
    indices = list(range(len(p.shards))) if shards is None else shards
    progress = Progress(sum(p.shards[k].num_rows for k in indices), config.progress_interval_s, interactive)
    try:
        results = _score_shards(planned, indices, bundle, labels, config, progress)
    finally:
        progress.close()
    try:
        committed = _commit(p)
    except PartitionNotReady:
        waiting = [s.index for s in p.shards if partitions.shard_done(p, s.index) is None]
        logger.info(
            "scored shard(s) %s of %s; waiting for shard(s) %s before the commit", indices, p.partition, waiting
        )
        return {"committed": False, "output_dir": p.output_dir, "shards": results, "waiting_for": waiting}
    seconds = time.perf_counter() - t0
    scored = sum(r["rows"] for r in results if not r["skipped"])
    committed["run"] = {
        "seconds": round(seconds, 3),
        "rows_per_s": round(scored / seconds, 1) if seconds else None,
        "shards_scored": sum(not r["skipped"] for r in results),
        "shards_skipped": sum(r["skipped"] for r in results),
        "source": "embeddings" if p.embeddings_source is not None else "posts",
    }
    return committed
