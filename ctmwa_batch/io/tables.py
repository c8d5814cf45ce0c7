"""Scores as lakehouse tables: Apache Iceberg (through a catalog) and Delta Lake (the log in the store itself).

`--format iceberg|delta` keeps the job's plan -> shards -> commit protocol and changes where the rows become visible:

- a shard writes one Parquet data file under the table's location with a name of its own
  (`part-{shard:05d}-{plan}-{attempt}.parquet`), then its marker (`_shards/{plan}-{shard:05d}.json`, naming the file);
  nothing is visible to a table reader yet, and a file is never overwritten once written;
- `commit` adds exactly the files the markers name in ONE table commit that replaces the partition
  (`model_version` and the input's partition keys) and nothing else: Iceberg `delete(partition) + add_files` in one
  catalog transaction, Delta an overwrite of the partition with add actions (`create_write_transaction`). Both carry
  the plan id (Iceberg snapshot summary `ctmwa.plan-id`, Delta commit info);
- the commit is a no-op when the partition's files in the table are already the markers' files (a rerun, or a rerun
  after a kill that hit after the catalog commit); files of killed attempts never enter the table and are orphans
  (`ctmwa-batch table maintain` removes them, or the format's own orphan cleanup);
- a receipt `_SUCCESS.json` (the same content as the Parquet format's) is written beside the files after the commit,
  for this project's own downstream steps; table readers never read it, and the table, not the receipt, is the truth.

Concurrent commits of other partitions retry (pyiceberg `commit.retry.*`, delta-rs `max_commit_retries`); of the
same partition one wins and the other ends as a no-op (the same plan) or with `TableCommitConflict`.

Catalogs are configured as pyiceberg configures them (`.pyiceberg.yaml`, `PYICEBERG_CATALOG__<NAME>__*`); the S3
settings a catalog leaves out come from ctmwa_batch.io.storage (AWS_ENDPOINT_URL_S3, keys, region), so one storage
configuration serves the shards, the catalog's FileIO and Delta's object store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch.config import OUTPUT_FORMATS
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io import partitions, storage
from ctmwa_batch.io.partitions import InputFile, PartitionNotReady, PartitionPlan, PartSink

log = logging.getLogger(__name__)

FORMATS = OUTPUT_FORMATS  # --format; parquet (folders with _SUCCESS.json) is the default
TABLE_FORMATS = ("delta", "iceberg")
MODEL_VERSION = "model_version"
PLAN_PROPERTY = "ctmwa.plan-id"  # Iceberg snapshot summary / Delta commit info: the plan a commit published
PARTITION_PROPERTY = "ctmwa.partition"  # model_version=v/dt=... of that commit
STAGING_DIR = "_ctmwa"  # a Delta table's default staging folder (markers and receipts)
ENV_COMMIT_RETRIES = "CTMWA_TABLE_COMMIT_RETRIES"
COMMIT_RETRIES = 8  # commit attempts after a conflict with another partition's commit (bounded, jittered backoff)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TableError(CtmwaError):
    """A table cannot be created, read or committed: names the table, the catalog or store, and the fix."""


class TableCommitConflict(TableError):
    """Another run committed the same partition with other files at the same moment; one set of rows won."""


def check_format(value: str) -> str:
    """`value` if it is a known output format, else ValueError naming them."""
    if value not in FORMATS:
        raise ValueError(f"format {value!r} unknown; use one of {list(FORMATS)}")
    return value


def partition_values(partition: str) -> dict[str, str]:
    """The input partition's keys and values (`dt=2026-11-26/region=eu` -> {dt: ..., region: ...}); a partition that
    is not a hive path (a file's base name) becomes {"partition": name}."""
    values: dict[str, str] = {}
    for segment in partition.strip("/").split("/"):
        key, sep, value = segment.partition("=")
        if not sep:
            return {"partition": partition}
        if not _KEY.match(key) or key == MODEL_VERSION:
            raise TableError(
                f"partition key {key!r} of {partition!r} cannot be a table column; rename the input's partition folders"
            )
        values[key] = value
    return values


@dataclass(frozen=True)
class TableTarget:
    """Where a partition's scores go when they go to a table (JSON-ready: it travels inside the plan)."""

    format: str  # delta | iceberg
    name: str  # Iceberg: namespace.table; Delta: the table's location
    catalog: str | None  # Iceberg: the pyiceberg catalog name (None: pyiceberg's default catalog)
    location: str  # the table's root (a path or URI): data files are written under it
    keys: tuple[str, ...]  # partition columns, in order: model_version, then the input's partition keys
    values: dict[str, str]  # this partition's value of every key
    staging: str | None = None  # where shard markers and commit receipts go; None: beside the data files

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableTarget:
        return cls(
            d["format"],
            d["name"],
            d.get("catalog"),
            d["location"],
            tuple(d["keys"]),
            dict(d["values"]),
            d.get("staging"),
        )

    @property
    def staging_root(self) -> str:
        """The root of the plans' markers and receipts (`_shards/`, `_SUCCESS.json`): the staging location when one
        is set (a store that takes only data files under a table, such as S3 Tables buckets); else Iceberg's data
        root, Delta's `_ctmwa/` (a top-level `_` folder: Delta's vacuum leaves it alone)."""
        return self.staging or _default_staging(self.format, self.location)

    @property
    def receipt_dir(self) -> str:
        """Where the partition's markers and receipt are: `{staging_root}/model_version=V/{partition}` (a job's
        plan has it as its output_dir)."""
        return storage.join(self.staging_root, *(f"{k}={self.values[k]}" for k in self.keys))

    @property
    def data_root(self) -> str:
        """The root the partitions' folders go under (Iceberg's convention `data/`, Delta's the table root)."""
        return storage.join(self.location, "data") if self.format == "iceberg" else self.location

    @property
    def where(self) -> str:
        """The table and its catalog or store, for messages (no secret)."""
        if self.format == "iceberg":
            return f"Iceberg table {self.name!r} (catalog {self.catalog or 'default'!r})"
        return f"Delta table {storage.redact(self.name)!r}"

    def describe(self) -> str:
        """`model_version=v/dt=...` of this partition."""
        return "/".join(f"{k}={self.values[k]}" for k in self.keys)


def _default_staging(format: str, location: str) -> str:
    return storage.join(location, "data") if format == "iceberg" else storage.join(location, STAGING_DIR)


# --------------------------------------------------------------------------------------------------- schemas


def file_schema(target: TableTarget, scores: pa.Schema) -> pa.Schema:
    """The schema of a data file: Iceberg files carry every column (partition values are read from the files'
    statistics); Delta files carry none of the partition columns (they live in the log)."""
    if target.format == "iceberg":
        extra = [pa.field(k, pa.string(), nullable=False) for k in target.keys if k not in scores.names]
        return pa.schema([*scores, *extra], metadata=scores.metadata)
    return pa.schema([f for f in scores if f.name not in target.keys], metadata=scores.metadata)


def table_schema(target: TableTarget, scores: pa.Schema) -> pa.Schema:
    """The table's Arrow schema for these scores: every score column and every partition column."""
    extra = [pa.field(k, pa.string(), nullable=False) for k in target.keys if k not in scores.names]
    return pa.schema([*scores, *extra])


class TableBatches:
    """A sink in front of the Parquet sink: each batch shaped to the data file's schema (partition columns added as
    constants, or dropped)."""

    def __init__(self, sink: Any, schema: pa.Schema, values: dict[str, str]):
        self.sink, self.schema, self.values = sink, schema, values

    def write(self, batch: pa.RecordBatch) -> None:
        columns = []
        for f in self.schema:
            if f.name in self.values and f.name not in batch.schema.names:
                columns.append(pa.array([self.values[f.name]] * batch.num_rows, f.type))
            else:
                columns.append(batch.column(batch.schema.get_field_index(f.name)))
        self.sink.write(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def finish(self) -> None:
        self.sink.finish()


# --------------------------------------------------------------------------------------------------- catalogs


def _s3_properties() -> dict[str, str]:
    """pyiceberg FileIO properties from the storage configuration in force (what a catalog's own config omits)."""
    opts = storage.options()
    props = {}
    endpoint = storage.s3_endpoint(opts)
    if endpoint:
        props["s3.endpoint"] = endpoint
    key = opts.get("access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = opts.get("secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        props["s3.access-key-id"], props["s3.secret-access-key"] = key, secret
    token = opts.get("session_token") or os.environ.get("AWS_SESSION_TOKEN")
    if token:
        props["s3.session-token"] = token
    region = opts.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        props["s3.region"] = region
    return props


_configured_catalogs: dict[str, dict[str, str]] = {}


def configure_catalogs(catalogs: dict[str, dict[str, Any]] | None) -> None:
    """Catalog properties of this process, by catalog name, over pyiceberg's own configuration (an Airflow
    Connection's `iceberg_catalogs` extra, for a task's duration); None clears."""
    global _configured_catalogs
    _configured_catalogs = {
        str(name).lower(): {str(k): str(v) for k, v in (props or {}).items()}
        for name, props in (catalogs or {}).items()
    }


def load_catalog(name: str | None) -> Any:
    """The pyiceberg catalog `name` (None: pyiceberg's default) from pyiceberg's own configuration, read now
    (`.pyiceberg.yaml` in PYICEBERG_HOME, ~ or the working folder; `PYICEBERG_CATALOG__<NAME>__*`), with the S3
    settings it leaves out taken from the storage configuration."""
    try:
        from pyiceberg.catalog import load_catalog as pyiceberg_load
        from pyiceberg.utils.config import Config
    except ImportError as e:  # pragma: no cover - the cluster extra installs it
        raise TableError("Iceberg tables need pyiceberg: pip install 'ctmwa-batch[tables]'") from e
    config = Config()
    name = name or config.get_default_catalog_name()
    properties: dict[str, Any] = {
        **dict(config.get_catalog_config(name) or {}),
        **_configured_catalogs.get(name.lower(), {}),
    }
    if not properties:
        upper = name.upper()
        raise TableError(
            f"Iceberg catalog {name!r} is not configured; configure it as pyiceberg does (.pyiceberg.yaml, or e.g. "
            f"PYICEBERG_CATALOG__{upper}__TYPE=sql PYICEBERG_CATALOG__{upper}__URI=sqlite:////path/catalog.db "
            f"PYICEBERG_CATALOG__{upper}__WAREHOUSE=file:///path/warehouse) and pass --catalog {name}"
        )
    properties = {**_s3_properties(), **properties}
    try:
        return pyiceberg_load(name, **properties)
    except Exception as e:
        raise _catalog_error(e, name, "load") from e


def _catalog_error(e: BaseException, catalog: str | None, doing: str, table: str | None = None) -> TableError:
    """One line for a catalog's failure: the catalog, the table, what failed and the fix; never a secret."""
    kind = type(e).__name__
    text = storage.redact(str(e)).splitlines()[0][:200] if str(e) else kind
    what = f"Iceberg catalog {catalog or 'default'!r}" + (f", table {table!r}" if table else "")
    if kind in ("ConnectionError", "ConnectTimeout", "MaxRetryError", "NewConnectionError") or "Connection" in text:
        fix = "check the catalog's uri and that it is up, then rerun (nothing was committed)"
    elif kind in ("UnauthorizedError", "ForbiddenError", "OAuthError") or "401" in text or "403" in text:
        fix = "check the catalog's credential / token (PYICEBERG_CATALOG__<NAME>__CREDENTIAL or .pyiceberg.yaml)"
    elif "OperationalError" in kind or "sqlite" in text.lower():
        fix = "check the SQL catalog's uri (the database must be reachable and writable)"
    else:
        fix = "check the catalog's configuration (.pyiceberg.yaml / PYICEBERG_CATALOG__*) and rerun"
    return TableError(f"{what}: {doing} failed ({kind}: {text}); {fix}")


def _identifier(name: str) -> tuple[str, str]:
    namespace, sep, table = name.rpartition(".")
    if not sep or not namespace or not table:
        raise TableError(
            f"--output {name!r} is not an Iceberg table identifier; give namespace.table, e.g. lake.scores"
        )
    return namespace, table


def open_iceberg(target: TableTarget) -> Any:
    """The Iceberg table of `target`, loaded from its catalog now."""
    catalog = load_catalog(target.catalog)
    try:
        return catalog.load_table(target.name)
    except Exception as e:
        if type(e).__name__ == "NoSuchTableError":
            raise TableError(f"{target.where} does not exist; score a partition into it first") from e
        raise _catalog_error(e, target.catalog, "load", target.name) from e


def delta_storage_options() -> dict[str, str]:
    """delta-rs storage options from the storage configuration in force (an empty dict for AWS's defaults)."""
    opts = storage.options()
    out: dict[str, str] = {}
    endpoint = storage.s3_endpoint(opts)
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    for key, env in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
        ("region", "AWS_REGION"),
    ):
        value = opts.get(key) or os.environ.get(env)
        if value:
            out[env] = value
    out.setdefault("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return out


def _delta_uri(location: str) -> str:
    return location if storage.is_uri(location) else os.path.abspath(location)


def _open_delta(location: str) -> Any:
    from deltalake import DeltaTable

    try:
        return DeltaTable(_delta_uri(location), storage_options=delta_storage_options())
    except Exception as e:
        if type(e).__name__ == "TableNotFoundError":
            return None
        raise _delta_error(e, location, "open") from e


def _delta_error(e: BaseException, location: str, doing: str) -> TableError:
    text = storage.redact(str(e)).splitlines()[0][:200] if str(e) else type(e).__name__
    return TableError(
        f"Delta table {storage.redact(location)!r} at the store {storage.redact(storage.endpoint())}: {doing} failed "
        f"({type(e).__name__}: {text}); check the location, the store and its credentials, then rerun "
        "(nothing was committed)"
    )


# --------------------------------------------------------------------------------------------------- prepare


def prepare(
    format: str,
    output: str,
    catalog: str | None,
    model_version: str,
    partition: str,
    scores: pa.Schema,
    staging: str | None = None,
) -> TableTarget:
    """Get the table ready for a partition of these scores: create it when missing (partitioned by model_version and
    the input's partition keys), add new score columns by schema evolution (a model with other labels), and refuse a
    table that cannot take them, before anything is written."""
    values = {MODEL_VERSION: model_version, **partition_values(partition)}
    keys = tuple(values)
    if format == "iceberg":
        target = _prepare_iceberg(output, catalog, keys, values, scores)
    elif format == "delta":
        target = _prepare_delta(output, keys, values, scores)
    else:
        raise ValueError(f"format {format!r} is not a table format; use one of {list(TABLE_FORMATS)}")
    return replace(target, staging=storage.check_location(staging) if staging else None)


def _prepare_iceberg(
    name: str, catalog_name: str | None, keys: tuple[str, ...], values: dict[str, str], scores: pa.Schema
) -> TableTarget:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

    namespace, _ = _identifier(name)
    catalog = load_catalog(catalog_name)
    probe = TableTarget("iceberg", name, catalog_name, "", keys, values)
    wanted = table_schema(probe, scores)
    try:
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            with contextlib.suppress(NamespaceAlreadyExistsError):
                catalog.create_namespace_if_not_exists(namespace)
            try:
                with catalog.create_table_transaction(name, schema=wanted) as tx:
                    with tx.update_spec() as spec:
                        for key in keys:
                            spec.add_identity(key)
                log.info("created %s partitioned by %s", probe.where, list(keys))
            except TableAlreadyExistsError:
                pass  # another worker created it a moment ago
            table = catalog.load_table(name)
    except TableError:
        raise
    except Exception as e:
        raise _catalog_error(e, catalog_name, "create or load", name) from e
    spec_keys = [table.schema().find_field(f.source_id).name for f in table.spec().fields]
    if any(k not in spec_keys for k in keys):
        raise TableError(
            f"Iceberg table {name!r} is partitioned by {spec_keys}, not by {list(keys)}; score into a table partitioned "
            "by model_version and the input's partition keys (a new table name creates one)"
        )
    _evolve_iceberg(table, wanted, name)
    return TableTarget("iceberg", name, catalog_name, table.location(), keys, values)


def _evolve_iceberg(table: Any, wanted: pa.Schema, name: str) -> None:
    from pyiceberg.io.pyarrow import pyarrow_to_schema  # noqa: F401 - import check: pyiceberg with pyarrow

    have = {f.name: f for f in table.schema().as_arrow()}
    missing = [f for f in wanted if f.name not in have]
    for f in wanted:
        if f.name in have and not _same_kind(have[f.name].type, f.type):
            raise TableError(
                f"Iceberg table {name!r} has column {f.name!r} as {have[f.name].type}, these scores need {f.type}; "
                "score into another table, or rename the column in the table"
            )
    if missing:
        try:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(missing))
        except Exception as e:
            raise TableError(
                f"Iceberg table {name!r} cannot take the columns {[f.name for f in missing]} ({type(e).__name__}: "
                f"{str(e)[:160]}); score into another table"
            ) from e
        log.info("Iceberg table %s: added columns %s", name, [f.name for f in missing])


def _same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    def norm(t: pa.DataType) -> str:
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "string"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "binary"
        if pa.types.is_timestamp(t):
            return f"timestamp-{t.tz is not None}"
        return str(t)

    return norm(a) == norm(b)


def _prepare_delta(location: str, keys: tuple[str, ...], values: dict[str, str], scores: pa.Schema) -> TableTarget:
    from deltalake import DeltaTable

    storage.check_location(location)
    target = TableTarget("delta", location, None, location, keys, values)
    wanted = table_schema(target, scores)
    table = _open_delta(location)
    if table is None:
        try:
            DeltaTable.create(
                _delta_uri(location),
                schema=wanted,
                partition_by=list(keys),
                storage_options=delta_storage_options(),
            )
            log.info("created %s partitioned by %s", target.where, list(keys))
        except Exception as e:
            if "already exists" not in str(e).lower():
                raise _delta_error(e, location, "create") from e
        table = _open_delta(location)
    partition_by = list(table.metadata().partition_columns)
    if partition_by != list(keys):
        raise TableError(
            f"Delta table {storage.redact(location)!r} is partitioned by {partition_by}, not by {list(keys)}; score "
            "into a table partitioned by model_version and the input's partition keys (a new location creates one)"
        )
    have = {f.name: f.type for f in pa.schema(table.schema().to_arrow())}
    for f in wanted:
        if f.name in have and not _same_kind(have[f.name], f.type):
            raise TableError(
                f"Delta table {storage.redact(location)!r} has column {f.name!r} as {have[f.name]}, these scores "
                f"need {f.type}; score into another table"
            )
    missing = [f for f in wanted if f.name not in have]
    if missing:  # a model with other labels: its prob_<label> columns, added without rewriting a file
        from deltalake import Schema as DeltaSchema

        if any(not f.nullable for f in missing):
            raise TableError(
                f"Delta table {storage.redact(location)!r} cannot take the required columns "
                f"{[f.name for f in missing if not f.nullable]}; score into another table location"
            )
        try:
            table.alter.add_columns(DeltaSchema.from_arrow(pa.schema(missing)).fields)
        except Exception as e:
            raise _delta_error(e, location, "add the columns " + ", ".join(f.name for f in missing) + " to") from e
        log.info("Delta table %s: added columns %s", storage.redact(location), [f.name for f in missing])
    return target


# --------------------------------------------------------------------------------------------------- shards


def target_of(plan: PartitionPlan) -> TableTarget:
    """The table a plan writes to."""
    assert plan.table is not None, "target_of needs a plan made for a table"
    return TableTarget.from_dict(plan.table)


@contextlib.contextmanager
def part_writer(plan: PartitionPlan, shard_index: int, schema: pa.Schema) -> Iterator[PartSink]:
    """Write one shard's data file under a name no other attempt uses, then its marker (naming the file).

    A file is never overwritten, so a file a commit published stays as it was even when a retry of the same shard
    runs later; an attempt killed or failed leaves an orphan file that no table commit references."""
    fs, path = storage.open_filesystem(data_dir(plan))
    name = f"part-{shard_index:05d}-{plan.plan_id}-{uuid.uuid4().hex[:12]}.parquet"
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:  # on a store there are no folders to make (and S3 Tables buckets refuse folder objects)
        fs.create_dir(path, recursive=True)
    written = f"{path}/.{name}.tmp" if local else f"{path}/{name}"  # one PUT on a store: whole or absent
    started_at, started = time.time(), time.monotonic()
    sink = fs.open_output_stream(written)
    out = PartSink(pq.ParquetWriter(sink, schema, compression="zstd", write_statistics=True))
    try:
        yield out
        out.writer.close()
        sink.close()
        if local:
            fs.move(written, f"{path}/{name}")
    except BaseException:
        with contextlib.suppress(Exception):
            out.writer.close()
        with contextlib.suppress(Exception):
            sink.close()
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_file(written)
        raise
    marker = {
        "shard": shard_index,
        "plan_id": plan.plan_id,
        "part": name,
        "input_rows": plan.shards[shard_index].num_rows,
        "seconds": round(time.monotonic() - started, 3),
        "started_at": round(started_at, 3),
        "finished_at": round(time.time(), 3),
        **out.stats,
    }
    fs, path = storage.open_filesystem(plan.output_dir)
    storage.write_object(fs, f"{path}/{plan.marker_name(shard_index)}", json.dumps(marker, sort_keys=True).encode())


# --------------------------------------------------------------------------------------------------- commit


def data_dir(plan: PartitionPlan) -> str:
    """Where a plan's data files go: the partition's folder under the table's data root."""
    target = target_of(plan)
    return partitions.output_dir(target.data_root, plan.model_version, plan.partition)


def _relative(plan: PartitionPlan, target: TableTarget) -> str:
    """The partition's folder relative to the table root."""
    return data_dir(plan)[len(target.location.rstrip("/")) :].strip("/")


def current_files(target: TableTarget) -> list[str] | None:
    """Base names of the data files of target's partition in the table's current snapshot / version (None: no
    table yet)."""
    if target.format == "iceberg":
        table = open_iceberg(target)
        expr = _iceberg_filter(target)
        try:
            return sorted(os.path.basename(t.file.file_path) for t in table.scan(row_filter=expr).plan_files())
        except Exception as e:
            raise _catalog_error(e, target.catalog, "scan", target.name) from e
    table = _open_delta(target.location)
    if table is None:
        return None
    try:
        files = table.file_uris(file_pruning_predicate=[(k, "=", target.values[k]) for k in target.keys])
    except Exception as e:
        raise _delta_error(e, target.location, "list files of") from e
    return sorted(os.path.basename(f) for f in files)


def _iceberg_filter(target: TableTarget) -> str:
    """The partition as a pyiceberg row filter: `model_version = 'v' AND dt = '...'` (quotes doubled)."""
    return " AND ".join(_equals(k, target.values[k]) for k in target.keys)


def _equals(column: str, value: str) -> str:
    quoted = value.replace("'", "''")
    return f"{column} = '{quoted}'"


def is_committed(plan: PartitionPlan) -> bool:
    """True when the partition's files in the table are all of this plan (its shards' files, or their compaction)
    and the commit's receipt is written. A commit killed between the table commit and the receipt is not done: a
    rerun finishes it from the markers, or, where an --overwrite run has withdrawn them since, rescores the shards and
    replaces the partition with the same rows in one more table commit (never a partial partition either way)."""
    target = target_of(plan)
    names = current_files(target) or []
    if not names or not all(f"-{plan.plan_id}-" in n for n in names):
        return False
    return partitions.read_success(target.receipt_dir) is not None


def begin(plan: PartitionPlan, overwrite: bool = False) -> bool:
    """Get a table partition ready for scoring; False when this plan is committed already (and not `overwrite`)."""
    if not overwrite and is_committed(plan):
        log.info("partition %s already committed to %s: nothing to do", plan.partition, target_of(plan).where)
        return False
    fs, path = storage.open_filesystem(plan.output_dir)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(f"{path}/{partitions.SHARDS_DIR}", recursive=True)
    else:  # a store that takes only data files there (an S3 Tables bucket) fails now, before any shard is scored
        _probe_staging(fs, path, target_of(plan))
    if overwrite:
        for shard in plan.shards:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(f"{path}/{plan.marker_name(shard.index)}")
    return True


def _probe_staging(fs: pafs.FileSystem, path: str, target: TableTarget) -> None:
    """Write and delete a small object where the markers go; a refusal is one line that says to set --staging."""
    probe = f"{path}/{partitions.SHARDS_DIR}/.probe-{uuid.uuid4().hex[:12]}"
    try:
        storage.write_object(fs, probe, b"")
        fs.delete_file(probe)
    except OSError as e:
        denied = "ACCESS_DENIED" in str(e) or "AccessDenied" in str(e)
        if not denied or target.staging:
            raise
        raise TableError(
            f"the store of {target.where} refuses the shards' markers beside the data files ({target.location!r}: "
            "an S3 Tables bucket takes only data files); set --staging (CTMWA_STAGING) to a location of your own, "
            "e.g. s3://lake/ctmwa-staging"
        ) from e


def _markers(plan: PartitionPlan) -> list[dict]:
    markers = [partitions.shard_done(plan, s.index) for s in plan.shards]
    missing = [s.index for s, m in zip(plan.shards, markers) if m is None]
    if missing:
        raise PartitionNotReady(
            f"partition {plan.partition}: shard(s) {missing} of {len(plan.shards)} have not finished; "
            "score them first (a retry of the failed shard tasks is safe)"
        )
    done = [m for m in markers if m is not None]
    output_rows = sum(m.get("output_rows", 0) for m in done)
    if output_rows != plan.num_rows:
        raise PartitionNotReady(
            f"partition {plan.partition}: shards wrote {output_rows} rows for {plan.num_rows} input rows; "
            "rescore with --overwrite"
        )
    return done


def commit_retries() -> int:
    """Commit attempts after a conflict (CTMWA_TABLE_COMMIT_RETRIES, else COMMIT_RETRIES)."""
    raw = os.environ.get(ENV_COMMIT_RETRIES, "")
    try:
        return max(0, int(raw)) if raw else COMMIT_RETRIES
    except ValueError:
        raise CtmwaError(f"{ENV_COMMIT_RETRIES}={raw!r} is not a whole number; unset it or set e.g. 8") from None


def commit(plan: PartitionPlan, extra: dict | None = None) -> dict:
    """Publish the partition in one table commit (the markers' files replace the partition's), then write the
    receipt `_SUCCESS.json` beside the files. Idempotent: a partition whose files are already the markers' is not
    committed again. Returns the receipt's content."""
    target = target_of(plan)
    markers = _markers(plan)
    names = sorted(m["part"] for m in markers)
    fs, path = storage.open_filesystem(plan.output_dir)
    data_fs, data_path = storage.open_filesystem(data_dir(plan))
    receipt = partitions.read_success(plan.output_dir)
    t0 = time.monotonic()
    if current_files(target) == names:
        log.info("partition %s of %s: already committed by plan %s", target.describe(), target.where, plan.plan_id)
        if receipt is not None and sorted(receipt.get("parts", [])) == names:
            return receipt
        version = None
    else:
        with storage.translate_errors(plan.output_dir):
            for name in names:  # a marker whose file is gone cannot be committed
                if data_fs.get_file_info(f"{data_path}/{name}").type != pafs.FileType.File:
                    raise PartitionNotReady(
                        f"partition {plan.partition}: data file {name} of a finished shard is gone; rescore with --overwrite"
                    )
        files = [storage.join(data_dir(plan), n) for n in names]
        properties = {
            PLAN_PROPERTY: plan.plan_id,
            PARTITION_PROPERTY: target.describe(),
            "ctmwa.input-sha256": plan.fingerprint["sha256"],
            "ctmwa.input": storage.redact(plan.input_path),
        }
        if plan.source:
            properties["ctmwa.source"] = json.dumps(plan.source, sort_keys=True)
        if target.format == "iceberg":
            version = _commit_iceberg(target, files, properties, names)
        else:
            version = _commit_delta(target, plan, markers, properties, names)
    success = partitions.success_record(plan, markers, names, extra)
    if data_dir(plan) != plan.output_dir:
        success["data_dir"] = data_dir(plan)  # the parts are there, the receipt in the staging location
    success["table"] = {
        "format": target.format,
        "name": storage.redact(target.name),
        "catalog": target.catalog,
        "location": storage.redact(target.location),
        "partition": target.values,
        "commit_seconds": round(time.monotonic() - t0, 3),
        **({"snapshot_id" if target.format == "iceberg" else "version": version} if version is not None else {}),
    }
    if version is None and receipt is not None:
        success["table"].update({k: v for k, v in receipt.get("table", {}).items() if k in ("snapshot_id", "version")})
    storage.write_object(fs, f"{path}/{partitions.SUCCESS}", json.dumps(success, indent=2, sort_keys=True).encode())
    log.info("committed %s to %s: %d rows", target.describe(), target.where, success["rows"]["output"])
    return success


def _commit_iceberg(target: TableTarget, files: list[str], properties: dict[str, str], names: list[str]) -> int:
    """Delete the partition and add the files in one catalog commit (pyiceberg retries a conflict with another
    partition's commit and validates it); returns the snapshot id."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    table = open_iceberg(target)
    retries = str(commit_retries())
    if table.properties.get("commit.retry.num-retries") != retries:
        with contextlib.suppress(Exception), table.transaction() as tx:
            tx.set_properties({"commit.retry.num-retries": retries, "commit.retry.min-wait-ms": "50"})
        table = open_iceberg(target)
    try:
        with table.transaction() as tx, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Delete operation did not match any records": a first commit
            tx.delete(delete_filter=_iceberg_filter(target), snapshot_properties=properties)
            tx.add_files(file_paths=files, snapshot_properties=properties, check_duplicate_files=False)
    except (CommitFailedException, ValidationException) as e:
        if current_files(target) == names:  # the same plan's files, committed by a concurrent run of it
            return open_iceberg(target).metadata.current_snapshot_id
        raise TableCommitConflict(
            f"partition {target.describe()} of {target.where} was committed by another run at the same moment "
            f"({type(e).__name__}); its rows stand, whole; rerun to replace them"
        ) from e
    except TableError:
        raise
    except Exception as e:
        raise _catalog_error(e, target.catalog, "commit", target.name) from e
    snapshot = table.metadata.current_snapshot_id
    log.info("Iceberg snapshot %s: %s replaced by %d file(s)", snapshot, target.describe(), len(files))
    return snapshot


def _commit_delta(
    target: TableTarget, plan: PartitionPlan, markers: list[dict], properties: dict[str, str], names: list[str]
) -> int:
    """Overwrite the partition with add actions of the files in one Delta commit; returns the version."""
    by_name = {m["part"]: m for m in markers}
    rows = {name: by_name[name].get("output_rows", 0) for name in names}
    return _delta_replace(target, data_dir(plan), rows, properties)


def _delta_replace(target: TableTarget, folder: str, rows: dict[str, int], properties: dict[str, str]) -> int:
    """One Delta commit: the partition of `target` becomes exactly the files `rows` names (in `folder`)."""
    from deltalake import CommitProperties
    from deltalake.transaction import AddAction

    names = sorted(rows)
    table = _open_delta(target.location)
    if table is None:
        raise TableError(f"{target.where} is gone since the plan; rerun")
    fs, path = storage.open_filesystem(folder)
    rel = folder[len(target.location.rstrip("/")) :].strip("/")
    now = int(time.time() * 1000)
    actions = []
    for name in names:
        size = fs.get_file_info(f"{path}/{name}").size
        actions.append(
            AddAction(
                path=f"{rel}/{name}",
                size=size,
                partition_values={k: target.values[k] for k in target.keys},
                modification_time=now,
                data_change=True,
                stats=json.dumps({"numRecords": rows[name]}),
            )
        )
    try:
        table.create_write_transaction(
            actions,
            mode="overwrite",
            schema=table.schema(),
            partition_by=list(target.keys),
            partition_filters=[(k, "=", target.values[k]) for k in target.keys],
            commit_properties=CommitProperties(custom_metadata=properties, max_commit_retries=commit_retries()),
        )
    except Exception as e:
        if type(e).__name__ in ("CommitFailedError",):
            if current_files(target) == names:
                return _open_delta(target.location).version()
            raise TableCommitConflict(
                f"partition {target.describe()} of {target.where} was committed by another run at the same moment "
                f"({type(e).__name__}); its rows stand, whole; rerun to replace them"
            ) from e
        raise _delta_error(e, target.location, "commit") from e
    version = _open_delta(target.location).version()
    log.info("Delta version %s: %s replaced by %d file(s)", version, target.describe(), len(names))
    return version


# --------------------------------------------------------------------------------------------------- sources


def parse_partition(text: str) -> dict[str, str]:
    """`KEY=VALUE[,KEY=VALUE]` -> {key: value}; an error naming the bad item otherwise."""
    values: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key) or not value.strip():
            raise TableError(f"--partition item {item!r} is not KEY=VALUE; e.g. --partition dt=2026-11-26,region=eu")
        values[key] = value.strip()
    if not values:
        raise TableError("--partition is empty; name the rows to score, e.g. --partition dt=2026-11-26")
    return values


def source_files(
    name: str, input_format: str, catalog: str | None, partition: str
) -> tuple[list[InputFile], dict[str, Any], str]:
    """The Parquet data files of one partition of a posts table, pinned to the table's current snapshot (Iceberg)
    or version (Delta), so every shard and every rerun of the plan reads the same rows. Returns the files (as
    partitions.list_input lists them), the pinned source (JSON: format, table, snapshot or version, location) and the
    output partition's name (`dt=.../region=...`)."""
    values = parse_partition(partition)
    out_partition = "/".join(f"{k}={v}" for k, v in values.items())
    if input_format == "iceberg":
        paths, source = _iceberg_source(name, catalog, values)
    elif input_format == "delta":
        paths, source = _delta_source(name, values)
    else:
        raise ValueError(f"input format {input_format!r} is not a table format; use one of {list(TABLE_FORMATS)}")
    if not paths:
        raise TableError(
            f"{source['where']} has no rows in partition {out_partition} at {source['pinned']}; check --partition"
        )
    files = [f for path in sorted(paths) for f in partitions.list_input(path)]
    source = {k: v for k, v in source.items() if k not in ("where", "pinned")}
    return files, source, out_partition


def _iceberg_source(name: str, catalog_name: str | None, values: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    catalog = load_catalog(catalog_name)
    where = f"Iceberg table {name!r} (catalog {catalog_name or 'default'!r})"
    try:
        table = catalog.load_table(name)
    except Exception as e:
        if type(e).__name__ == "NoSuchTableError":
            raise TableError(f"{where} does not exist; check --input and --catalog") from e
        raise _catalog_error(e, catalog_name, "load", name) from e
    identity = {
        table.schema().find_field(f.source_id).name for f in table.spec().fields if str(f.transform) == "identity"
    }
    not_keys = sorted(set(values) - identity)
    if not_keys:
        raise TableError(
            f"{where} is not partitioned by {not_keys} (identity partitions: {sorted(identity)}); --partition names "
            "the table's partition columns"
        )
    snapshot = table.current_snapshot()
    if snapshot is None:
        raise TableError(f"{where} has no snapshot (no rows); check --input")
    target = TableTarget("iceberg", name, catalog_name, table.location(), tuple(values), values)
    tasks = list(table.scan(row_filter=_iceberg_filter(target), snapshot_id=snapshot.snapshot_id).plan_files())
    if any(t.delete_files for t in tasks):
        raise TableError(
            f"{where} has delete files in partition {target.describe()}; compact it first (rewrite the partition), "
            "then score"
        )
    source = {
        "format": "iceberg",
        "table": name,
        "catalog": catalog_name,
        "snapshot_id": snapshot.snapshot_id,
        "location": table.location(),
        "partition": values,
        "where": where,
        "pinned": f"snapshot {snapshot.snapshot_id}",
    }
    return [t.file.file_path for t in tasks], source


def _delta_source(location: str, values: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    where = f"Delta table {storage.redact(location)!r}"
    table = _open_delta(location)
    if table is None:
        raise TableError(f"{where} does not exist; check --input")
    columns = list(table.metadata().partition_columns)
    not_keys = sorted(set(values) - set(columns))
    if not_keys:
        raise TableError(f"{where} is not partitioned by {not_keys} (partition columns: {columns}); fix --partition")
    if "deletionVectors" in (table.protocol().reader_features or []):
        raise TableError(f"{where} uses deletion vectors, which this reader does not apply; compact it first")
    version = table.version()
    paths = table.file_uris(file_pruning_predicate=[(k, "=", v) for k, v in values.items()])
    source = {
        "format": "delta",
        "table": storage.redact(location),
        "version": version,
        "location": _delta_uri(location),
        "partition": values,
        "where": where,
        "pinned": f"version {version}",
    }
    return list(paths), source


# --------------------------------------------------------------------------------------------------- downstream


def open_target(
    format: str, output: str, catalog: str | None, model_version: str, partition: str, staging: str | None = None
) -> TableTarget | None:
    """The target of an existing table for one partition, without creating or changing anything (None: no table);
    `staging` is where its markers and receipts are, when not beside the data files (--staging)."""
    values = {MODEL_VERSION: model_version, **partition_values(partition)}
    if format == "iceberg":
        try:
            table = load_catalog(catalog).load_table(output)
        except TableError:
            raise
        except Exception as e:
            if type(e).__name__ == "NoSuchTableError":
                return None
            raise _catalog_error(e, catalog, "load", output) from e
        return TableTarget("iceberg", output, catalog, table.location(), tuple(values), values, staging)
    if _open_delta(output) is None:
        return None
    return TableTarget("delta", output, None, output, tuple(values), values, staging)


def scores_root(format: str, output: str, catalog: str | None = None, staging: str | None = None) -> str:
    """Where the commit receipts of a scores output live (what the health report and `report --scores` read):
    the root itself for Parquet, else the staging location, else the table's data root."""
    if format == "parquet" or staging:
        return staging or output
    if format == "delta":
        return _default_staging("delta", output)
    table = load_catalog(catalog).load_table(output)
    return _default_staging("iceberg", table.location())


# --------------------------------------------------------------------------------------------------- maintenance


@dataclass(frozen=True)
class MaintainConfig:
    """What `ctmwa-batch table maintain` does to one table."""

    format: str  # delta | iceberg
    table: str  # Delta: the location; Iceberg: namespace.table
    catalog: str | None = None  # Iceberg: the pyiceberg catalog name
    staging: str | None = None  # where the scoring runs kept markers and receipts (None: beside the data files)
    older_than_hours: float = 168.0  # snapshots / versions, orphan files and markers older than this go
    compact_min_files: int = 8  # a partition with at least this many data files is rewritten as one file
    dry_run: bool = False  # say what would go, change nothing


def _partitions_of(target: TableTarget) -> dict[tuple[str, ...], list[str]]:
    """Current data files (full paths) per partition (values of target.keys) of the table."""
    out: dict[tuple[str, ...], list[str]] = {}
    if target.format == "iceberg":
        table = open_iceberg(target)
        spec_names = [table.schema().find_field(f.source_id).name for f in table.spec().fields]
        for task in table.scan().plan_files():
            record = task.file.partition
            key = tuple(str(record[k]) for k in range(len(spec_names)))
            out.setdefault(key, []).append(task.file.file_path)
        return out
    table = _open_delta(target.location)
    actions = pa.table(table.get_add_actions(flatten=True))
    columns = [f"partition.{k}" for k in target.keys]
    for row in actions.select(["path", *columns]).to_pylist():
        key = tuple(str(row[c]) for c in columns)
        path = row["path"]
        out.setdefault(key, []).append(
            path if storage.is_uri(path) or path.startswith("/") else storage.join(target.location, path)
        )
    return out


def _table_target(config: MaintainConfig) -> TableTarget:
    if config.format == "iceberg":
        table = open_iceberg(TableTarget("iceberg", config.table, config.catalog, "", (), {}))
        keys = tuple(table.schema().find_field(f.source_id).name for f in table.spec().fields)
        return TableTarget("iceberg", config.table, config.catalog, table.location(), keys, {}, config.staging)
    table = _open_delta(config.table)
    if table is None:
        raise TableError(f"Delta table {storage.redact(config.table)!r} does not exist; check --table")
    keys = tuple(table.metadata().partition_columns)
    return TableTarget("delta", config.table, None, config.table, keys, {}, config.staging)


def _compact(target: TableTarget, key: tuple[str, ...], files: list[str], dry_run: bool) -> dict[str, Any]:
    """Rewrite one partition's files as one file, committed like a scoring commit (one table commit, the
    partition replaced); the new name keeps the plan id the files share, so a rerun of that plan stays a no-op."""
    part = replace(target, values=dict(zip(target.keys, key)))
    folder = storage.join(part.data_root, *(f"{k}={part.values[k]}" for k in part.keys))  # model_version=v/dt=...
    plans = {os.path.basename(f).split("-")[2] for f in files if os.path.basename(f).startswith("part-")}
    plan_id = plans.pop() if len(plans) == 1 else "compacted"
    entry = {"partition": part.describe(), "files_before": len(files)}
    if dry_run:
        return entry
    tables = []
    for f in files:
        fs, path = storage.open_filesystem(f)
        tables.append(pq.read_table(path, filesystem=fs))
    table = pa.concat_tables(tables, promote_options="default")
    name = f"part-c0000-{plan_id}-{uuid.uuid4().hex[:12]}.parquet"
    out_fs, out_path = storage.open_filesystem(folder)
    if isinstance(out_fs, pafs.LocalFileSystem):
        out_fs.create_dir(out_path, recursive=True)
    with out_fs.open_output_stream(f"{out_path}/{name}") as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=65_536)
    properties = {PARTITION_PROPERTY: part.describe(), "ctmwa.operation": "compact", PLAN_PROPERTY: plan_id}
    if target.format == "iceberg":
        _commit_iceberg(part, [storage.join(folder, name)], properties, [name])
    else:
        _delta_replace(part, folder, {name: table.num_rows}, properties)
    _update_receipt(part, folder, name)
    return {**entry, "files_after": 1, "rows": table.num_rows}


def _update_receipt(part: TableTarget, folder: str, name: str) -> None:
    """The partition's receipt lists the compacted file from now on (the health report reads the files it lists)."""
    receipt_dir = part.receipt_dir
    receipt = partitions.read_success(receipt_dir)
    if receipt is None:
        return
    receipt["parts"] = [name]
    if folder != receipt_dir:
        receipt["data_dir"] = folder
    fs, path = storage.open_filesystem(receipt_dir)
    storage.write_object(fs, f"{path}/{partitions.SUCCESS}", json.dumps(receipt, indent=2, sort_keys=True).encode())


def maintain(config: MaintainConfig) -> dict[str, Any]:
    """Compact partitions of many small files, expire old snapshots (Iceberg) / vacuum (Delta), remove orphan data
    files (files of killed attempts, files of expired snapshots) and old shard markers. Returns what was done."""
    target = _table_target(config)
    cutoff = time.time() - config.older_than_hours * 3600
    report: dict[str, Any] = {"table": target.where, "dry_run": config.dry_run, "compacted": []}
    for key, files in sorted(_partitions_of(target).items()):
        if len(files) >= config.compact_min_files:
            report["compacted"].append(_compact(target, key, files, config.dry_run))
    if target.format == "iceberg":
        from datetime import UTC, datetime

        table = open_iceberg(target)
        current = table.current_snapshot()
        old = [
            s.snapshot_id
            for s in table.snapshots()
            if s.timestamp_ms / 1000 < cutoff and (current is None or s.snapshot_id != current.snapshot_id)
        ]
        report["snapshots_expired"] = len(old)
        if old and not config.dry_run:
            table.maintenance.expire_snapshots().older_than(datetime.fromtimestamp(cutoff, tz=UTC)).commit()
            table = open_iceberg(target)
        referenced = set(table.inspect.all_data_files().column("file_path").to_pylist()) if table.snapshots() else set()
        report["orphans_removed"] = _sweep(target.data_root, referenced, cutoff, config.dry_run)
    else:
        table = _open_delta(target.location)
        removed = table.vacuum(
            retention_hours=int(config.older_than_hours),
            dry_run=config.dry_run,
            enforce_retention_duration=False,
            full=True,  # files no version ever referenced too: the files of killed attempts
        )
        report["orphans_removed"] = len(removed)
        if not config.dry_run:
            table.cleanup_metadata()
    report["markers_removed"] = _sweep_markers(target.staging_root, cutoff, config.dry_run)
    return report


def _sweep(root: str, referenced: set[str], cutoff: float, dry_run: bool) -> int:
    """Delete the .parquet files under `root` that no snapshot references and that are older than `cutoff`."""
    fs, path = storage.open_filesystem(root)
    prefix = root.rstrip("/")[: len(root.rstrip("/")) - len(path.rstrip("/"))] if storage.is_uri(root) else ""
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        full = f"{prefix}{info.path}" if prefix else info.path
        known = full in referenced or f"file://{info.path}" in referenced or info.path in referenced
        if known or (info.mtime is not None and info.mtime.timestamp() > cutoff):
            continue
        removed += 1
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(info.path)
    return removed


def _sweep_markers(root: str, cutoff: float, dry_run: bool) -> int:
    """Delete shard markers older than `cutoff` (a committed plan needs none; a plan older than that is redone)."""
    fs, path = storage.open_filesystem(root)
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        in_shards = f"/{partitions.SHARDS_DIR}/" in info.path and info.base_name.endswith(".json")
        if info.type == pafs.FileType.File and in_shards and info.mtime is not None and info.mtime.timestamp() < cutoff:
            removed += 1
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(info.path)
    return removed
