"""What the Airflow tasks call: one function per task, small JSON in and out, no Airflow import.

The DAG files (dags/) only wire these together. Each function reads the deployment settings (ctmwa_batch.settings)
when it runs, on the worker, with the run's params laid over them, and hands on through XCom only paths, counts and
the partition plan (a few KB), never data. The scoring itself is ctmwa_batch.scoring.job's: `plan`, `score_shard`, `commit`.

Dates: a nightly run scores the UTC day its data interval starts on (a run of the `@daily` schedule that starts at
midnight of the 6th scores dt=<the 5th>); a manual run scores the last complete day before it; the param
`partition_date` names a day outright.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io.partitions import read_success
from ctmwa_batch.io.storage import open_filesystem
from ctmwa_batch.model import registry
from ctmwa_batch.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class InputPartitionMissing(CtmwaError):
    """The input partition of a day has not landed (no folder, no Parquet file, or no ready marker)."""


# --------------------------------------------------------------------------------------------------- dates


def parse_date(value: Any, name: str) -> str:
    """A YYYY-MM-DD string (a date or datetime is accepted too); SettingsError otherwise."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError as e:
        raise SettingsError(f"{name} = {value!r} is not a date; give YYYY-MM-DD") from e


def day_of(interval_start: dt.datetime | None, params: Mapping[str, Any] | None) -> str:
    """The day a nightly run scores: the param `partition_date` if given, else the UTC date its data interval starts on."""
    override = (params or {}).get("partition_date")
    if override:
        return parse_date(override, "partition_date")
    if interval_start is None:
        raise SettingsError(
            "this run has no data interval (triggered without a logical date); pass the param partition_date=YYYY-MM-DD"
        )
    return interval_start.astimezone(dt.UTC).date().isoformat()


