"""The scoring steps as Airflow operators: plan, score one shard, commit, health report.

Each `execute` is one call into ctmwa_batch.scoring.orchestrate (the same functions the CLI's job uses), with small JSON in
and out through XCom. `score_partition` (ctmwa_batch.airflow.group) wires them into a TaskGroup; use them directly to
lay the steps out another way. Constructing an operator does no I/O: the storage Connection (`conn_id`), the model
and the input are read when the task runs, on the worker. The run-time imports (pyarrow, ONNX Runtime) happen
inside `execute`, so a DAG file that uses these operators parses fast.

Settings left at None come from the deployment (ctmwa_batch.settings: a run's params, then `CTMWA_*` variables,
then the defaults), which is how the shipped DAGs use them; a value given here wins over all of those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from ctmwa_batch.airflow.connections import connection_storage

# Arguments of score_partition and the operators that are settings (ctmwa_batch.settings.Settings fields), by name.
SCORING_OPTIONS = (
    "device",
    "precision",
    "batch_size",
    "id_column",
    "text_column",
    "image_column",
    "passthrough",
    "max_rows_per_shard",
    "fetch_concurrency",
    "max_fetch_failures",
    # tables (ctmwa_batch.io.tables): output format, Iceberg catalog, staging location of markers and receipts
    "format",
    "catalog",
    "staging",
    # ---- embeddings (docs/backfill.md)
    "keep_embeddings",
    "embedding_reuse",
    # untrusted image references (docs/untrusted-images.md)
    "max_image_bytes",
    "allow_image_hosts",
    "image_roots",
)
REPORT_OPTIONS = ("baseline_days", "fail_on_drift")


def settings_args(
    output: str | None = None, models_root: str | None = None, model_version: str | None = None, **options: Any
) -> dict[str, Any]:
    """The explicit settings of a task as Settings field names (output -> output_root); None = not given."""
    unknown = set(options) - set(SCORING_OPTIONS) - set(REPORT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown scoring option(s) {sorted(unknown)}; known: {[*SCORING_OPTIONS, *REPORT_OPTIONS]}")
    for name in ("passthrough", "allow_image_hosts", "image_roots"):
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            options[name] = ",".join(value)  # a list, as Settings keeps them: comma-separated
    return {"output_root": output, "models_root": models_root, "model_version": model_version, **options}


# --------------------------------------------------------------------------------------------------- lineage


def output_location(planned: Mapping[str, Any], output_dir: str) -> str:
    """The dataset a scoring task writes: the table's location for a table output, else the partition's folder."""
    table = (planned.get("plan") or {}).get("table")
    return table["location"] if table else output_dir


def lineage_dataset(location: str) -> Any:
    """An OpenLineage dataset for a path or URI: namespace `s3://bucket` and name `key` for a URI, `file` and the
    absolute path for a local path (the OpenLineage naming conventions)."""
    import os

    from airflow.providers.common.compat.openlineage.facet import Dataset

    location = str(location).rstrip("/")
    if "://" in location:
        scheme, _, rest = location.partition("://")
        if scheme != "file":
            bucket, _, key = rest.partition("/")
            return Dataset(namespace=f"{scheme}://{bucket}", name=key or "/")
        location = rest
    return Dataset(namespace="file", name=os.path.abspath(location))


class _CtmwaOperator(BaseOperator):
    """What the ctmwa operators share: the storage Connection around `run`, and the lineage `run` records."""

    ui_color = "#e8f0fe"

    def __init__(self, *, conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._lineage: tuple[list[str], list[str]] = ([], [])

    def execute(self, context: Any) -> Any:
        with connection_storage(self.conn_id):
            return self.run(context)

    def run(self, context: Any) -> Any:
        raise NotImplementedError

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage inputs and outputs of this run (the OpenLineage provider calls it after a success)."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs, outputs = self._lineage
        return OperatorLineage(
            inputs=[lineage_dataset(p) for p in inputs], outputs=[lineage_dataset(p) for p in outputs]
        )


class PlanPartitionOperator(_CtmwaOperator):
    """Resolve the model and cut one posts partition into shards; returns the plan (small JSON) the other steps take.

    `input`: the partition (path or URI, templated); None = the run's day under the deployment's input root (the
    nightly DAG). `output`: the scores root. `bundle`: a bundle folder, or `models_root` + `model_version` ("current"
    follows CURRENT when the task runs). The scoring options (device, precision, batch_size, id/text/image column,
    passthrough, max_rows_per_shard) travel in the plan to every shard. `overwrite`: rescore a committed partition
    (None = the run's param `overwrite`, else no)."""

    template_fields: Sequence[str] = ("input", "bundle", "settings")

    def __init__(
        self,
        *,
        input: str | None = None,
        output: str | None = None,
        bundle: str | None = None,
        models_root: str | None = None,
        model_version: str | None = None,
        overwrite: bool | None = None,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = {k: kwargs.pop(k) for k in SCORING_OPTIONS if k in kwargs}
        super().__init__(**kwargs)
        if bundle and (models_root or model_version):
            raise ValueError("give bundle= (a bundle folder) or models_root= with model_version=, not both")
        self.input = input
        self.bundle = bundle
        self.overwrite = overwrite
        self.settings = {**settings_args(output, models_root, model_version, **options), **dict(settings or {})}

    def run(self, context: Any) -> dict[str, Any]:
        from ctmwa_batch.scoring import orchestrate

        planned = orchestrate.plan_scoring(
            self.input,
            self.settings,
            context.get("params"),
            context.get("data_interval_start"),
            overwrite=self.overwrite,
            bundle=self.bundle,
        )
        self._lineage = ([planned["input_path"], planned["bundle_dir"]], [])
        return planned


class ScoreShardOperator(_CtmwaOperator):
    """Score one shard of a plan (map it over the plan's shards); a shard already finished is skipped, so retries are
    safe. Returns small stats (rows, statuses, rows/s)."""

    template_fields: Sequence[str] = ("planned", "shard_index")

    def __init__(self, *, planned: Any, shard_index: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.shard_index = shard_index

    def run(self, context: Any) -> dict[str, Any]:
        from ctmwa_batch.scoring import orchestrate

        self._lineage = (
            [self.planned["input_path"], self.planned["bundle_dir"]],
            [output_location(self.planned, self.planned["output_dir"])],
        )
        return orchestrate.score_shard(self.planned, int(self.shard_index))


class CommitPartitionOperator(_CtmwaOperator):
    """Write the partition's `_SUCCESS.json` once every shard finished (trigger rule none_failed: a partition already
    committed maps zero shards and still reports); returns the commit summary (partition, model version, rows per
    status and sentiment, timings). Its outlets get an event whose extra lists the committed partition, unless the
    run committed nothing new."""

    template_fields: Sequence[str] = ("planned",)

    def __init__(self, *, planned: Any, trigger_rule: str = "none_failed", **kwargs: Any) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.planned = planned

    def run(self, context: Any) -> dict[str, Any]:
        from ctmwa_batch.scoring import orchestrate

        summary = orchestrate.commit_day(self.planned)
        self._lineage = (
            [self.planned["input_path"], self.planned["bundle_dir"]],
            [output_location(self.planned, summary["output_dir"])],
        )
        if summary["skipped"]:
            # Nothing new landed: no Asset event (the task runner reads the outlets after execute, from this copy).
            self.outlets = []
        else:
            for outlet in self.outlets:
                context["outlet_events"][outlet].extra = orchestrate.asset_extra([summary])
        return summary


class HealthReportOperator(_CtmwaOperator):
    """Write the partition's health report (report.html, report.json under `_reports/{partition}` beside its scores,
    drift against the `baseline_days` before it) and log its alerts; with `fail_on_drift` an alert fails this task
    (never the scoring: the scores are committed by then). Returns the commit summary with the report's fields added
    (report_dir, html, json, alerts, warnings, notes, fail)."""

    template_fields: Sequence[str] = ("summary", "settings")

    def __init__(
        self,
        *,
        summary: Any,
        output: str | None = None,
        baseline_days: int | None = None,
        fail_on_drift: bool | None = None,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.summary = summary
        self.settings = {
            **settings_args(output, baseline_days=baseline_days, fail_on_drift=fail_on_drift),
            **dict(settings or {}),
        }

    def run(self, context: Any) -> dict[str, Any]:
        from ctmwa_batch.scoring import orchestrate

        health = orchestrate.health_report(self.summary, context.get("params"), self.settings)
        self._lineage = ([self.summary["output_dir"]], [health["report_dir"]] if health["report_dir"] else [])
        if health["fail"]:
            raise AirflowFailException(health["failure"])  # no retry: the same scores drift the same way
        return {**self.summary, **health}
