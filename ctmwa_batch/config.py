"""How posts are scored (`ScoreConfig`, the model-facing settings) and how a job cuts and writes a partition
(`JobConfig`); the one home of their defaults and of the device names.

Light on purpose (no pyarrow, no numpy): `ctmwa_batch.settings` builds these configs and is imported when Airflow
parses the DAG files.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ctmwa_batch.imagepolicy import DEFAULT_MAX_IMAGE_BYTES, AddressPolicy, parse_list

DEVICES = ("auto", "cpu", "cuda")  # what ctmwa_batch.model.runtime understands
# Encoder variants a job may ask for (ctmwa_batch.model.precision resolves auto): auto | fp32 | fp16 | int8.
PRECISIONS = ("auto", "fp32", "fp16", "int8")
DEFAULT_PRECISION = "auto"  # scoring: int8 on CPU, fp16 on CUDA where the bundle has them, else fp32 (logged)
DEFAULT_DEVICE = "auto"  # CLI and library default: CUDA when it works, else CPU (logged)
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_ROWS_PER_SHARD = 200_000
DEFAULT_QUEUE_BATCHES = 4  # batches in flight between two pipeline stages
# image GETs in flight per worker (images by URI): hides ~25 ms per request at ~2,500 images/s
DEFAULT_FETCH_CONCURRENCY = 64
OUTPUT_FORMATS = ("parquet", "delta", "iceberg")  # --format: Parquet folders with _SUCCESS.json, or a table
INPUT_FORMATS = ("parquet", "delta", "iceberg")  # --input-format: Parquet files, or a table's partition
DEFAULT_ID_COLUMN = "post_id"
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_IMAGE_COLUMN = "image"


def check_device(device: str) -> None:
    """ValueError naming the known devices when `device` is not one of them."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} unknown; use one of {list(DEVICES)}")


def check_precision(precision: str) -> str:
    """`precision` if it is a known choice, else ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; use one of {list(PRECISIONS)}")
    return precision


def parse_time(value: str) -> dt.datetime:
    """An ISO-8601 time (UTC when it names no zone); ValueError with an example otherwise."""
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"scored_at {value!r} is not an ISO-8601 time; use e.g. 2026-11-26T00:00:00+00:00") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; known keys are {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class ScoreConfig:
    """How posts are scored: the columns, the device, batching and decoding."""

    device: str = DEFAULT_DEVICE  # auto | cpu | cuda; a missing cuda is ProviderUnavailable, never a CPU fallback
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per record batch read, decoded, encoded and scored
    workers: int | None = None  # decoding processes; None = one per core but one (at least 1); 0 = the reader thread
    intra_op_threads: int = 0  # ONNX Runtime threads per session; 0 = every core
    id_column: str = DEFAULT_ID_COLUMN  # post id (string, integer or binary), copied to the output
    text_column: str | None = DEFAULT_TEXT_COLUMN  # string column; None = the posts have no text
    image_column: str | None = DEFAULT_IMAGE_COLUMN  # binary (bytes) or string (path/URI); None = no images
    passthrough: tuple[str, ...] = ()  # further input columns copied to the output after the scores
    scored_at: str | None = None  # ISO-8601 time stamped on every row (reproducible reruns); None = the time of scoring
    precision: str = DEFAULT_PRECISION  # encoder variant: auto (int8 on CPU, fp16 on CUDA where the bundle has them, else fp32) | fp32 | fp16 | int8
    fetch_concurrency: int = DEFAULT_FETCH_CONCURRENCY  # image GETs in flight (URI image column), all stores together
    max_fetch_failures: int = 0  # rows per shard that may end image_missing when the image store fails past the retries; beyond, the shard fails
    # ---- untrusted image references (ctmwa_batch.imagepolicy, docs/untrusted-images.md)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # a larger image is image_missing ("image too large"), unread
    allow_image_hosts: tuple[str, ...] = ()  # hosts, host:port, addresses or CIDRs of refused ranges http(s) may reach
    image_roots: tuple[str, ...] = ()  # folders local image paths may be read from, besides a local input's own folder

    def __post_init__(self) -> None:
        check_device(self.device)
        check_precision(self.precision)
        if self.fetch_concurrency < 1:
            raise ValueError(f"fetch_concurrency {self.fetch_concurrency}: must be at least 1")
        if self.max_fetch_failures < 0:
            raise ValueError(f"max_fetch_failures {self.max_fetch_failures}: must be 0 or more")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError(
                f"workers {self.workers}: must be 0 (decode in the reader thread), more, or None (one per core)"
            )
        if not self.id_column:
            raise ValueError("id_column is required: scores are joined back to posts by it; set --id-column")
        if self.scored_at is not None:
            parse_time(self.scored_at)
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes {self.max_image_bytes}: must be at least 1")
        object.__setattr__(self, "allow_image_hosts", parse_list(self.allow_image_hosts))
        object.__setattr__(self, "image_roots", parse_list(self.image_roots))
        AddressPolicy(self.allow_image_hosts)  # a bad entry fails here, naming it

    @property
    def decode_workers(self) -> int:
        """The number of decoding processes this config asks for (None resolved against this machine)."""
        if self.workers is not None:
            return self.workers
        # One per core but one; on two cores or fewer a decode process only competes with ONNX Runtime's threads, and
        # decoding in the reader thread (Pillow releases the GIL) overlaps just as well: int8 scoring ran 59.5 posts/s
        # that way against 46.1 with one decode process on the 2-core VM (bench/bench_score.py --workers 0 / 1).
        cores = os.cpu_count() or 2
        return cores - 1 if cores > 2 else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **asdict(self),
            "passthrough": list(self.passthrough),
            "allow_image_hosts": list(self.allow_image_hosts),
            "image_roots": list(self.image_roots),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        """Inverse of to_dict; an unknown key is an error naming the known ones."""
        return _from_dict(cls, d, "score config")

    @classmethod
    def coerce(cls, config: ScoreConfig | dict[str, Any] | None) -> ScoreConfig:
        """A ScoreConfig from itself, its dict form, or None (the defaults)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(f"config must be a ScoreConfig, a dict or None, got {type(config).__name__}")


