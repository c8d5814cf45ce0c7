"""Partition planning and the commit protocol: the one place that knows the output layout.

A posts partition (a Parquet file, a folder of files, or a hive path such as `posts/dt=2026-11-26`) is scored into

    {output_root}/model_version={v}/{partition}/part-{shard:05d}-{plan}.parquet
    {output_root}/model_version={v}/{partition}/_shards/{plan}-{shard:05d}.json   (one per finished shard)
    {output_root}/model_version={v}/{partition}/_SUCCESS.json                      (written last)
    {output_root}/model_version={v}/{partition}/_embeddings/part-{shard:05d}-{plan}.parquet   (kept embeddings, when asked)

Planning is a pure function of the input listing (paths, sizes, row-group sizes) and the model version, so every
worker that plans the same partition gets the same shards. A shard's part is written under a hidden temporary name
inside `_shards/`, renamed there when complete (staged), and its marker written; `commit` moves the staged parts
into place, removes what older plans or killed runs left, and writes `_SUCCESS.json` last. Readers (pyarrow.dataset,
Spark, DuckDB) skip names starting with `.` or `_`, so until a commit nothing of a run is visible to them, and a
killed run leaves nothing they would read.

On an object store (s3://) a rename is a copy and a delete (`storage.move`), and markers and `_SUCCESS.json` are one
PUT each (`storage.write_object`). A reader that honours `_SUCCESS.json` (reads the `parts` it lists) never sees a
partial partition; a plain glob reader can see a partial set of parts while `commit` moves them in, on any storage,
and must wait for `_SUCCESS.json` (README, "Lakes in object storage").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch.config import DEFAULT_MAX_ROWS_PER_SHARD
from ctmwa_batch.errors import CtmwaError, InputSchemaError
from ctmwa_batch.io import storage

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS.json"
SHARDS_DIR = "_shards"
REPORTS_DIR = "_reports"  # health reports, beside the partitions of a model version; a name readers skip
EMBEDDINGS_DIR = (
    "_embeddings"  # kept embeddings (ctmwa_batch.scoring.embeddings), inside the partition; a name readers skip
)
_HIVE_SEGMENT = re.compile(r"^[^=/]+=[^/]*$")


class PartitionNotReady(CtmwaError):
    """A partition cannot be committed: some shard of its plan has not finished."""


@dataclass(frozen=True)
class InputFile:
    """One Parquet file of a partition, as planning sees it."""

    path: str  # path inside the filesystem
    size: int  # bytes
    row_groups: tuple[int, ...]  # rows per row group
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)  # Arrow schema, from the same footer read

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class Piece:
    """A contiguous run of row groups of one file: the unit a shard is made of."""

    path: str
    row_group_start: int
    row_group_stop: int  # exclusive
    num_rows: int


@dataclass(frozen=True)
class Shard:
    """A part of a partition scored by one task; `index` orders the output parts."""

    index: int
    pieces: tuple[Piece, ...]

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.pieces)


@dataclass(frozen=True)
class PartitionPlan:
    """Everything a worker needs to score one shard and a committer to commit the partition (JSON-serialisable)."""

    input_path: str  # as given (path or URI)
    output_dir: str  # path or URI of model_version={v}/{partition}
    partition: str  # relative partition path, e.g. dt=2026-11-26
    model_version: str
    fingerprint: dict  # files (path, size, rows, rows per row group), total rows, sha256 of the listing
    shards: tuple[Shard, ...] = field(default_factory=tuple)
    columns: dict | None = (
        None  # what the job needs of the input's columns (ctmwa_batch.scoring.inputs.InputColumns, JSON)
    )
    # the table the scores go to (ctmwa_batch.io.tables.TableTarget, JSON); None: Parquet folders
    table: dict | None = None
    source: dict | None = None  # a table input's pinned snapshot / version (ctmwa_batch.io.tables); None: Parquet input
    # ---- embeddings (ctmwa_batch.scoring.embeddings)
    # encoders' identity when the shards also write their embeddings; None: not kept
    keep_embeddings: dict | None = None
    embeddings_source: dict | None = None  # kept embeddings the shards score from (head only); None: from the posts

    @property
    def plan_id(self) -> str:
        """Short id of (input fingerprint, model version, shard layout, embeddings kept): names this plan's parts and
        markers (a plan that keeps embeddings never takes a shard finished without them for its own)."""
        layout = [[(p.path, p.row_group_start, p.row_group_stop) for p in s.pieces] for s in self.shards]
        identity: list = [self.fingerprint["sha256"], self.model_version, layout]
        if self.keep_embeddings is not None:
            identity.append(self.keep_embeddings["digest"])
        blob = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def num_rows(self) -> int:
        return self.fingerprint["num_rows"]

    def part_name(self, shard_index: int) -> str:
        return f"part-{shard_index:05d}-{self.plan_id}.parquet"

    def marker_name(self, shard_index: int) -> str:
        return f"{SHARDS_DIR}/{self.plan_id}-{shard_index:05d}.json"

    def embeddings_part_name(self, shard_index: int) -> str:
        """Where a shard's kept embeddings are published, relative to the output dir."""
        return f"{EMBEDDINGS_DIR}/part-{shard_index:05d}-{self.plan_id}.parquet"

    def shard_row_start(self, shard_index: int) -> int:
        """Position in the partition (listing order) of the shard's first row: shards are contiguous, in order."""
        return sum(s.num_rows for s in self.shards[:shard_index])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PartitionPlan:
        shards = tuple(Shard(s["index"], tuple(Piece(**p) for p in s["pieces"])) for s in d["shards"])
        return cls(
            d["input_path"],
            d["output_dir"],
            d["partition"],
            d["model_version"],
            d["fingerprint"],
            shards,
            d.get("columns"),
            d.get("table"),
            d.get("source"),
            d.get("keep_embeddings"),
            d.get("embeddings_source"),
        )


