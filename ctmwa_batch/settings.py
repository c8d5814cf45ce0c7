"""Deployment settings of the scoring pipelines: the one place that says where data and models live and how the
work is scheduled. Every field has a default and an environment variable `CTMWA_<FIELD>`, e.g.

    CTMWA_INPUT_ROOT=s3://lake/posts CTMWA_OUTPUT_ROOT=s3://lake/scores CTMWA_MODELS_ROOT=/mnt/models

Fields that shape the DAGs themselves (queue, pool, retries, timeouts, schedule) are operator attributes: Airflow
reads them when it parses the DAG files, so set them in the environment of the DAG processor (and the scheduler).
All the others are read when a task runs, on the worker, and a DAG run's params override them for that run.
Nothing here touches Airflow Variables, Connections or the metadata database.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctmwa_batch.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FETCH_CONCURRENCY,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_MAX_ROWS_PER_SHARD,
    DEFAULT_PRECISION,
    DEFAULT_TEXT_COLUMN,
    DEVICES,
    OUTPUT_FORMATS,
    PRECISIONS,
    JobConfig,
    ScoreConfig,
)
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.imagepolicy import DEFAULT_MAX_IMAGE_BYTES, AddressPolicy, parse_list

ENV_PREFIX = "CTMWA_"
CURRENT = "current"  # model_version that means "whatever the models root's CURRENT pointer names"

# The Asset the scoring DAGs update when they commit a partition; downstream DAGs schedule on it.
SCORES_ASSET_NAME = "ctmwa_scores"
SCORES_ASSET_URI = "ctmwa://scores"
# The Asset the export DAG updates when it publishes a bundle.
MODELS_ASSET_NAME = "ctmwa_models"
MODELS_ASSET_URI = "ctmwa://models"


class SettingsError(CtmwaError):
    """A setting (environment variable or DAG param) has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Where data and models live and how scoring is scheduled; `Settings.load()` reads the environment."""

    # One field, one line, its comment beside it (tests/ctmwa_batch/test_settings.py reads them): not wrapped by the formatter.
    # fmt: off
    # ---- data and models (read at task run time; DAG params override them per run)
    input_root: str = "lake/posts"  # posts partitions, a path or URI (s3://, gs://, ...); one day at {input_root}/{partition_template}
    output_root: str = "lake/scores"  # scores land at {output_root}/model_version={v}/{partition}/ with a _SUCCESS.json
    models_root: str = "models"  # published bundles {models_root}/{version}/ and the CURRENT pointer; a shared filesystem
    model_version: str = CURRENT  # "current" (follow the CURRENT pointer when a run starts) or a published version
    partition_template: str = "dt={date}"  # one day's input partition under input_root; {date} is YYYY-MM-DD
    input_ready_marker: str = ""  # a file the upstream writes last into a partition (e.g. _SUCCESS); "" = any .parquet file
    id_column: str = DEFAULT_ID_COLUMN  # the posts' id column (string, integer or binary), copied to the scores
    text_column: str = DEFAULT_TEXT_COLUMN  # the posts' text column (string)
    image_column: str = DEFAULT_IMAGE_COLUMN  # the posts' image column: bytes, or a path/URI string
    passthrough: str = ""  # comma-separated further input columns copied to the scores (e.g. "created_at,user_id")
    # ---- how a shard is scored (task run time; params override)
    # Deployed scoring runs on GPU workers, so here the default is cuda (the CLI's is auto): cuda on a worker without
    # a GPU fails the task, never a silent CPU fallback.
    device: str = "cuda"  # cuda | cpu | auto
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per ONNX Runtime batch
    precision: str = DEFAULT_PRECISION  # encoder variant: auto (int8 on CPU, fp16 on CUDA where the bundle has them, else fp32) | fp32 | fp16 | int8
    max_rows_per_shard: int = DEFAULT_MAX_ROWS_PER_SHARD  # rows one mapped task scores; the unit of distribution and of retries
    fetch_concurrency: int = DEFAULT_FETCH_CONCURRENCY  # image GETs in flight per worker when the image column holds URIs
    max_fetch_failures: int = 0  # rows per shard committed as image_missing when the image store fails past its retries; 0 = the shard fails (Airflow retries it)
    # ---- how Airflow schedules the work (read when the DAG files are parsed)
    schedule: str = "@daily"  # cron of the nightly DAG; each run scores the day its data interval starts on (UTC)
    queue: str = "gpu"  # Celery queue / worker label of the scoring tasks: the GPU workers listen on it
    pool: str = "ctmwa_gpu"  # Airflow pool of the scoring tasks; its slots bound the shards scored at once, all DAGs together
    executor: str = ""  # executor of the scoring tasks when Airflow runs several (e.g. "KubernetesExecutor"); "" = the default one
    pod_template_file: str = ""  # KubernetesExecutor: pod template of the scoring tasks (GPU resources, node selector); "" = none
    max_active_shards: int = 8  # max_active_tis_per_dag of each scoring task (one DAG's share of the GPUs)
    shard_retries: int = 2  # retries of a scoring task; a retry scores only what did not finish
    retry_delay_minutes: int = 5  # wait before a retry
    shard_timeout_minutes: int = 120  # execution_timeout of a scoring task (a hung GPU or a stuck read ends as a failure)
    backfill_timeout_minutes: int = 720  # execution_timeout of a backfill task, which scores whole days one after another
    input_wait_hours: float = 6.0  # how long the nightly DAG waits for its input partition to land before failing
    input_poke_minutes: int = 10  # how often it looks (the sensor frees its worker slot in between)
    max_map_length: int = 1024  # Airflow's [core] max_map_length: a backfill maps at most this many tasks
    train_queue: str = "default"  # queue of the export DAG's tasks (training and export: a machine with torch)
    # ---- the health report (task run time; ctmwa-batch report takes them as its flag defaults)
    baseline_days: int = 7  # days before a report day whose pooled scores are its baseline
    drift_psi_warn: float = 0.1  # PSI (sentiment mix, confidence, weights) from which a report warns
    drift_psi_alert: float = 0.25  # PSI from which it alerts
    drift_rate_warn: float = 0.02  # change of a status's share of rows (0.02 = 2 points) from which it warns
    drift_rate_alert: float = 0.05  # change of a status's share from which it alerts
    drift_min_rows: int = 200  # a day or baseline with fewer rows is reported but never alerted (PSI is noise there)
    fail_on_drift: bool = False  # an alert fails the health_report task (never the scoring, which is committed by then)
    # ---- tables (ctmwa_batch.io.tables; task run time)
    format: str = "parquet"  # parquet | delta (output_root = the table's location) | iceberg (output_root = ns.table)
    catalog: str = ""  # Iceberg: pyiceberg catalog (.pyiceberg.yaml, PYICEBERG_CATALOG__*); "" = pyiceberg's default
    staging: str = ""  # table output: markers and commit receipts go here (S3 Tables buckets); "" = beside the data
    # ---- embeddings (task run time; params override): docs/backfill.md
    keep_embeddings: bool = False  # keep the encoders' outputs (float16) beside the scores, so a later head with the same encoders rescores without them
    embedding_reuse: bool = True  # score from valid kept embeddings (the head only) and encode each distinct image once; false: every row through the encoders
    # ---- untrusted image references (task run time; not a run param: the deployment sets the policy)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # a larger image is image_missing ("image too large"), unread
    allow_image_hosts: str = ""  # comma-separated hosts, host:port, addresses or CIDRs that http(s) images may reach inside the internal ranges
    image_roots: str = ""  # comma-separated folders local image paths may be read from, besides a local input's folder

    # fmt: on

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingsError(
                f"device {self.device!r} unknown; set CTMWA_DEVICE (or the device param) to one of {list(DEVICES)}"
            )
        if self.precision not in PRECISIONS:
            raise SettingsError(
                f"precision {self.precision!r} unknown; set CTMWA_PRECISION (or the precision param) to one of {list(PRECISIONS)}"
            )
        for name in (
            "batch_size",
            "max_rows_per_shard",
            "fetch_concurrency",
            "max_active_shards",
            "input_poke_minutes",
            "max_map_length",
            "shard_timeout_minutes",
            "backfill_timeout_minutes",
            "max_image_bytes",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} = {getattr(self, name)}: must be at least 1 (CTMWA_{name.upper()})")
        for name in ("drift_psi_warn", "drift_psi_alert", "drift_rate_warn", "drift_rate_alert"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} = {getattr(self, name)}: must be positive (CTMWA_{name.upper()})")
        for warn, alert in (("drift_psi_warn", "drift_psi_alert"), ("drift_rate_warn", "drift_rate_alert")):
            if getattr(self, alert) < getattr(self, warn):
                raise SettingsError(
                    f"{alert} = {getattr(self, alert)} is below {warn} = {getattr(self, warn)}; raise CTMWA_{alert.upper()} or lower CTMWA_{warn.upper()}"
                )
        for name in (
            "shard_retries",
            "retry_delay_minutes",
            "max_fetch_failures",
            "input_wait_hours",
            "baseline_days",
            "drift_min_rows",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} = {getattr(self, name)}: must not be negative (CTMWA_{name.upper()})")
        for name in (
            "input_root",
            "output_root",
            "models_root",
            "model_version",
            "queue",
            "pool",
            "id_column",
            "text_column",
            "image_column",
        ):
            if not getattr(self, name):
                raise SettingsError(f"{name} is empty; set CTMWA_{name.upper()} or leave it unset for the default")
        if self.format not in OUTPUT_FORMATS:
            raise SettingsError(f"format {self.format!r} unknown; set CTMWA_FORMAT to one of {list(OUTPUT_FORMATS)}")
        try:
            AddressPolicy(parse_list(self.allow_image_hosts))
        except ValueError as e:
            raise SettingsError(f"{e} (CTMWA_ALLOW_IMAGE_HOSTS, comma-separated)") from e
        if "{date}" not in self.partition_template:
            raise SettingsError(f"partition_template {self.partition_template!r} has no {{date}}; e.g. 'dt={{date}}'")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Defaults, then `CTMWA_*` environment variables, then `overrides` (e.g. a DAG run's params; None values and
        keys that are not settings are ignored, so a run's whole params dict can be passed)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _coerce(f, raw.strip(), f"environment variable {ENV_PREFIX}{f.name.upper()}")
        for key, value in (overrides or {}).items():
            field = _FIELDS.get(key)
            if field is not None and value is not None and value != "":
                values[key] = _coerce(field, value, f"param {key!r}")
        return cls(**values)

    def input_path(self, date: str) -> str:
        """The input partition of one day (YYYY-MM-DD)."""
        from ctmwa_batch.io.storage import join  # refuses a query string rather than appending to it

        return join(self.input_root, self.partition_template.format(date=date))

    @property
    def passthrough_columns(self) -> tuple[str, ...]:
        """The passthrough setting as a tuple of column names."""
        return tuple(c.strip() for c in self.passthrough.split(",") if c.strip())

    def score_config(self) -> ScoreConfig:
        """The scorer's configuration these settings ask for."""
        return ScoreConfig(
            device=self.device,
            batch_size=self.batch_size,
            precision=self.precision,
            id_column=self.id_column,
            text_column=self.text_column,
            image_column=self.image_column,
            passthrough=self.passthrough_columns,
            fetch_concurrency=self.fetch_concurrency,
            max_fetch_failures=self.max_fetch_failures,
            max_image_bytes=self.max_image_bytes,
            allow_image_hosts=parse_list(self.allow_image_hosts),
            image_roots=parse_list(self.image_roots),
        )

    def job_config(self, overwrite: bool = False) -> JobConfig:
        """The scoring job's configuration (the scorer's, plus how partitions are cut and whether to rescore)."""
        return JobConfig(
            score=self.score_config(),
            overwrite=overwrite,
            max_rows_per_shard=self.max_rows_per_shard,
            format=self.format,
            catalog=self.catalog or None,
            staging=self.staging or None,
            keep_embeddings=self.keep_embeddings,
            embedding_reuse=self.embedding_reuse,
        )

    def scores_root(self) -> str:
        """Where the committed partitions' receipts are (the health report's input): output_root for Parquet, the
        staging location or the table's data root for a table (ctmwa_batch.io.tables.scores_root)."""
        if self.format == "parquet":
            return self.output_root
        from ctmwa_batch.io.tables import scores_root

        return scores_root(self.format, self.output_root, self.catalog or None, self.staging or None)

    def scoring_task_kwargs(self) -> dict[str, Any]:
        """Operator arguments that place a scoring task: queue and pool always, executor and pod template when set."""
        kwargs: dict[str, Any] = {"queue": self.queue, "pool": self.pool}
        if self.executor:
            kwargs["executor"] = self.executor
        if self.pod_template_file:
            kwargs["executor_config"] = {"pod_template_file": self.pod_template_file}
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (what a task logs and hands on through XCom)."""
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

# The settings a DAG run may override through its params (the ones read at task run time), with the help text the
# Airflow trigger form shows. A null param leaves the deployment's value (environment variable or default).
RUN_OVERRIDES = {
    "input_root": "posts partitions root (path or URI); null = CTMWA_INPUT_ROOT",
    "output_root": "scores root (path or URI); null = CTMWA_OUTPUT_ROOT",
    "models_root": "published models root; null = CTMWA_MODELS_ROOT",
    "model_version": "'current' or a published model version; null = CTMWA_MODEL_VERSION (default 'current')",
    "id_column": "the posts' id column; null = CTMWA_ID_COLUMN (default post_id)",
    "text_column": "the posts' text column; null = CTMWA_TEXT_COLUMN (default text)",
    "image_column": "the posts' image column (bytes or path); null = CTMWA_IMAGE_COLUMN (default image)",
    "passthrough": "comma-separated input columns copied to the scores; null = CTMWA_PASSTHROUGH",
    "device": "cuda | cpu | auto; null = CTMWA_DEVICE (default cuda)",
    "batch_size": "rows per ONNX Runtime batch; null = CTMWA_BATCH_SIZE",
    "precision": "encoder variant auto | fp32 | fp16 | int8; null = CTMWA_PRECISION (default auto)",
    "max_rows_per_shard": "rows per scoring task; null = CTMWA_MAX_ROWS_PER_SHARD",
    "max_fetch_failures": "rows per shard committed as image_missing when the image store fails past its retries; null = CTMWA_MAX_FETCH_FAILURES (default 0: fail)",
}


def override_param_specs() -> dict[str, dict[str, Any]]:
    """JSON-schema specs of the override params (name -> Param keyword arguments), for the DAG files to wrap in
    airflow.sdk.Param; this package does not import Airflow."""
    specs = {}
    for name, description in RUN_OVERRIDES.items():
        kind = type(_FIELDS[name].default)
        json_type = {str: "string", int: "integer", float: "number"}[kind]
        spec: dict[str, Any] = {"type": ["null", json_type], "description": description}
        if name == "device":
            spec["enum"] = [None, *DEVICES]
        if name == "precision":
            spec["enum"] = [None, *PRECISIONS]
        if kind is int:
            spec["minimum"] = 0 if name == "max_fetch_failures" else 1
        specs[name] = spec
    return specs


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce(field: dataclasses.Field, value: Any, where: str) -> Any:
    """A setting's value as its field's type; strings from the environment are parsed."""
    kind = type(field.default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise ValueError
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{where} = {value!r}: expected {kind.__name__} like the default {field.default!r}") from e
    raise AssertionError(f"setting {field.name} has an unsupported type {kind}")  # internal: add a branch above