_SCORE_KEYS = frozenset(f.name for f in fields(ScoreConfig))


@dataclass(frozen=True)
class JobConfig:
    """How a job cuts, writes and commits a partition, around the ScoreConfig it scores with."""

    score: ScoreConfig = field(default_factory=ScoreConfig)  # the model-facing settings
    overwrite: bool = False  # rescore a partition already committed for the same input and model
    max_rows_per_shard: int = DEFAULT_MAX_ROWS_PER_SHARD  # a shard (one task, one part) is whole row groups up to this
    queue_batches: int = DEFAULT_QUEUE_BATCHES  # batches in flight between two stages: memory bounded whatever the size
    row_group_rows: int = 65_536  # rows per output row group; the output layout does not depend on batch_size
    progress_interval_s: float = 10.0  # a progress log line this often in non-interactive runs
    # ---- tables (ctmwa_batch.io.tables)
    format: str = "parquet"  # output: parquet | delta (output = a location) | iceberg (output = namespace.table)
    catalog: str | None = None  # Iceberg: pyiceberg catalog (.pyiceberg.yaml, PYICEBERG_CATALOG__*); None = default
    input_format: str = "parquet"  # input: parquet | delta (a location) | iceberg (namespace.table in `catalog`)
    partition: str | None = None  # table input: KEY=VALUE[,KEY=VALUE], the rows to score and the output's partition
    staging: str | None = None  # table output: markers and receipts go here (S3 Tables); None = beside the data files
    # ---- embeddings (ctmwa_batch.scoring.embeddings): backfills at the cost of the head
    keep_embeddings: bool = False  # also write the encoders' outputs (float16) beside the scores, committed with them
    embedding_reuse: bool = True  # score from valid kept embeddings (head only) and encode each distinct image once; False: every row through the encoders

    def __post_init__(self) -> None:
        for name in ("queue_batches", "row_group_rows", "max_rows_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be at least 1")
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"format {self.format!r} unknown; use one of {list(OUTPUT_FORMATS)}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format {self.input_format!r} unknown; use one of {list(INPUT_FORMATS)}")
        if self.input_format != "parquet" and not self.partition:
            raise ValueError(
                f"input_format {self.input_format}: name the partition to score with --partition KEY=VALUE[,KEY=VALUE]"
            )
        if self.keep_embeddings and (self.format != "parquet" or self.input_format != "parquet"):
            raise ValueError(
                f"keep_embeddings: kept embeddings are written beside Parquet scores of Parquet posts only (format "
                f"{self.format}, input_format {self.input_format}); drop --keep-embeddings or use --format parquet"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, flat (what an Airflow task passes through XCom): the ScoreConfig's keys and the job's."""
        return {**self.score.to_dict(), **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "score"}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobConfig:
        """Inverse of to_dict; an unknown key is an error naming the known ones."""
        job = {k: v for k, v in d.items() if k not in _SCORE_KEYS}
        score = ScoreConfig.from_dict({k: v for k, v in d.items() if k in _SCORE_KEYS})
        if "score" in job:
            raise ValueError("a flat config has no 'score' key: give the ScoreConfig keys at the top level")
        return _from_dict(cls, {**job, "score": score}, "config")

    @classmethod
    def coerce(cls, config: JobConfig | ScoreConfig | dict[str, Any] | None) -> JobConfig:
        """A JobConfig from itself, a ScoreConfig (job defaults around it), the flat dict form, or None."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, ScoreConfig):
            return cls(score=config)
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(f"config must be a JobConfig, a ScoreConfig, a dict or None, got {type(config).__name__}")