def date_range(start: str, end: str) -> list[str]:
    """Every day from start to end, both included."""
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise SettingsError(f"end_date {end} is before start_date {start}; swap them")
    return [(first + dt.timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


# --------------------------------------------------------------------------------------------------- input


def input_state(path: str, marker: str = "") -> str | None:
    """None when the partition at `path` is ready to score, else why not (for the log)."""
    fs, inner = open_filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return "no such folder"
    if info.type == pafs.FileType.File:
        return None if inner.endswith(".parquet") else "not a Parquet file"
    if marker:
        return None if fs.get_file_info(f"{inner}/{marker}").type == pafs.FileType.File else f"no {marker} marker yet"
    for entry in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        rel = entry.path[len(inner) :].lstrip("/")
        if (
            entry.type == pafs.FileType.File
            and rel.endswith(".parquet")
            and not any(s.startswith((".", "_")) for s in rel.split("/"))
        ):
            return None
    return "no .parquet file in it"


def input_ready(interval_start: dt.datetime | None, params: Mapping[str, Any] | None) -> bool:
    """Sensor body of the nightly DAG: has the day's input partition landed?"""
    settings = Settings.load(overrides=params)
    path = settings.input_path(day_of(interval_start, params))
    why = input_state(path, settings.input_ready_marker)
    if why is None:
        logger.info("input partition %s is ready", path)
        return True
    logger.info("waiting for input partition %s: %s", path, why)
    return False


def _require_input(path: str, settings: Settings, date: str | None) -> None:
    why = input_state(path, settings.input_ready_marker)
    if why is not None:
        what = f"input partition for {date}" if date else "input partition"
        raise InputPartitionMissing(
            f"{what} is missing: {path} ({why}); the upstream load has not landed it. "
            "Rerun this task once it exists, or check the input path (CTMWA_INPUT_ROOT / CTMWA_PARTITION_TEMPLATE)"
        )


# --------------------------------------------------------------------------------------------------- models


def resolve_bundle(settings: Settings, verify: bool = True, bundle: str | None = None) -> tuple[str, str]:
    """(bundle folder, model version): the `bundle` folder when given, else the settings' model_version under their
    models root, resolved once per run; `verify` checks every file's checksum (job.plan does that itself, so the
    nightly plan skips it here)."""
    from ctmwa_batch.model.bundle import load_bundle
    from ctmwa_batch.scoring.scorer import require_scoring_bundle

    path = bundle or registry.resolve(settings.models_root, settings.model_version)
    loaded = load_bundle(path, verify=verify)
    require_scoring_bundle(loaded)
    return str(path), loaded.model_version


def score_config(settings: Settings, overwrite: bool = False) -> dict[str, Any]:
    """The scoring job's configuration from the settings (Settings.job_config), as JSON for XCom."""
    return settings.job_config(overwrite).to_dict()


# --------------------------------------------------------------------------------------------------- nightly


def task_settings(explicit: Mapping[str, Any] | None, params: Mapping[str, Any] | None) -> Settings:
    """The settings a task runs with: defaults, then `CTMWA_*` variables, then the run's params, then the task's own
    arguments (`explicit`, e.g. a score_partition group's output or device; None values leave the layer below)."""
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    return Settings.load(overrides={**dict(params or {}), **given})


def partition_date(partition: str) -> str | None:
    """The day a partition path names (its first YYYY-MM-DD, e.g. `region=eu/dt=2026-01-05`), or None."""
    for found in _DATE.finditer(partition):
        try:
            return dt.date.fromisoformat(found.group(0)).isoformat()
        except ValueError:
            continue
    return None


def plan_input(
    input_path: str, settings: Settings, *, overwrite: bool = False, bundle: str | None = None, date: str | None = None
) -> dict[str, Any]:
    """Plan task: resolve the model (the `bundle` folder, else the settings' model_version), plan the partition at
    `input_path` into shards. `shards` is empty when the partition is already committed for this input and model (the
    run is then a no-op) and overwrite is off. `date` is the day it holds (None: read from the partition path)."""
    from ctmwa_batch.scoring import job

    _require_input(input_path, settings, date)
    bundle_dir, version = resolve_bundle(settings, verify=False, bundle=bundle)  # job.plan verifies it
    config = score_config(settings, overwrite)
    plan = job.plan(input_path, settings.output_root, bundle_dir, config=config)
    skip = bool(plan.get("skip", False))
    shards = [] if skip else [s["index"] for s in plan["shards"]]
    if len(shards) > settings.max_map_length:  # Airflow would refuse to expand score_shard over them
        raise SettingsError(
            f"{input_path} cuts into {len(shards)} shards of at most {settings.max_rows_per_shard} rows, more than "
            f"max_map_length = {settings.max_map_length} mapped tasks; raise max_rows_per_shard (or [core] max_map_length with CTMWA_MAX_MAP_LENGTH)"
        )
    if skip:
        logger.info(
            "%s is already committed for model %s at %s: nothing to score (set overwrite to rescore)",
            input_path,
            version,
            plan["output_dir"],
        )
    else:
        logger.info(
            "%s: %d rows in %d shard(s) of at most %d rows, model %s",
            input_path,
            plan["fingerprint"]["num_rows"],
            len(shards),
            settings.max_rows_per_shard,
            version,
        )
    return {
        "date": date or partition_date(plan["partition"]),
        "input_path": input_path,
        "output_dir": plan["output_dir"],
        "bundle_dir": bundle_dir,
        "model_version": version,
        "skip": skip,
        "shards": shards,
        "plan": plan,
        "config": config,
    }


def plan_scoring(
    input_path: str | None,
    explicit: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    interval_start: dt.datetime | None = None,
    *,
    overwrite: bool | None = None,
    bundle: str | None = None,
) -> dict[str, Any]:
    """What a plan task of a score_partition group runs: the settings of the task (`task_settings`), the partition
    (`input_path`, else the run's day under the input root, as `plan_day`), `overwrite` (None: the run's param)."""
    params = dict(params or {})
    settings = task_settings(explicit, params)
    date = None
    if not input_path:
        date = day_of(interval_start, params)
        input_path = settings.input_path(date)
    if overwrite is None:
        overwrite = bool(params.get("overwrite", False))
    return plan_input(input_path, settings, overwrite=overwrite, bundle=bundle, date=date)


def plan_day(interval_start: dt.datetime | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Nightly plan: the day of the data interval (or the param partition_date) under the input root (plan_input)."""
    return plan_scoring(None, None, params, interval_start)


def shards_to_score(planned: Mapping[str, Any]) -> list[int]:
    """What the mapped scoring task expands over: the plan's shard indexes (empty for a no-op run)."""
    return list(planned["shards"])


def score_shard(planned: Mapping[str, Any], shard_index: int) -> dict[str, Any]:
    """Mapped task: score one shard (a finished shard is skipped, so a retry redoes only what is missing)."""
    from ctmwa_batch.scoring import job

    return job.score_shard(dict(planned["plan"]), shard_index, planned["bundle_dir"], dict(planned["config"]))


def commit_day(planned: Mapping[str, Any]) -> dict[str, Any]:
    """Commit task: write _SUCCESS.json last (job.commit); for a skipped run, read the existing one unchanged."""
    from ctmwa_batch.scoring import job

    if planned["skip"]:
        success = read_success(planned["output_dir"])
        if success is None:  # removed between plan and commit: the next run scores it
            raise CtmwaError(f"{planned['output_dir']} lost its _SUCCESS.json after planning; rerun this DAG run")
        return summarize(job.summary(success, planned["output_dir"]), date=planned["date"], skipped=True)
    return summarize(job.commit(dict(planned["plan"])), date=planned["date"], skipped=False)


# --------------------------------------------------------------------------------------------------- backfill


def plan_backfill(
    params: Mapping[str, Any], explicit: Mapping[str, Any] | None = None, *, bundle: str | None = None
) -> dict[str, Any]:
    """Backfill plan task: which days of [start_date, end_date] need scoring for the model, in chunks of days.

    Days already committed for the model (same input fingerprint) are skipped unless overwrite; days without input
    are reported as missing (and fail the run when on_missing is "fail"). Chunks keep the mapped task count within
    Airflow's max_map_length: one day per task until the range is longer than that. start_date, end_date, overwrite,
    on_missing and the settings come from the run's params, overlaid by `explicit` (a score_range group's arguments;
    None values leave the params'); `bundle` is a bundle folder instead of the models root's model_version.
    """
    from ctmwa_batch.io.partitions import plan_partition

    params = {**dict(params or {}), **{k: v for k, v in (explicit or {}).items() if v is not None}}
    settings = Settings.load(overrides=params)
    days = date_range(
        parse_date(params.get("start_date"), "start_date"), parse_date(params.get("end_date"), "end_date")
    )
    overwrite = bool(params.get("overwrite", False))
    on_missing = params.get("on_missing") or "skip"
    if on_missing not in ("skip", "fail"):
        raise SettingsError(f"on_missing = {on_missing!r}; use 'skip' or 'fail'")
    bundle_dir, version = resolve_bundle(settings, verify=False, bundle=bundle)  # job.score_partition verifies it
    entries: list[dict[str, Any]] = []
    for date in days:
        path = settings.input_path(date)
        why = input_state(path, settings.input_ready_marker)
        if why is not None:
            entries.append({"date": date, "input_path": path, "state": "missing", "why": why})
            continue
        plan = plan_partition(path, settings.output_root, version, settings.max_rows_per_shard)
        committed = _committed(plan, settings) and not overwrite
        if committed and settings.keep_embeddings:  # asked to keep embeddings: a day committed without them is todo
            committed = bool((read_success(plan.output_dir) or {}).get("embeddings"))
        state = "committed" if committed else "todo"
        entries.append(
            {"date": date, "input_path": path, "state": state, "rows": plan.num_rows, "shards": len(plan.shards)}
        )
    missing = [e["date"] for e in entries if e["state"] == "missing"]
    if missing and on_missing == "fail":
        raise InputPartitionMissing(
            f"{len(missing)} day(s) have no input partition: {missing[:10]}{' ...' if len(missing) > 10 else ''}; set on_missing to 'skip' to score the others"
        )
    todo = [e["date"] for e in entries if e["state"] == "todo"]
    per_task = max(1, math.ceil(len(todo) / settings.max_map_length))
    chunks = [todo[k : k + per_task] for k in range(0, len(todo), per_task)]
    counts = {s: sum(e["state"] == s for e in entries) for s in ("todo", "committed", "missing")}
    logger.info(
        "backfill %s..%s with model %s: %s; %d task(s) of %d day(s)",
        days[0],
        days[-1],
        version,
        counts,
        len(chunks),
        per_task,
    )
    for e in entries:
        if e["state"] == "missing":
            logger.warning("no input for %s: %s (%s)", e["date"], e["input_path"], e["why"])
    return {
        "start_date": days[0],
        "end_date": days[-1],
        "bundle_dir": bundle_dir,
        "model_version": version,
        "overwrite": overwrite,
        "days": entries,
        "counts": counts,
        "chunks": chunks,
        "settings": _run_overrides(params),
    }


def _committed(plan: Any, settings: Settings) -> bool:
    """Whether a day's plan is committed: its _SUCCESS.json (Parquet), or the table's partition holding its files."""
    from ctmwa_batch.io import partitions

    if settings.format == "parquet":
        return partitions.is_committed(plan)
    from ctmwa_batch.io import tables

    target = tables.open_target(
        settings.format,
        settings.output_root,
        settings.catalog or None,
        plan.model_version,
        plan.partition,
        settings.staging or None,
    )
    return target is not None and tables.is_committed(dataclasses.replace(plan, table=target.to_dict()))


def chunks_to_score(backfill: Mapping[str, Any]) -> list[list[str]]:
    """What the backfill's mapped task expands over: chunks of days (empty when nothing needs scoring)."""
    return [list(chunk) for chunk in backfill["chunks"]]


def score_days(backfill: Mapping[str, Any], dates: list[str]) -> list[dict[str, Any]]:
    """Backfill mapped task: score and commit each day of a chunk with the run's model (one bundle check, one set of
    sessions and one decoding pool per day, whatever its shard count)."""
    from ctmwa_batch.scoring import job

    settings = Settings.load(overrides=backfill["settings"])
    config = score_config(settings, backfill["overwrite"])
    out = []
    for date in dates:
        input_path = settings.input_path(date)
        _require_input(input_path, settings, date)
        result = job.score_partition(input_path, settings.output_root, backfill["bundle_dir"], config)
        skipped = bool(result.get("skipped"))
        out.append(summarize(result, date=date, skipped=skipped))
        if skipped:
            logger.info("%s was committed since the backfill was planned; leaving it", date)
        else:
            logger.info("%s committed: %s", date, out[-1]["rows"])
    return out


def _run_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that override settings (handed to the mapped tasks, so they see what the plan saw)."""
    names = set(Settings.__dataclass_fields__)
    return {k: v for k, v in params.items() if k in names and v not in (None, "")}


# --------------------------------------------------------------------------------------------------- reports


def summarize(summary: Mapping[str, Any], *, date: str, skipped: bool) -> dict[str, Any]:
    """A day's line for reports and the Asset: `job.summary` of its partition, with the date and whether it was skipped."""
    rows = summary["rows"]
    return {
        "date": date,
        "partition": summary["partition"],
        "model_version": summary["model_version"],
        "output_dir": summary["output_dir"],
        "committed_at": summary["committed_at"],
        "skipped": skipped,
        "shards": summary["parts"],
        "rows": {k: v for k, v in rows.items() if k != "by_sentiment"},
        "sentiments": dict(rows.get("by_sentiment") or {}),
        "timings": dict(summary["timings"]),
        **({"table": dict(summary["table"])} if summary.get("table") else {}),  # format, table, snapshot / version
        "source": summary.get("source", "posts"),  # "embeddings": scored by the head alone from kept embeddings
    }


def asset_extra(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The extra of the scores Asset event: which partitions of which model were committed, and where."""
    return {
        "partitions": [
            {
                "date": s["date"],
                "partition": s["partition"],
                "model_version": s["model_version"],
                "output_dir": s["output_dir"],
                "rows": (s["rows"] or {}).get("output"),
            }
            for s in summaries
            if not s.get("skipped")
        ]
    }


def format_report(summaries: list[Mapping[str, Any]], labels: list[str] | None = None) -> str:
    """A fixed-width table: one line per day with rows per status, sentiment distribution and throughput."""
    from ctmwa_batch.schema import STATUSES

    if labels is None:
        seen: dict[str, None] = {}
        for s in summaries:
            seen.update(dict.fromkeys(s.get("sentiments") or {}))
        labels = list(seen)
    head = ["date", "model", "shards", "rows", *STATUSES, *labels, "rows/s", "run"]
    lines = []
    for s in sorted(summaries, key=lambda s: s["date"] or s["partition"]):
        rows = s.get("rows") or {}
        by_status = rows.get("by_status") or {}
        sentiments = s.get("sentiments") or {}
        rate = (s.get("timings") or {}).get("rows_per_second") or (s.get("timings") or {}).get(
            "rows_per_second_per_shard"
        )
        lines.append(
            [
                s["date"] or s["partition"],
                str(s.get("model_version") or "")[:8],
                str(s.get("shards") or ""),
                str(rows.get("output", rows.get("input", ""))),
                *[str(by_status.get(k, 0)) for k in STATUSES],
                *[str(sentiments.get(k, 0)) for k in labels],
                "" if rate is None else f"{rate:,.0f}",
                "skipped" if s.get("skipped") else "scored",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    last = len(head) - 1

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if 2 <= i < last else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])


def report(summaries: list[Mapping[str, Any]] | Mapping[str, Any], title: str = "ctmwa scores") -> dict[str, Any]:
    """Report task: log the table (it lands in the task log) and return the totals."""
    items = [summaries] if isinstance(summaries, Mapping) else list(summaries)
    table = format_report(items)
    logger.info("%s\n%s", title, table)
    totals: dict[str, Any] = {
        "days": len(items),
        "scored": sum(not s.get("skipped") for s in items),
        "rows": 0,
        "by_status": {},
        "sentiments": {},
    }
    for s in items:
        rows = s.get("rows") or {}
        totals["rows"] += int(rows.get("output", 0) or 0)
        for key, source in (("by_status", rows.get("by_status") or {}), ("sentiments", s.get("sentiments") or {})):
            for k, v in source.items():
                totals[key][k] = totals[key].get(k, 0) + int(v)
    totals["table"] = table
    return totals


def report_backfill(backfill: Mapping[str, Any], results: list[list[Mapping[str, Any]]] | None) -> dict[str, Any]:
    """Backfill report task: the scored days' table plus the days skipped as committed or missing."""
    out = report(
        [s for chunk in (results or []) for s in chunk],
        title=f"ctmwa backfill {backfill['start_date']}..{backfill['end_date']} (model {backfill['model_version']})",
    )
    out["committed_before"] = [e["date"] for e in backfill["days"] if e["state"] == "committed"]
    out["missing"] = [e["date"] for e in backfill["days"] if e["state"] == "missing"]
    if out["committed_before"]:
        logger.info("already committed for this model, left as they were: %s", out["committed_before"])
    if out["missing"]:
        logger.warning("no input partition, not scored: %s", out["missing"])
    return out


# --------------------------------------------------------------------------------------------------- health report


def _health(result: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """What a health_report task hands on (small JSON): where the report is, its alerts, and whether to fail."""
    alerts = list(result["alerts"])
    fail = bool(alerts) and settings.fail_on_drift
    return {
        "date": result["date"],
        "end_date": result["end_date"],
        "report_dir": result["out_dir"],
        "html": result["html"],
        "json": result["json"],
        "alerts": alerts,
        "warnings": len(result["warnings"]),
        "notes": list(result["notes"]),
        "fail": fail,
        "failure": (
            f"{len(alerts)} drift alert(s) and CTMWA_FAIL_ON_DRIFT is set (the scores are committed all the same): "
            + "; ".join(a["message"] for a in alerts)
            + f". Report: {result['html']}"
        )
        if fail
        else None,
    }


def health_report(
    summary: Mapping[str, Any], params: Mapping[str, Any] | None, explicit: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Health_report task: the partition's report.html and report.json under `_reports/{partition}` beside its scores,
    against the `baseline_days` before its day (the same partition path with the earlier dates); logs the alerts.
    `fail` is true when one fired and fail_on_drift is set (the task then fails, never the scoring). A partition whose
    path names no date gets no report (a note says why). Settings as `task_settings(explicit, params)`."""
    from ctmwa_batch.io.partitions import report_dir
    from ctmwa_batch.monitoring import report
    from ctmwa_batch.monitoring.drift import partition_for

    settings = task_settings(explicit, params)
    date, partition = summary.get("date"), summary["partition"]
    if not date:
        note = f"partition {partition} names no date (YYYY-MM-DD): no baseline days to compare it with, so no health report"
        logger.warning("%s", note)
        return {
            "date": None,
            "end_date": None,
            "report_dir": None,
            "html": None,
            "json": None,
            "alerts": [],
            "warnings": 0,
            "notes": [note],
            "fail": False,
            "failure": None,
        }
    # The baseline days are the same partition path with earlier dates (`region=eu/dt={date}` for region=eu/dt=...).
    template = (
        settings.partition_template
        if partition_for(date, settings.partition_template) == partition
        else partition.replace(date, "{date}")
    )
    root = settings.scores_root()  # a table's receipts: its staging location or data root
    result = report.write_report(
        root,
        summary["model_version"],
        date,
        report_dir(root, summary["model_version"], partition),
        baseline_days=settings.baseline_days,
        thresholds=report.thresholds_from(settings),
        partition_template=template,
    )
    return _health(result, settings)


def health_report_backfill(backfill: Mapping[str, Any]) -> dict[str, Any]:
    """Backfill health_report task: one report for the whole range (each day against its own baseline window)."""
    from ctmwa_batch.monitoring import report
    from ctmwa_batch.monitoring.drift import ReportInputMissing

    settings = Settings.load(overrides=backfill["settings"])
    try:
        result = report.write_report(
            settings.scores_root(),
            backfill["model_version"],
            backfill["start_date"],
            end_date=backfill["end_date"],
            baseline_days=settings.baseline_days,
            thresholds=report.thresholds_from(settings),
            partition_template=settings.partition_template,
        )
    except ReportInputMissing as e:
        logger.warning("no health report: %s", e)
        return {
            "date": backfill["start_date"],
            "end_date": backfill["end_date"],
            "report_dir": None,
            "alerts": [],
            "fail": False,
            "failure": None,
            "notes": [str(e)],
        }
    return _health(result, settings)


def publish_extra(summary: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The nightly Asset event's extra: asset_extra plus the alerts of the day's health report, when the report on
    storage is about this very commit (a failed or missing report leaves `alerts` null and says so in the log)."""
    import json

    from ctmwa_batch.io.partitions import report_dir
    from ctmwa_batch.monitoring.report import JSON_NAME

    extra = asset_extra([summary])
    if not extra["partitions"]:
        return extra
    settings = Settings.load(overrides=params)
    folder = report_dir(settings.scores_root(), summary["model_version"], summary["partition"])
    fs, path = open_filesystem(folder)
    try:
        with fs.open_input_stream(f"{path}/{JSON_NAME}") as f:
            numbers = json.loads(f.read())
    except FileNotFoundError:
        numbers = None
    day = next(
        (d for d in (numbers or {}).get("days", []) if d["date"] == summary["date"] and d["role"] == "report"), None
    )
    if day is None or day.get("committed_at") != summary["committed_at"]:
        logger.warning(
            "no health report of this commit of %s at %s: the Asset event carries no alerts", summary["date"], folder
        )
        extra["alerts"] = None
        extra["report"] = None
        return extra
    extra["alerts"] = numbers["alerts"]
    extra["report"] = f"{folder}/report.html"
    return extra
