"""Score posts partitions: streaming, restartable, idempotent; one output row per input row.

`ctmwa-batch score --bundle DIR --input PARTITION --output ROOT` plans the partition into shards (whole row groups),
scores each shard into a part, and commits (`_SUCCESS.json` last); see ctmwa_batch.partitions for the layout.
The Airflow DAGs call the same four functions, passing small JSON only:

    plan(input_path, output_root, bundle_dir, ...) -> plan dict (+ "skip": already committed)
    score_shard(plan, shard_index, bundle_dir, config) -> small stats (a finished shard is skipped: retries are safe)
    commit(plan) -> summary of _SUCCESS.json (rows by status and sentiment, throughput, timings)
    score_partition(input_path, output_root, bundle_dir, config) -> the same summary (plan + every shard + commit)

A shard streams through four overlapped stages joined by bounded queues, so memory stays flat whatever the
partition's size:

    reader thread    Parquet row groups of the shard, only the needed columns, in record batches; tokenization;
                     image bytes handed to the decoding pool (submit returns at once)
    decoding pool    worker processes: bytes -> uint8 pixels (never float32: a quarter of the bytes between processes)
    main thread      waits for a batch's pixels, runs the encoders and the head, builds the scores batch
    writer thread    scores batches -> Parquet row groups of a fixed size, status / sentiment counts, progress
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch import partitions, schema
from ctmwa_batch.bundle import Bundle, load_bundle
from ctmwa_batch.errors import CtmwaError, InputSchemaError
from ctmwa_batch.partitions import PartitionNotReady, PartitionPlan, Shard, open_filesystem
from ctmwa_batch.posts import ImageDecoder, check_posts_schema
from ctmwa_batch.precision import CHOICES as PRECISION_CHOICES
from ctmwa_batch.runtime import DEVICES, check_device
from ctmwa_batch.scorer import ScoreConfig, Scorer, require_scoring_bundle, value_counts

logger = logging.getLogger(__name__)

__all__ = ["ScoreConfig", "plan", "score_shard", "commit", "score_partition"]

READ_BUFFER_BYTES = 1 << 20  # Parquet column chunks are streamed through a buffer this size, never read whole
_END = object()


class PlanMismatch(CtmwaError):
    """A shard task got a plan made for another model or for an input that has changed since."""


# --------------------------------------------------------------------------------------------------- input checks


def _file_schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).schema_arrow


def _id_family(t: pa.DataType) -> str:
    return "integer" if pa.types.is_integer(t) else "text" if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) else "bytes"


def _check_input(plan: PartitionPlan, config: ScoreConfig, paths: list[str] | None = None) -> tuple[pa.Field, list[pa.Field], bool]:
    """Check the columns of every file (or of `paths`) before any output; returns (id field, passthrough fields,
    whether the image column holds paths). The output takes its id and passthrough types from the plan's first file."""
    fs, _ = open_filesystem(plan.input_path)
    all_paths = [f["path"] for f in plan.fingerprint["files"]]
    first = _file_schema(fs, all_paths[0])
    image_paths = None
    for path in paths if paths is not None else all_paths:
        file_schema = first if path == all_paths[0] else _file_schema(fs, path)
        where = f"input file {path!r}"
        is_paths = check_posts_schema(file_schema, config, where)
        schema.require_columns(file_schema, {c: "--passthrough" for c in config.passthrough}, where)
        want, got = first.field(config.id_column).type, file_schema.field(config.id_column).type
        if _id_family(want) != _id_family(got):
            raise InputSchemaError(
                f"id column {config.id_column!r} is {got} in {where} but {want} in {all_paths[0]!r}; the files of a "
                "partition need one id type: rewrite the odd file, or set --id-column to a column that agrees"
            )
        if image_paths is not None and is_paths != image_paths:
            raise InputSchemaError(
                f"image column {config.image_column!r} holds paths in some files of {plan.input_path!r} and bytes in "
                "others; use one kind per partition (set --image-column)"
            )
        image_paths = is_paths
    return first.field(config.id_column), [first.field(c) for c in config.passthrough], bool(image_paths)


def _check_unchanged(plan: PartitionPlan, shard: Shard) -> None:
    """Fail when a file of the shard changed size since planning (the row-group ranges would be wrong)."""
    fs, _ = open_filesystem(plan.input_path)
    sizes = {f["path"]: f["size"] for f in plan.fingerprint["files"]}
    for piece in shard.pieces:
        info = fs.get_file_info(piece.path)
        if info.type != pafs.FileType.File or info.size != sizes[piece.path]:
            raise PlanMismatch(
                f"input file {piece.path!r} changed since the partition was planned (size {info.size}, planned "
                f"{sizes[piece.path]}); plan the partition again"
            )