def list_input(input_path: str) -> list[InputFile]:
    """The Parquet files of a partition, sorted, with their row-group sizes and schemas (one footer read per file)."""
    fs, path = storage.open_filesystem(input_path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputSchemaError(f"input {input_path!r} does not exist; pass a Parquet file or a folder of them")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = [
            i
            for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File
            and i.path.endswith(".parquet")
            and not any(seg.startswith((".", "_")) for seg in posixpath.relpath(i.path, path).split("/"))
        ]
    files = []
    for i in sorted(infos, key=lambda i: i.path):
        try:
            with fs.open_input_file(i.path) as f:
                footer = pq.ParquetFile(f)
                meta, arrow_schema = footer.metadata, footer.schema_arrow
        except (pa.ArrowInvalid, OSError) as e:
            store_error = storage.translate(
                e, input_path
            )  # a store that is down is a fault of the run, not of the file
            if store_error is not None:
                raise store_error from e
            raise InputSchemaError(f"{i.path!r} is not a readable Parquet file ({e}); remove or fix it") from e
        row_groups = tuple(meta.row_group(k).num_rows for k in range(meta.num_row_groups))
        files.append(InputFile(i.path, i.size, row_groups, arrow_schema))
    if not files:
        raise InputSchemaError(f"no .parquet files under {input_path!r}; point --input at a partition of posts")
    return files


def fingerprint(files: list[InputFile]) -> dict:
    """What identifies an input: its files, their sizes and row counts (a changed input gets a new sha256)."""
    listing = [{"path": f.path, "size": f.size, "num_rows": f.num_rows} for f in files]
    sha = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    # The row groups are recorded beside (not hashed: a file's rows and size already identify it).
    recorded = [{**entry, "row_groups": list(f.row_groups)} for entry, f in zip(listing, files)]
    return {"files": recorded, "num_rows": sum(f.num_rows for f in files), "sha256": sha}


def partition_of(input_path: str) -> str:
    """The partition path to mirror in the output: trailing hive segments (`dt=.../hour=...`), else the base name."""
    parts = input_path.rstrip("/").split("/")
    hive = []
    for seg in reversed(parts):
        if not _HIVE_SEGMENT.match(seg):
            break
        hive.append(seg)
    if hive:
        return "/".join(reversed(hive))
    base = parts[-1]
    return base[: -len(".parquet")] if base.endswith(".parquet") else base


def output_dir(output_root: str, model_version: str, partition: str) -> str:
    """Where one partition's scores for one model version live."""
    return storage.join(output_root, f"model_version={model_version}", partition)


def report_dir(output_root: str, model_version: str, partition: str) -> str:
    """Where the health report of one partition (or range) of one model version goes: `_reports/{partition}`."""
    return output_dir(output_root, model_version, f"{REPORTS_DIR}/{partition}")


def plan_shards(files: list[InputFile], max_rows_per_shard: int = DEFAULT_MAX_ROWS_PER_SHARD) -> tuple[Shard, ...]:
    """Cut the files into shards of whole row groups, in listing order, each at most `max_rows_per_shard` rows
    (a single larger row group makes a shard of its own). Pure: same listing, same shards."""
    if max_rows_per_shard < 1:
        raise ValueError(f"max_rows_per_shard must be >= 1, got {max_rows_per_shard}")
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    current_rows = 0

    def close() -> None:
        nonlocal current, current_rows
        if current:
            shards.append(current)
        current, current_rows = [], 0

    for f in files:
        start = 0
        for k, rows in enumerate(f.row_groups):
            if current_rows and current_rows + rows > max_rows_per_shard:
                if start < k:
                    current.append(Piece(f.path, start, k, sum(f.row_groups[start:k])))
                close()
                start = k
            current_rows += rows
        if start < len(f.row_groups):
            current.append(Piece(f.path, start, len(f.row_groups), sum(f.row_groups[start:])))
    close()
    return tuple(Shard(i, tuple(pieces)) for i, pieces in enumerate(shards))


def plan_partition(
    input_path: str,
    output_root: str,
    model_version: str,
    max_rows_per_shard: int = DEFAULT_MAX_ROWS_PER_SHARD,
    partition: str | None = None,
    files: list[InputFile] | None = None,
) -> PartitionPlan:
    """Plan the scoring of one partition: list it (unless `files` is its listing already), fingerprint it, cut it
    into shards."""
    files = list_input(input_path) if files is None else files
    partition = partition if partition is not None else partition_of(input_path)
    return PartitionPlan(
        input_path=input_path,
        output_dir=output_dir(output_root, model_version, partition),
        partition=partition,
        model_version=model_version,
        fingerprint=fingerprint(files),
        shards=plan_shards(files, max_rows_per_shard),
    )


def read_success(out_dir: str) -> dict | None:
    """The partition's `_SUCCESS.json`, or None when it is not committed."""
    fs, path = storage.open_filesystem(out_dir)
    try:
        with fs.open_input_stream(f"{path}/{SUCCESS}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def is_committed(plan: PartitionPlan) -> bool:
    """True when this partition is committed for the same input and model version (any shard layout)."""
    success = read_success(plan.output_dir)
    return (
        success is not None
        and success.get("model_version") == plan.model_version
        and success.get("input", {}).get("sha256") == plan.fingerprint["sha256"]
        # asked to keep embeddings: only a commit that kept them with these encoders will do
        and (
            plan.keep_embeddings is None
            or ((success.get("embeddings") or {}).get("encoders") or {}).get("digest") == plan.keep_embeddings["digest"]
        )
    )


def begin(plan: PartitionPlan, overwrite: bool = False) -> bool:
    """Get the output ready for scoring; False when there is nothing to do (already committed, not forced).

    A rescore withdraws `_SUCCESS.json` first, so no reader takes a half-rewritten partition for output.
    """
    if is_committed(plan) and not overwrite:
        log.info("partition %s already committed for model %s: nothing to do", plan.partition, plan.model_version)
        return False
    fs, path = storage.open_filesystem(plan.output_dir)
    fs.create_dir(f"{path}/{SHARDS_DIR}", recursive=True)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(f"{path}/{SUCCESS}")
    if overwrite:
        for shard in plan.shards:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(f"{path}/{plan.marker_name(shard.index)}")
    return True


def shard_done(plan: PartitionPlan, shard_index: int) -> dict | None:
    """The marker of a finished shard of this plan, or None."""
    fs, path = storage.open_filesystem(plan.output_dir)
    try:
        with fs.open_input_stream(f"{path}/{plan.marker_name(shard_index)}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


@dataclass
class PartSink:
    """What `part_writer` yields: the Parquet writer, and the stats that go into the shard marker."""

    writer: pq.ParquetWriter
    # output_rows, status_counts {status: n} and timings {stage: seconds} are read by `commit`
    stats: dict = field(default_factory=dict)
    embeddings: pq.ParquetWriter | None = None  # the shard's kept embeddings, when the plan keeps them


def _staged_embeddings(plan: PartitionPlan, shard_index: int) -> str:
    return f"{SHARDS_DIR}/embeddings-part-{shard_index:05d}-{plan.plan_id}.parquet"


@contextlib.contextmanager
def part_writer(
    plan: PartitionPlan, shard_index: int, schema: pa.Schema, embeddings_schema: pa.Schema | None = None
) -> Iterator[PartSink]:
    """Write one shard's part under a temporary name; on clean exit stage it in `_shards/` and mark the shard done.

    With `embeddings_schema` (a plan that keeps embeddings) the shard's embeddings part is written and staged the
    same way, before the marker. On an exception the temporary files are removed and nothing is staged. Two workers
    scoring the same shard at once both succeed: the parts are equal and each rename replaces the other's
    atomically. The writer settings are fixed (and the file carries no timestamp of its own), so equal rows give
    equal bytes.
    """
    fs, path = storage.open_filesystem(plan.output_dir)
    fs.create_dir(f"{path}/{SHARDS_DIR}", recursive=True)
    staged = f"{path}/{SHARDS_DIR}/{plan.part_name(shard_index)}"
    tmp = f"{path}/{SHARDS_DIR}/.{plan.part_name(shard_index)}.tmp-{uuid.uuid4().hex}"
    files = [(tmp, staged)]
    if embeddings_schema is not None:
        name = _staged_embeddings(plan, shard_index)
        files.append((f"{path}/{SHARDS_DIR}/.{posixpath.basename(name)}.tmp-{uuid.uuid4().hex}", f"{path}/{name}"))
    started_at = time.time()
    started = time.monotonic()
    sinks = [fs.open_output_stream(t) for t, _ in files]
    writers = [
        pq.ParquetWriter(sink, s, compression="zstd", write_statistics=True)
        for sink, s in zip(sinks, [schema, embeddings_schema])
    ]
    out = PartSink(writers[0], embeddings=writers[1] if len(writers) > 1 else None)
    try:
        yield out
        for w, sink in zip(writers, sinks):
            w.close()
            sink.close()
    except BaseException:
        for w, sink, (t, _) in zip(writers, sinks, files):
            with contextlib.suppress(Exception):
                w.close()
            with contextlib.suppress(Exception):
                sink.close()
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(t)
        raise
    if out.embeddings is not None:
        out.stats["embeddings_bytes"] = fs.get_file_info(files[1][0]).size
    try:
        for t, dest in reversed(files):  # the scores part last: its presence means the shard's files all are
            storage.move(fs, t, dest)
    except FileNotFoundError:
        # A concurrent worker committed the partition and swept our temporary file: its part is ours.
        if shard_done(plan, shard_index) is None:
            raise
        log.info("shard %d of %s was finished by another worker", shard_index, plan.partition)
        return
    marker = {
        "shard": shard_index,
        "plan_id": plan.plan_id,
        "part": plan.part_name(shard_index),
        "input_rows": plan.shards[shard_index].num_rows,
        "seconds": round(time.monotonic() - started, 3),
        "started_at": round(started_at, 3),
        "finished_at": round(time.time(), 3),
        **out.stats,
    }
    storage.write_object(fs, f"{path}/{plan.marker_name(shard_index)}", json.dumps(marker, sort_keys=True).encode())


def _sum_counts(markers: list[dict], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for m in markers:
        for name, n in (m.get(key) or {}).items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))


def _publish_parts(fs: pafs.FileSystem, path: str, plan: PartitionPlan) -> None:
    """Move every staged part of the plan into place (a part already in place was moved by an earlier commit):
    the kept embeddings first, so the scores never appear without them."""
    moves = []
    if plan.keep_embeddings is not None:
        fs.create_dir(f"{path}/{EMBEDDINGS_DIR}", recursive=True)
        moves += [(_staged_embeddings(plan, s.index), plan.embeddings_part_name(s.index), s) for s in plan.shards]
    moves += [(f"{SHARDS_DIR}/{plan.part_name(s.index)}", plan.part_name(s.index), s) for s in plan.shards]
    for staged, name, shard in moves:
        try:
            storage.move(fs, f"{path}/{staged}", f"{path}/{name}")
        except FileNotFoundError:
            if fs.get_file_info(f"{path}/{name}").type != pafs.FileType.File:
                raise PartitionNotReady(
                    f"partition {plan.partition}: shard {shard.index} has a marker but its part {name} is gone; "
                    "rescore with --overwrite"
                ) from None


def commit(plan: PartitionPlan, extra: dict | None = None) -> dict:
    """Publish the partition: check every shard of the plan finished, move the staged parts into place, remove what
    other plans or killed runs left, then write `_SUCCESS.json` last. Returns its content. Idempotent."""
    fs, path = storage.open_filesystem(plan.output_dir)
    found = [shard_done(plan, s.index) for s in plan.shards]
    missing = [s.index for s, m in zip(plan.shards, found) if m is None]
    if missing:
        raise PartitionNotReady(
            f"partition {plan.partition}: shard(s) {missing} of {len(plan.shards)} have not finished; "
            "score them first (a retry of the failed shard tasks is safe)"
        )
    markers = [m for m in found if m is not None]  # every one, past the check
    output_rows = sum(m.get("output_rows", 0) for m in markers)
    if output_rows != plan.num_rows:
        raise PartitionNotReady(
            f"partition {plan.partition}: shards wrote {output_rows} rows for {plan.num_rows} input rows; "
            "rescore with --overwrite"
        )
    _publish_parts(fs, path, plan)
    keep = {plan.part_name(s.index) for s in plan.shards} | {plan.marker_name(s.index) for s in plan.shards}
    if plan.keep_embeddings is not None:
        keep |= {plan.embeddings_part_name(s.index) for s in plan.shards}
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = posixpath.relpath(info.path, path)
        if info.type == pafs.FileType.File and rel not in keep and rel != SUCCESS:
            log.info("removing stale %s", info.path)
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(info.path)
    success = success_record(plan, markers, [plan.part_name(s.index) for s in plan.shards], extra)
    storage.write_object(fs, f"{path}/{SUCCESS}", json.dumps(success, indent=2, sort_keys=True).encode())
    log.info("committed %s: %d rows %s", plan.output_dir, output_rows, success["rows"]["by_status"])
    return success


def success_record(plan: PartitionPlan, markers: list[dict], parts: list[str], extra: dict | None = None) -> dict:
    """The content of a committed partition's `_SUCCESS.json`: input, parts, rows by status, timings, runtime."""
    output_rows = sum(m.get("output_rows", 0) for m in markers)
    seconds = sum(m.get("seconds", 0.0) for m in markers)
    starts = [m["started_at"] for m in markers if "started_at" in m]
    ends = [m["finished_at"] for m in markers if "finished_at" in m]
    wall = max(ends) - min(starts) if starts and ends else None
    stages: dict[str, float] = {}
    for m in markers:
        for stage, s in (m.get("timings") or {}).items():
            stages[stage] = round(stages.get(stage, 0.0) + s, 3)
    success = {
        "model_version": plan.model_version,
        "partition": plan.partition,
        "plan_id": plan.plan_id,
        "input": plan.fingerprint | {"path": plan.input_path},
        "parts": parts,
        "rows": {
            "input": plan.num_rows,
            "output": output_rows,
            "by_status": _sum_counts(markers, "status_counts"),
            "by_sentiment": _sum_counts(markers, "sentiment_counts"),
        },
        "timings": {
            "shard_seconds_total": round(seconds, 3),
            "rows_per_second_per_shard": round(output_rows / seconds, 1) if seconds else None,
            # first shard start to last shard end, whatever ran in parallel
            "wall_seconds": round(wall, 3) if wall is not None else None,
            "rows_per_second": round(output_rows / wall, 1) if wall else None,
            "stages": dict(sorted(stages.items())),
            "shards": [{"shard": m["shard"], "seconds": m["seconds"], **m.get("timings", {})} for m in markers],
        },
        # how the shards ran: encoder precision and execution provider (one value unless workers differed)
        "runtime": {
            key: sorted({str(m[key]) for m in markers if m.get(key) is not None}) for key in ("precision", "provider")
        },
        "committed_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    return success
