"""`score_partition`: the scoring of one posts partition as a TaskGroup inside your own DAG.

    plan -> shards -> score_shard (mapped: one task per shard) -> commit -> health_report

The way astronomer-cosmos renders a dbt project: the group sits between your own tasks (`load >> group >> rollup`),
building it does no I/O (no listing, no Connection, no model), and every step is an operator of
ctmwa_batch.airflow.operators. Airflow's limits the layout respects: mapping inside a mapped group is not allowed (so
call score_partition once per partition, or see dags/ctmwa_backfill.py for ranges of days), a task maps at most
`[core] max_map_length` (1,024) shards, queue and pool of the mapped task go in `score_task_args`, and commit runs
after zero shards too (a committed partition is a no-op that still reports).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, TaskGroup, task

from ctmwa_batch.airflow.connections import connection_storage
from ctmwa_batch.airflow.operators import (
    CommitPartitionOperator,
    HealthReportOperator,
    PlanPartitionOperator,
    ScoreShardOperator,
    settings_args,
)


def _output_asset(output: str | None, format: str | None = None, catalog: str | None = None) -> Asset:
    """Asset(output): the scores root or Delta table as a URI (a local path as file://); an Iceberg table as
    iceberg://{catalog}/{namespace.table}."""
    if not output or "{{" in output:
        raise ValueError(
            f"output {output!r} is not a fixed location, so the commit has no Asset to update; pass asset=Asset(...) or asset=None"
        )
    if format == "iceberg":
        return Asset(uri=f"iceberg://{catalog or 'default'}/{output}")
    uri = output if "://" in output else "file://" + os.path.abspath(output)
    return Asset(uri=uri.rstrip("/"))


def score_partition(
    group_id: str,
    *,
    input: str | None = None,
    output: str | None = None,
    bundle: str | None = None,
    models_root: str | None = None,
    model_version: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
    image_column: str | None = None,
    passthrough: str | list[str] | None = None,
    max_rows_per_shard: int | None = None,
    fetch_concurrency: int | None = None,
    max_fetch_failures: int | None = None,
    overwrite: bool | None = None,
    conn_id: str | None = None,
    health_report: bool = True,
    baseline_days: int | None = None,
    fail_on_drift: bool | None = None,
    asset: Asset | bool | None = True,
    score_task_args: Mapping[str, Any] | None = None,
    # tables (ctmwa_batch.io.tables): None = the settings' (CTMWA_FORMAT, CTMWA_CATALOG, CTMWA_STAGING)
    format: str | None = None,
    catalog: str | None = None,
    staging: str | None = None,
    # ---- embeddings (docs/backfill.md)
    keep_embeddings: bool | None = None,
    embedding_reuse: bool | None = None,
    # untrusted image references (docs/untrusted-images.md)
    max_image_bytes: int | None = None,
    allow_image_hosts: str | list[str] | None = None,
    image_roots: str | list[str] | None = None,
    **task_group_kwargs: Any,
) -> TaskGroup:
    """Score one posts partition inside the caller's DAG; returns the TaskGroup (`upstream >> group >> downstream`).

    - `input`: the posts partition, a path or URI, templated (`"s3://lake/posts/dt={{ data_interval_start | ds }}"`).
    - `output`: the scores root; the partition lands at `{output}/model_version={v}/{partition of input}/`.
    - `bundle` (a bundle folder) or `models_root` with `model_version` ("current" follows CURRENT when plan runs).
    - Scoring: `device` (cuda | cpu | auto), `precision`, `batch_size`, `id_column`, `text_column`, `image_column`,
      `passthrough` (input columns copied to the scores), `max_rows_per_shard` (rows per mapped task), `overwrite`.
    - Images by URI: `fetch_concurrency` (GETs in flight per worker), `max_fetch_failures` (rows per shard that may be
      committed as image_missing when the image store fails past its retries; 0: the shard fails and Airflow retries).
    - Untrusted images (docs/untrusted-images.md): `max_image_bytes` (default 32 MiB), `allow_image_hosts` (internal
      hosts, host:port, addresses or CIDRs http(s) images may reach), `image_roots` (folders local image paths may be
      read from besides a local input's own); a list or a comma-separated string.
    - `conn_id`: an Airflow Connection (e.g. type aws, with `endpoint_url` in its extra) that gives the storage of
      input, output, models and image URIs; resolved inside each task, never when the DAG is parsed.
    - `health_report`, `baseline_days`, `fail_on_drift`: the report beside the scores, against the days before.
    - `asset`: what the commit updates (True: `Asset(output)`; None: nothing); no event when nothing new landed.
    - `score_task_args`: operator arguments of the mapped score_shard task (queue, pool, executor, executor_config,
      retries, retry_delay, execution_timeout, max_active_tis_per_dag). `task_group_kwargs` go to the TaskGroup.
    - `format` (parquet | delta | iceberg), `catalog` (Iceberg: a pyiceberg catalog name), `staging` (markers and
      receipts of a table output): with a table format `output` is the Delta location or the Iceberg namespace.table,
      and the commit is one table commit of the partition (ctmwa_batch.io.tables).
    - `keep_embeddings`: keep the encoders' outputs beside the scores (a later head with the same encoders then
      rescores the partition with the head alone); `embedding_reuse=False`: run the encoders on every row.

    Arguments left at None come from the deployment settings (a run's params, then `CTMWA_*` variables, then the
    defaults of ctmwa_batch.settings: model_version "current", device "cuda", precision "auto"...). The group's last
    task returns the commit summary (partition, model_version, output_dir, rows by status), with the health
    report's fields when there is one: downstream tasks pull it as the group's result.
    """
    if bundle and (models_root or model_version):
        raise ValueError("give bundle= (a bundle folder) or models_root= with model_version=, not both")
    outlets = (
        [] if asset is None or asset is False else [_output_asset(output, format, catalog) if asset is True else asset]
    )
    options = {
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "id_column": id_column,
        "text_column": text_column,
        "image_column": image_column,
        "passthrough": passthrough,
        "max_rows_per_shard": max_rows_per_shard,
        "fetch_concurrency": fetch_concurrency,
        "max_fetch_failures": max_fetch_failures,
        "format": format,
        "catalog": catalog,
        "staging": staging,
        "keep_embeddings": keep_embeddings,
        "embedding_reuse": embedding_reuse,
        "max_image_bytes": max_image_bytes,
        "allow_image_hosts": allow_image_hosts,
        "image_roots": image_roots,
    }
    with TaskGroup(group_id, **task_group_kwargs) as group:
        plan_args: dict[str, Any] = {"input": input, "output": output, "bundle": bundle, "models_root": models_root}
        plan_args |= {"model_version": model_version, "overwrite": overwrite, **options}
        report_args: dict[str, Any] = {"output": output, "baseline_days": baseline_days, "fail_on_drift": fail_on_drift}
        report_args["settings"] = {"format": format, "catalog": catalog, "staging": staging}
        _partition_tasks(plan_args, conn_id, score_task_args, outlets, report_args if health_report else None)
    return group


def _partition_tasks(
    plan_args: dict[str, Any],
    conn_id: str | None,
    score_task_args: Mapping[str, Any] | None,
    outlets: list[Any],
    report_args: dict[str, Any] | None,
) -> None:
    """plan >> score_shard (mapped over the plan's shards) >> commit [>> health_report], in the open TaskGroup."""
    plan = PlanPartitionOperator(task_id="plan", conn_id=conn_id, **plan_args)

    @task(task_id="shards")
    def shards(planned: dict) -> list:
        """The shard indexes score_shard maps over (none when the partition is already committed)."""
        return list(planned["shards"])

    scored = ScoreShardOperator.partial(
        task_id="score_shard", planned=plan.output, conn_id=conn_id, **dict(score_task_args or {})
    ).expand(shard_index=shards(plan.output))  # type: ignore[arg-type]  # an XComArg: a dict when the task runs
    commit = CommitPartitionOperator(task_id="commit", planned=plan.output, conn_id=conn_id, outlets=outlets)
    scored >> commit
    if report_args is not None:
        HealthReportOperator(task_id="health_report", summary=commit.output, conn_id=conn_id, **report_args)


def result_of(group: TaskGroup) -> Any:
    """The group's result for downstream tasks (an XComArg): the output of its last task, the commit summary (with
    the health report's fields when the group has one), e.g. `rollup(result_of(scoring))`."""
    (last,) = group.get_leaves()
    return last.output


def _range_tasks(conn_id: str | None, bundle: str | None, outlets: list) -> tuple:
    """score_range's tasks (plan, chunks, score_days, report, health), each a call into ctmwa_batch.scoring.orchestrate
    under the group's Connection."""

    @task
    def plan(explicit: dict, params=None) -> dict:
        """Resolve the model and list the days that need scoring, in at most max_map_length chunks."""
        from ctmwa_batch.scoring import orchestrate

        with connection_storage(conn_id):
            return orchestrate.plan_backfill(params, explicit, bundle=bundle)

    @task
    def chunks(backfill: dict) -> list:
        """The chunks of days score_days maps over (none when every day is committed or missing)."""
        return [list(chunk) for chunk in backfill["chunks"]]

    @task(outlets=outlets)
    def score_days(backfill: dict, dates: list, outlet_events=None) -> list:
        """Score and commit each day of the chunk; a retry skips the shards and days that finished."""
        from ctmwa_batch.scoring import orchestrate

        with connection_storage(conn_id):
            summaries = orchestrate.score_days(backfill, dates)
        for outlet in outlets:
            outlet_events[outlet].extra = orchestrate.asset_extra(summaries)
        return summaries

    @task(trigger_rule="none_failed")  # also when no day needed scoring (zero mapped tasks)
    def report(backfill: dict, results) -> dict:
        """Per-day table of the scored days, plus the days left alone (committed before, or no input)."""
        from ctmwa_batch.scoring import orchestrate

        return orchestrate.report_backfill(backfill, list(results or []))

    @task(trigger_rule="none_failed")
    def health(backfill: dict) -> dict:
        """One health report for the whole range; with fail_on_drift an alert fails this task."""
        from airflow.sdk.exceptions import AirflowFailException

        from ctmwa_batch.scoring import orchestrate

        with connection_storage(conn_id):
            result = orchestrate.health_report_backfill(backfill)
        if result["fail"]:
            raise AirflowFailException(result["failure"])
        return result

    return plan, chunks, score_days, report, health


def score_range(
    group_id: str,
    *,
    start_date: str | None = None,
    end_date: str | None = None,
    input_root: str | None = None,
    partition_template: str | None = None,
    output: str | None = None,
    bundle: str | None = None,
    models_root: str | None = None,
    model_version: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
    image_column: str | None = None,
    passthrough: str | list[str] | None = None,
    max_rows_per_shard: int | None = None,
    fetch_concurrency: int | None = None,
    max_fetch_failures: int | None = None,
    overwrite: bool | None = None,
    on_missing: str | None = None,
    conn_id: str | None = None,
    health_report: bool = True,
    baseline_days: int | None = None,
    fail_on_drift: bool | None = None,
    asset: Asset | bool | None = True,
    score_task_args: Mapping[str, Any] | None = None,
    # tables (ctmwa_batch.io.tables): None = the settings' (CTMWA_FORMAT, CTMWA_CATALOG, CTMWA_STAGING)
    format: str | None = None,
    catalog: str | None = None,
    staging: str | None = None,
    # ---- embeddings (docs/backfill.md)
    keep_embeddings: bool | None = None,
    embedding_reuse: bool | None = None,
    # untrusted image references (docs/untrusted-images.md)
    max_image_bytes: int | None = None,
    allow_image_hosts: str | list[str] | None = None,
    image_roots: str | list[str] | None = None,
    **task_group_kwargs: Any,
) -> TaskGroup:
    """Score a range of days with one model, in bounded parallel, skipping days already committed for it; returns
    the TaskGroup: plan -> chunks -> score_days (mapped: one task per day, or per chunk of days when the range is
    longer than max_map_length) -> report, health_report.

    Mapping inside a mapped group is not allowed, so a range cannot be a mapped score_partition: here each mapped
    task scores whole days (`{input_root}/{partition_template}` with each date), shard after shard. `start_date` and
    `end_date` (YYYY-MM-DD, both included; templated) default to the run's params of those names, `on_missing`
    ("skip" or "fail") to the param or "skip". The other arguments are score_partition's; `asset` gets one event per
    mapped task, listing the days it committed. The model is resolved once, when plan runs.
    """
    if bundle and (models_root or model_version):
        raise ValueError("give bundle= (a bundle folder) or models_root= with model_version=, not both")
    outlets = (
        [] if asset is None or asset is False else [_output_asset(output, format, catalog) if asset is True else asset]
    )
    explicit = {
        "start_date": start_date,
        "end_date": end_date,
        "overwrite": overwrite,
        "on_missing": on_missing,
        "input_root": input_root,
        "partition_template": partition_template,
        **settings_args(
            output,
            models_root,
            model_version,
            device=device,
            precision=precision,
            batch_size=batch_size,
            id_column=id_column,
            text_column=text_column,
            image_column=image_column,
            passthrough=passthrough,
            max_rows_per_shard=max_rows_per_shard,
            fetch_concurrency=fetch_concurrency,
            max_fetch_failures=max_fetch_failures,
            format=format,
            catalog=catalog,
            staging=staging,
            max_image_bytes=max_image_bytes,
            allow_image_hosts=allow_image_hosts,
            image_roots=image_roots,
            baseline_days=baseline_days,
            fail_on_drift=fail_on_drift,
            keep_embeddings=keep_embeddings,
            embedding_reuse=embedding_reuse,
        ),
    }
    plan, chunks, score_days, report, health = _range_tasks(conn_id, bundle, outlets)
    with TaskGroup(group_id, **task_group_kwargs) as group:
        planned = plan(explicit)
        results = (
            score_days.override(**dict(score_task_args or {})).partial(backfill=planned).expand(dates=chunks(planned))
        )
        report(planned, results)
        if health_report:
            results >> health.override(task_id="health_report")(planned)
    return group