# --------------------------------------------------------------------------------------------------- progress


class Progress:
    """Rows scored, rows/s and ETA: a self-rewriting line on a terminal, a log line per interval otherwise."""

    def __init__(self, total_rows: int, interval_s: float = 10.0, interactive: bool = False, label: str = "scored"):
        self.total = total_rows
        self.interval = interval_s if not interactive else 0.5
        self.interactive = interactive
        self.label = label
        self.rows = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._lock = threading.Lock()

    def line(self) -> str:
        """The current progress as text."""
        elapsed = time.perf_counter() - self.t0
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.rows) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left // 60)}m{int(left % 60):02d}s"
        pct = 100.0 * self.rows / self.total if self.total else 100.0
        return f"{self.label} {self.rows:,}/{self.total:,} rows ({pct:.1f}%), {rate:,.0f} rows/s, ETA {eta}"

    def update(self, rows: int) -> None:
        """Count rows done; report when the interval has passed."""
        with self._lock:
            self.rows += rows
            now = time.perf_counter()
            if now - self._last < self.interval:
                return
            self._last = now
        self._emit()

    def _emit(self) -> None:
        if self.interactive:
            sys.stderr.write("\r" + self.line() + "\033[K")
            sys.stderr.flush()
        else:
            logger.info("%s", self.line())

    def close(self) -> None:
        """Final report."""
        if self.interactive:
            self._emit()
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------------------- pipeline


