"""ctmwa_batch.scoring.orchestrate without Airflow: dates, input readiness, the daily plan/score/commit path, backfill
planning (committed and missing days, chunking under max_map_length), reports."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ctmwa_batch.model import registry
from ctmwa_batch.scoring import job, orchestrate
from ctmwa_batch.settings import SettingsError
from fixtures import posts as demo_posts


@pytest.fixture(scope="module")
def models_root(full_bundle: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    registry.publish(full_bundle, root)
    return root


def _params(tmp_path: Path, models_root: Path, **more) -> dict:
    return {
        "input_root": str(tmp_path / "lake" / "posts"),
        "output_root": str(tmp_path / "scores"),
        "models_root": str(models_root),
        "device": "cpu",
        "max_rows_per_shard": 20,
        **more,
    }


def test_day_of_the_data_interval_or_the_param():
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert orchestrate.day_of(start, {}) == "2026-01-05"
    assert (
        orchestrate.day_of(dt.datetime(2026, 1, 5, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2))), None)
        == "2026-01-06"
    )  # UTC days
    assert orchestrate.day_of(start, {"partition_date": "2026-02-01"}) == "2026-02-01"
    with pytest.raises(SettingsError, match="no data interval .*partition_date"):
        orchestrate.day_of(None, {})
    with pytest.raises(SettingsError, match="partition_date = 'yesterday' is not a date"):
        orchestrate.day_of(start, {"partition_date": "yesterday"})


def test_date_range():
    assert orchestrate.date_range("2026-01-30", "2026-02-02") == [
        "2026-01-30",
        "2026-01-31",
        "2026-02-01",
        "2026-02-02",
    ]
    with pytest.raises(SettingsError, match="before start_date"):
        orchestrate.date_range("2026-01-05", "2026-01-04")


def test_input_state(tmp_path):
    part = tmp_path / "dt=2026-01-05"
    assert orchestrate.input_state(str(part)) == "no such folder"
    part.mkdir()
    (part / "_SUCCESS").write_text("")
    (part / ".part-0.parquet.tmp").write_text("")
    assert orchestrate.input_state(str(part)) == "no .parquet file in it"
    assert orchestrate.input_state(str(part), "_SUCCESS") is None
    demo_posts.write_partition(tmp_path, "2026-01-06", rows=5)
    assert orchestrate.input_state(str(tmp_path / "posts" / "dt=2026-01-06")) is None
    assert orchestrate.input_state(str(tmp_path / "posts" / "dt=2026-01-06"), "_SUCCESS") == "no _SUCCESS marker yet"


def test_daily_path_plan_score_commit_then_noop(tmp_path, models_root):
    info = demo_posts.write_partition(tmp_path / "lake", "2026-01-05", rows=30, row_group_size=10)  # 40 rows, 4 groups
    params = _params(tmp_path, models_root)
    interval = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert orchestrate.input_ready(interval, params)
    planned = orchestrate.plan_day(interval, params)
    json.dumps(planned)  # XCom is JSON
    assert planned["shards"] == [0, 1] and not planned["skip"]
    assert planned["bundle_dir"] == str(models_root / registry.current_version(models_root))
    stats = [orchestrate.score_shard(planned, k) for k in orchestrate.shards_to_score(planned)]
    assert [s["rows"] for s in stats] == [20, 20]
    summary = orchestrate.commit_day(planned)
    assert summary["rows"]["input"] == summary["rows"]["output"] == info["rows"]
    assert sum(summary["sentiments"].values()) == summary["rows"]["by_status"].get("ok", 0) + summary["rows"][
        "by_status"
    ].get("text_missing", 0) + summary["rows"]["by_status"].get("image_missing", 0)
    assert pq.read_table(summary["output_dir"]).num_rows == info["rows"]
    assert orchestrate.asset_extra([summary])["partitions"][0]["rows"] == info["rows"]
    success = (Path(summary["output_dir"]) / "_SUCCESS.json").read_bytes()

    again = orchestrate.plan_day(interval, params)
    assert again["skip"] and orchestrate.shards_to_score(again) == []
    noop = orchestrate.commit_day(again)
    assert noop["skipped"] and noop["rows"] == summary["rows"]
    assert (Path(summary["output_dir"]) / "_SUCCESS.json").read_bytes() == success
    assert orchestrate.asset_extra([noop]) == {"partitions": []}

    table = orchestrate.report([summary, noop])["table"]
    assert "2026-01-05" in table and "skipped" in table and "scored" in table


def test_missing_input_fails_clearly(tmp_path, models_root):
    params = _params(tmp_path, models_root)
    interval = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert not orchestrate.input_ready(interval, params)
    with pytest.raises(
        orchestrate.InputPartitionMissing,
        match=r"input partition for 2026-01-05 is missing: .*dt=2026-01-05 \(no such folder\)",
    ):
        orchestrate.plan_day(interval, params)


def test_backfill_plan_skips_committed_and_reports_missing(tmp_path, models_root):
    for day in ("2026-01-01", "2026-01-02", "2026-01-04"):
        demo_posts.write_partition(tmp_path / "lake", day, rows=10)
    params = _params(tmp_path, models_root, start_date="2026-01-01", end_date="2026-01-04")
    job.score_partition(
        f"{params['input_root']}/dt=2026-01-02", params["output_root"], registry.resolve(models_root), {"device": "cpu"}
    )
    plan = orchestrate.plan_backfill(params)
    json.dumps(plan)
    assert {e["date"]: e["state"] for e in plan["days"]} == {
        "2026-01-01": "todo",
        "2026-01-02": "committed",
        "2026-01-03": "missing",
        "2026-01-04": "todo",
    }
    assert orchestrate.chunks_to_score(plan) == [["2026-01-01"], ["2026-01-04"]]
    assert plan["counts"] == {"todo": 2, "committed": 1, "missing": 1}
    assert orchestrate.plan_backfill({**params, "overwrite": True})["counts"]["todo"] == 3
    with pytest.raises(
        orchestrate.InputPartitionMissing, match=r"1 day\(s\) have no input partition: \['2026-01-03'\]"
    ):
        orchestrate.plan_backfill({**params, "on_missing": "fail"})

    results = [orchestrate.score_days(plan, chunk) for chunk in orchestrate.chunks_to_score(plan)]
    report = orchestrate.report_backfill(plan, results)
    assert (
        report["scored"] == 2 and report["committed_before"] == ["2026-01-02"] and report["missing"] == ["2026-01-03"]
    )
    assert orchestrate.plan_backfill(params)["counts"] == {"todo": 0, "committed": 3, "missing": 1}


def test_backfill_chunks_stay_under_max_map_length(tmp_path, models_root):
    days = [f"2026-01-{d:02d}" for d in range(1, 8)]
    for day in days:
        demo_posts.write_partition(tmp_path / "lake", day, rows=3, bad_rows=False)
    plan = orchestrate.plan_backfill(
        _params(tmp_path, models_root, start_date=days[0], end_date=days[-1], max_map_length=3)
    )
    chunks = orchestrate.chunks_to_score(plan)
    assert [len(c) for c in chunks] == [3, 3, 1] and [d for c in chunks for d in c] == days
    with pytest.raises(SettingsError, match="end_date = None is not a date"):
        orchestrate.plan_backfill({"start_date": "2026-01-01"})


def test_model_version_param_pins_a_published_version(tmp_path, models_root):
    demo_posts.write_partition(tmp_path / "lake", "2026-01-05", rows=5)
    version = registry.current_version(models_root)
    interval = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert (
        orchestrate.plan_day(interval, _params(tmp_path, models_root, model_version=version))["model_version"]
        == version
    )
    with pytest.raises(registry.RegistryError, match="'nope' is not published"):
        orchestrate.plan_day(interval, _params(tmp_path, models_root, model_version="nope"))


def test_task_settings_lay_the_params_under_a_groups_arguments():
    settings = orchestrate.task_settings(
        {"device": "cpu", "output_root": None},
        {"device": "auto", "output_root": "s3://b/scores", "max_rows_per_shard": 5, "partition_date": "2026-01-05"},
    )
    assert (settings.device, settings.output_root, settings.max_rows_per_shard) == ("cpu", "s3://b/scores", 5)


def test_the_date_of_a_partition_path():
    assert orchestrate.partition_date("region=eu/dt=2026-01-05") == "2026-01-05"
    assert orchestrate.partition_date("dt=2026-13-45/hour=2026-01-02") == "2026-01-02"  # the first real date
    assert orchestrate.partition_date("campaign_spring") is None


def test_a_partition_without_a_date_gets_no_health_report(tmp_path):
    summary = {"date": None, "partition": "campaign_spring", "model_version": "v1", "output_dir": str(tmp_path / "x")}
    health = orchestrate.health_report(summary, None, {"output_root": str(tmp_path)})
    assert health["report_dir"] is None and not health["fail"] and "names no date" in health["notes"][0]
    assert not any(tmp_path.iterdir())


def test_more_shards_than_airflow_maps_fail_the_plan(tmp_path, models_root):
    demo_posts.write_partition(tmp_path / "lake", "2026-01-05", rows=30, row_group_size=10)  # 4 row groups
    params = {**_params(tmp_path, models_root), "max_rows_per_shard": 10, "max_map_length": 3}
    with pytest.raises(SettingsError, match="4 shards of at most 10 rows, more than max_map_length = 3"):
        orchestrate.plan_scoring(str(tmp_path / "lake" / "posts" / "dt=2026-01-05"), None, params)