class _Context:
    """What scoring several shards in one process shares: the scorer's sessions and the decoding pool."""

    def __init__(self, bundle: Bundle, config: ScoreConfig):
        self.config = config
        self.scorer = Scorer(bundle, config)
        self.decoder = ImageDecoder(self.scorer.image_spec, config.decode_workers)
        logger.info(
            "scoring with model %s on %s, %s encoders, %d decoding process(es), batch %d",
            self.scorer.model_version, self.scorer.provider, self.scorer.precision, config.decode_workers, config.batch_size,
        )

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the pipeline is stopping; False when it is."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def _read_batches(plan: PartitionPlan, shard: Shard, columns: list[str], batch_size: int) -> Iterator[tuple[pa.RecordBatch, Path]]:
    """The shard's rows, only `columns`, in record batches; column chunks are streamed, not loaded whole."""
    fs, _ = open_filesystem(plan.input_path)
    local = isinstance(fs, pafs.LocalFileSystem)
    for piece in shard.pieces:
        base = Path(piece.path).parent if local else Path.cwd()  # relative image paths are relative to the file
        with fs.open_input_file(piece.path) as f:
            reader = pq.ParquetFile(f, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
            yield from (
                (batch, base)
                for batch in reader.iter_batches(
                    batch_size=batch_size,
                    row_groups=range(piece.row_group_start, piece.row_group_stop),
                    columns=columns,
                    use_threads=False,
                )
            )


def _run_shard(
    ctx: _Context,
    plan: PartitionPlan,
    shard_index: int,
    fields: tuple[pa.Field, list[pa.Field], bool],
    progress: Progress | None,
) -> dict[str, Any]:
    """Score one shard into its part (staged and marked by partitions.part_writer); returns the marker stats."""
    config, scorer, decoder = ctx.config, ctx.scorer, ctx.decoder
    shard = plan.shards[shard_index]
    id_field, passthrough_fields, image_paths = fields
    out_schema = scorer.output_schema(id_field, passthrough_fields)
    columns = scorer.input_columns()
    stop = threading.Event()
    prepared_q: queue.Queue = queue.Queue(maxsize=config.queue_batches)
    scored_q: queue.Queue = queue.Queue(maxsize=config.queue_batches)
    failures: list[BaseException] = []
    timings = Counter()
    statuses: Counter[str] = Counter()
    sentiments: Counter[str] = Counter()
    written = [0]
    model_before = dict(scorer.timings)
    decode_before = decoder.seconds
    t_start = time.perf_counter()

    def reader() -> None:
        try:
            batches = _read_batches(plan, shard, columns, config.batch_size)
            while not stop.is_set():
                t0 = time.perf_counter()
                batch_base = next(batches, None)
                t1 = time.perf_counter()
                if batch_base is None:
                    break
                batch, base = batch_base
                prepared = scorer.prepare(batch, base, image_paths=image_paths)
                t2 = time.perf_counter()
                handle = decoder.submit(prepared.images)
                timings["read"] += t1 - t0
                timings["prepare"] += t2 - t1
                if not _put(prepared_q, (prepared, handle), stop):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failures.append(e)
            stop.set()
        finally:
            _put(prepared_q, _END, stop)

    def writer_loop(writer: pq.ParquetWriter) -> None:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0

        def flush(final: bool) -> None:
            nonlocal pending, pending_rows
            if not pending:
                return
            table = pa.Table.from_batches(pending, schema=out_schema)
            cut = pending_rows if final else pending_rows - pending_rows % config.row_group_rows
            if cut:
                writer.write_table(table.slice(0, cut), row_group_size=config.row_group_rows)
            pending = table.slice(cut).to_batches() if cut < pending_rows else []
            pending_rows -= cut

        try:
            while True:
                item = _get(scored_q, stop)
                if item is _END:
                    break
                t0 = time.perf_counter()
                statuses.update(value_counts(item, "status"))
                sentiments.update(value_counts(item, "sentiment"))
                pending.append(item)
                pending_rows += item.num_rows
                if pending_rows >= config.row_group_rows:
                    flush(final=False)
                timings["write"] += time.perf_counter() - t0
                written[0] += item.num_rows
                if progress is not None:
                    progress.update(item.num_rows)
            if not stop.is_set():
                t0 = time.perf_counter()
                flush(final=True)
                timings["write"] += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failures.append(e)
            stop.set()

    with partitions.part_writer(plan, shard_index, out_schema) as sink:
        threads = [threading.Thread(target=reader, name=f"score-read-{shard_index}", daemon=True)]
        threads.append(threading.Thread(target=writer_loop, args=(sink.writer,), name=f"score-write-{shard_index}", daemon=True))
        for t in threads:
            t.start()
        try:
            while True:
                item = _get(prepared_q, stop)
                if item is _END:
                    break
                prepared, handle = item
                t0 = time.perf_counter()
                decoded = decoder.result(handle)
                timings["decode_wait"] += time.perf_counter() - t0
                out = scorer.infer(prepared, decoded, out_schema)
                if not _put(scored_q, out, stop):
                    break
            _put(scored_q, _END, stop)
        except BaseException as e:
            failures.append(e)
            stop.set()
        finally:
            for t in threads:
                t.join()
        if failures:
            raise failures[0]
        if written[0] != shard.num_rows:
            raise CtmwaError(
                f"shard {shard_index} of {plan.partition}: wrote {written[0]} rows for {shard.num_rows} input rows; "
                "nothing was published (this is a bug: please report it)"
            )
        for stage, seconds in scorer.timings.items():
            timings[stage] = seconds - model_before[stage]
        timings["decode"] = decoder.seconds - decode_before
        timings["total"] = time.perf_counter() - t_start
        sink.stats.update(
            output_rows=written[0],
            status_counts=dict(sorted(statuses.items())),
            sentiment_counts=dict(sorted(sentiments.items())),
            timings={k: round(v, 3) for k, v in sorted(timings.items())},
            provider=scorer.provider,
            precision=scorer.precision,
        )
        stats = dict(sink.stats)
    rate = written[0] / timings["total"] if timings["total"] else 0.0
    logger.info("shard %d of %s: %d rows in %.1fs (%.0f rows/s) %s", shard_index, plan.partition, written[0], timings["total"], rate, dict(statuses))
    return stats


# --------------------------------------------------------------------------------------------------- job API


def _load(bundle_dir: str | Path) -> tuple[Bundle, list[str]]:
    bundle = load_bundle(bundle_dir)
    return bundle, require_scoring_bundle(bundle)


def _plan(
    input_path: str | Path,
    output_root: str | Path,
    bundle: Bundle,
    max_rows: int,
    overwrite: bool,
    config: ScoreConfig,
    shards: list[int] | None = None,
) -> dict[str, Any]:
    """Plan, check everything that can be checked (columns, bundle, shard indices), then partitions.begin."""
    p = partitions.plan_partition(str(input_path), str(output_root), bundle.model_version, max_rows)
    _check_input(p, config)
    require_scoring_bundle(bundle)
    for k in shards or []:
        if not 0 <= k < len(p.shards):
            raise CtmwaError(f"shard {k} out of range: partition {p.partition} has {len(p.shards)} shard(s); pass --shard 0..{len(p.shards) - 1}")
    skip = not partitions.begin(p, overwrite=overwrite)
    logger.info(
        "planned %s: %d rows in %d shard(s), plan %s%s", p.partition, p.num_rows, len(p.shards), p.plan_id,
        " (already committed: skip)" if skip else "",
    )
    return {**p.to_dict(), "skip": skip}


def plan(
    input_path: str | Path,
    output_root: str | Path,
    bundle_dir: str | Path,
    max_rows_per_shard: int | None = None,
    overwrite: bool | None = None,
    config: ScoreConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan the scoring of one partition and get its output ready (partitions.begin).

    Returns the PartitionPlan as a dict (JSON, small) plus "skip": True when the partition is already committed for
    this input and model (and not `overwrite`). Checks every input file's columns and the bundle first, so a bad
    schema or an encoders-only bundle fails before any output. `max_rows_per_shard` / `overwrite` override the config's.
    """
    config = ScoreConfig.coerce(config)
    max_rows = max_rows_per_shard if max_rows_per_shard is not None else config.max_rows_per_shard
    force = config.overwrite if overwrite is None else overwrite
    return _plan(input_path, output_root, load_bundle(bundle_dir), max_rows, force, config)


def _score_shards(
    p: PartitionPlan, indices: list[int], bundle: Bundle, config: ScoreConfig, progress: Progress | None
) -> list[dict[str, Any]]:
    todo = []
    results = []
    for k in indices:
        marker = partitions.shard_done(p, k)
        if marker is not None:
            results.append(_shard_summary(marker, skipped=True))
            if progress is not None:
                progress.update(marker.get("output_rows", 0))
        else:
            todo.append(k)
    if not todo:
        return results
    fields = _check_input(p, config, sorted({piece.path for k in todo for piece in p.shards[k].pieces}))
    with _Context(bundle, config) as ctx:
        for k in todo:
            marker = partitions.shard_done(p, k)  # a concurrent worker may have finished it meanwhile
            if marker is not None:
                results.append(_shard_summary(marker, skipped=True))
                continue
            _check_unchanged(p, p.shards[k])
            results.append(_shard_summary({"shard": k, **_run_shard(ctx, p, k, fields, progress)}, skipped=False))
    return sorted(results, key=lambda r: r["shard"])


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


def _plan_from(plan_dict: dict[str, Any]) -> PartitionPlan:
    return PartitionPlan.from_dict(plan_dict)


def score_shard(
    plan: dict[str, Any], shard_index: int, bundle_dir: str | Path, config: ScoreConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Score one shard of a plan (from `plan`); a shard already finished is skipped, so a retry is always safe.

    Returns small stats: shard, skipped, rows, status_counts, seconds, rows_per_s.
    """
    config = ScoreConfig.coerce(config)
    p = _plan_from(plan)
    if not 0 <= shard_index < len(p.shards):
        raise ValueError(f"shard_index {shard_index} out of range: the plan has {len(p.shards)} shard(s)")
    if plan.get("skip"):
        return {"shard": shard_index, "skipped": True, "rows": p.shards[shard_index].num_rows, "reason": "partition already committed"}
    marker = partitions.shard_done(p, shard_index)
    if marker is not None:  # a retry of a finished shard: no bundle to load, nothing to do
        return _shard_summary(marker, skipped=True)
    bundle, _ = _load(bundle_dir)
    if bundle.model_version != p.model_version:
        raise PlanMismatch(
            f"bundle {str(bundle_dir)!r} is model {bundle.model_version} but the plan was made for {p.model_version}; "
            "plan the partition again with this bundle"
        )
    progress = Progress(p.shards[shard_index].num_rows, config.progress_interval_s, label=f"shard {shard_index}: scored")
    return _score_shards(p, [shard_index], bundle, config, progress)[0]


def summary(success: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """A partition's _SUCCESS.json without the file listing and the per-shard timings (small enough for XCom)."""
    timings = {k: v for k, v in success["timings"].items() if k != "shards"}
    inp = {k: v for k, v in success["input"].items() if k != "files"}
    return {
        "output_dir": output_dir,
        "partition": success["partition"],
        "model_version": success["model_version"],
        "plan_id": success["plan_id"],
        "input": inp,
        "rows": success["rows"],
        "timings": timings,
        "parts": len(success["parts"]),
        "runtime": success.get("runtime", {}),
        "committed_at": success["committed_at"],
    }


def commit(plan: dict[str, Any]) -> dict[str, Any]:
    """Commit a planned partition once all its shards are scored; returns the summary of its `_SUCCESS.json`.

    Idempotent: a partition already committed by this plan returns its summary unchanged. PartitionNotReady names
    the shards still to score.
    """
    p = _plan_from(plan)
    existing = partitions.read_success(p.output_dir)
    if existing is not None and existing.get("plan_id") == p.plan_id and partitions.is_committed(p):
        return summary(existing, p.output_dir)
    return summary(partitions.commit(p), p.output_dir)


def score_partition(
    input_path: str | Path,
    output_root: str | Path,
    bundle_dir: str | Path,
    config: ScoreConfig | dict[str, Any] | None = None,
    *,
    shards: list[int] | None = None,
    interactive: bool = False,
) -> dict[str, Any]:
    """Plan, score every shard (or only `shards`), commit: what `ctmwa-batch score` runs. Returns the commit summary,
    or {"skipped": True, ...} when already committed, or {"committed": False, "waiting_for": [...]} when some shards
    (others' to score) are not finished yet."""
    config = ScoreConfig.coerce(config)
    t0 = time.perf_counter()
    check_device(config.device)  # a missing GPU fails before the output is touched
    bundle = load_bundle(bundle_dir)  # verified once (sha256 of every file), used for the plan and the shards
    plan_dict = _plan(input_path, output_root, bundle, config.max_rows_per_shard, config.overwrite, config, shards)
    p = _plan_from(plan_dict)
    if plan_dict["skip"]:
        existing = partitions.read_success(p.output_dir)
        return {"skipped": True, **summary(existing, p.output_dir)}
    indices = list(range(len(p.shards))) if shards is None else shards
    progress = Progress(sum(p.shards[k].num_rows for k in indices), config.progress_interval_s, interactive)
    try:
        results = _score_shards(p, indices, bundle, config, progress)
    finally:
        progress.close()
    try:
        committed = commit(plan_dict)
    except PartitionNotReady:
        waiting = [s.index for s in p.shards if partitions.shard_done(p, s.index) is None]
        logger.info("scored shard(s) %s of %s; waiting for shard(s) %s before the commit", indices, p.partition, waiting)
        return {"committed": False, "output_dir": p.output_dir, "shards": results, "waiting_for": waiting}
    seconds = time.perf_counter() - t0
    committed["run"] = {
        "seconds": round(seconds, 3),
        "rows_per_s": round(sum(r["rows"] for r in results if not r["skipped"]) / seconds, 1) if seconds else None,
        "shards_scored": sum(not r["skipped"] for r in results),
        "shards_skipped": sum(r["skipped"] for r in results),
    }
    return committed


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch score` arguments."""
    d = ScoreConfig()
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle folder (encoders and head)")
    parser.add_argument("--input", required=True, help="posts partition: a Parquet file, a folder, a hive path, or a URI (s3://...)")
    parser.add_argument("--output", required=True, help="scores root; parts go to ROOT/model_version=V/PARTITION/")
    parser.add_argument("--device", choices=DEVICES, default=d.device, help="auto | cpu | cuda (default auto)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per batch (default {d.batch_size})")
    parser.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: one per core but one; 0: a thread)")
    parser.add_argument("--threads", type=int, default=d.intra_op_threads, help="ONNX Runtime threads per session (default 0: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="rescore even if committed for this input and model")
    parser.add_argument("--max-rows-per-shard", type=int, default=d.max_rows_per_shard, help=f"rows per shard / part (default {d.max_rows_per_shard})")
    parser.add_argument("--shard", type=int, action="append", metavar="K", help="score only shard K (repeatable); the last shard to finish commits")
    parser.add_argument("--id-column", default=d.id_column, help=f"id column (default {d.id_column!r})")
    parser.add_argument("--text-column", default=d.text_column, help=f"text column (default {d.text_column!r}; '' for none)")
    parser.add_argument("--image-column", default=d.image_column, help=f"image bytes or path column (default {d.image_column!r}; '' for none)")
    parser.add_argument("--passthrough", nargs="*", default=[], metavar="COLUMN", help="input columns to copy to the output")
    parser.add_argument("--scored-at", default=None, help="ISO-8601 time stamped on every row (default: now)")
    parser.add_argument(
        "--precision", choices=PRECISION_CHOICES, default=d.precision,
        help="encoder variant (default auto: int8 on CPU, fp16 on CUDA where the bundle has them, else fp32; logged)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the config from the arguments and score the partition."""
    try:
        config = _config_from(args)
    except ValueError as e:
        raise CtmwaError(str(e)) from e
    result = score_partition(args.input, args.output, args.bundle, config, shards=args.shard, interactive=sys.stderr.isatty())
    print(json.dumps(result, indent=2))
    return 0


def _config_from(args: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        intra_op_threads=args.threads,
        id_column=args.id_column,
        text_column=args.text_column or None,
        image_column=args.image_column or None,
        passthrough=tuple(args.passthrough),
        overwrite=args.overwrite,
        max_rows_per_shard=args.max_rows_per_shard,
        scored_at=args.scored_at,
        precision=args.precision,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m ctmwa_batch.job ...`: the same as `ctmwa-batch score ...`."""
    from ctmwa_batch.cli import main as cli_main

    return cli_main(["score", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())

