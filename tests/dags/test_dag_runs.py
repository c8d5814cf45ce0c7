"""The DAGs run under Airflow (`dag.test()` against a migrated SQLite home, in a subprocess): the nightly DAG over
two days with bad rows, its rerun as a no-op, a missing day, the backfill over a range with a committed day, and
the export DAG publishing a bundle and moving CURRENT."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ctmwa_batch.io.partitions import output_dir
from ctmwa_batch.model import registry
from ctmwa_batch.scoring import job
from fixtures import posts as demo_posts
from tests.dags.conftest import task_states

pytestmark = pytest.mark.slow

DAYS = ("2026-01-05", "2026-01-06")
MISSING_DAY = "2026-02-01"
DRIFTED_DAY = "2026-01-07"  # many more image-less posts, a mostly negative mix; scored with CTMWA_FAIL_ON_DRIFT set
BACKFILL_DAYS = ("2026-01-10", "2026-01-11", "2026-01-12")


def _night_after(day: str) -> str:
    """The logical date of the scheduled run that scores `day`: a manual run scores the last full day before it."""
    return (dt.datetime.fromisoformat(day) + dt.timedelta(days=1)).replace(tzinfo=dt.UTC).isoformat()


@pytest.fixture(scope="module")
def models_root(full_bundle: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    registry.publish(full_bundle, root)
    return root


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, models_root: Path) -> dict[str, str]:
    """A lake of two days (40 posts + 10 bad rows each, row groups of 10) and the CTMWA_* environment of the workers."""
    root = tmp_path_factory.mktemp("deploy")
    for day in DAYS:
        demo_posts.write_partition(root / "lake", day, rows=40, row_group_size=10)
    demo_posts.write_partition(root / "lake", DRIFTED_DAY, rows=40, row_group_size=10, spec=demo_posts.DRIFTED)
    return {
        "CTMWA_INPUT_ROOT": str(root / "lake" / "posts"),
        "CTMWA_OUTPUT_ROOT": str(root / "scores"),
        "CTMWA_MODELS_ROOT": str(models_root),
        "CTMWA_DEVICE": "cpu",
        "CTMWA_MAX_ROWS_PER_SHARD": "20",
        "CTMWA_INPUT_WAIT_HOURS": "0",  # a missing day fails at the first look instead of waiting hours
        "CTMWA_RETRY_DELAY_MINUTES": "0",
    }


@pytest.fixture(scope="module")
def backfill_lake(tmp_path_factory, models_root: Path) -> dict:
    """Three days of posts, the middle one already committed for the current model (by the scorer, outside Airflow)."""
    root = tmp_path_factory.mktemp("backfill")
    for day in BACKFILL_DAYS:
        demo_posts.write_partition(root / "lake", day, rows=20, row_group_size=10)
    posts, scores = root / "lake" / "posts", root / "scores"
    job.score_partition(
        str(posts / f"dt={BACKFILL_DAYS[1]}"), str(scores), registry.resolve(models_root), {"device": "cpu"}
    )
    committed = (
        Path(output_dir(str(scores), registry.current_version(models_root), f"dt={BACKFILL_DAYS[1]}")) / "_SUCCESS.json"
    )
    return {"posts": posts, "scores": scores, "committed": committed, "committed_bytes": committed.read_bytes()}


@pytest.fixture(scope="module")
def release_inputs(tmp_path_factory, full_bundle: Path) -> dict:
    """A models root with the tiny bundle current, and labelled posts to train the next model on."""
    root = tmp_path_factory.mktemp("release")
    first = registry.publish(full_bundle, root / "models")["model_version"]
    posts = demo_posts.write_training_posts(root / "train.parquet", n=120)
    return {"models": root / "models", "first": first, "posts": posts}


@pytest.fixture(scope="module")
def runs(run_dags, deployment, backfill_lake, release_inputs, full_bundle) -> dict[str, dict]:
    """Every first run, in one Airflow process (its start-up is the slow part): the two nights, a night whose day
    never landed, the backfill, the export."""
    backfill_conf = {
        "start_date": BACKFILL_DAYS[0],
        "end_date": BACKFILL_DAYS[-1],
        "input_root": str(backfill_lake["posts"]),
        "output_root": str(backfill_lake["scores"]),
        "device": "cpu",
    }
    export_conf = {
        "encoders": str(
            full_bundle
        ),  # a new head on the current model's encoders (exporting CLIP is export's tests' job)
        "training_posts": str(release_inputs["posts"]),
        "labels": ",".join(demo_posts.LABELS),
        "epochs": 1,
        "calibrate": True,
        "torch_threads": 1,
        "train_config": {"model": {"embed_dim": 8, "weight_net_hidden": 16}, "training": {"batch_size": 64}},
        "models_root": str(release_inputs["models"]),
    }
    results = run_dags(
        [
            *[{"dag_id": "ctmwa_score_daily", "logical_date": _night_after(day)} for day in DAYS],
            {"dag_id": "ctmwa_score_daily", "logical_date": _night_after(MISSING_DAY)},
            {"dag_id": "ctmwa_backfill", "logical_date": "2026-02-01T00:00:00+00:00", "conf": backfill_conf},
            {"dag_id": "ctmwa_export_model", "logical_date": "2026-02-01T00:00:00+00:00", "conf": export_conf},
            # last: its env stays set in the runner process (alerts from 20 rows on, so that 50-row days can drift)
            {
                "dag_id": "ctmwa_score_daily",
                "logical_date": _night_after(DRIFTED_DAY),
                "env": {"CTMWA_FAIL_ON_DRIFT": "1", "CTMWA_DRIFT_MIN_ROWS": "20"},
            },
        ],
        env=deployment,
    )
    return {"log": run_dags.log, **dict(zip([*DAYS, "missing", "backfill", "export", "drifted"], results))}


def _out(deployment: dict, models_root: Path, day: str) -> Path:
    return Path(output_dir(deployment["CTMWA_OUTPUT_ROOT"], registry.current_version(models_root), f"dt={day}"))


@pytest.mark.parametrize("day", DAYS)
def test_daily_dag_commits_every_input_row(runs, deployment, models_root, day):
    run = runs[day]
    assert run["state"] == "success", run["tasks"]
    assert run["data_interval_start"].startswith(day)
    assert task_states(run, "score_shard") == ["success"] * 3  # 50 rows in row groups of 10, 20 rows a shard
    out = _out(deployment, models_root, day)
    success = json.loads((out / "_SUCCESS.json").read_text())
    inputs = pq.read_table(Path(deployment["CTMWA_INPUT_ROOT"]) / f"dt={day}")
    scores = pq.read_table(out)
    assert success["rows"]["input"] == success["rows"]["output"] == inputs.num_rows == scores.num_rows == 50
    assert (
        scores.column("post_id").to_pylist() == inputs.column("post_id").to_pylist()
    )  # one row per input row, in order
    statuses = success["rows"]["by_status"]
    assert statuses["no_content"] == 2 and statuses["text_missing"] >= 2 and statuses["image_missing"] >= 2
    assert run["xcom"]["commit"]["rows"]["output"] == 50 and not run["xcom"]["commit"]["skipped"]
    assert run["xcom"]["publish"]["partitions"][0]["output_dir"] == str(out)  # the Asset event's extra
    assert run["xcom"]["report"]["rows"] == 50 and day in run["xcom"]["report"]["table"]
    # the health report beside the scores; 50-row days are under min_rows: figures, no alert
    health = run["xcom"]["health_report"]
    reports = out.parent / "_reports" / f"dt={day}"
    assert health["report_dir"] == str(reports) and health["alerts"] == [] and not health["fail"]
    numbers = json.loads((reports / "report.json").read_text())
    assert [d["rows"] for d in numbers["days"] if d["role"] == "report"] == [50] and (
        reports / "report.html"
    ).stat().st_size > 10_000
    assert run["xcom"]["publish"]["alerts"] == [] and run["xcom"]["publish"]["report"] == str(reports / "report.html")


def test_a_drifted_day_fails_the_health_report_not_the_scoring(runs, deployment, models_root):
    run = runs["drifted"]
    assert run["state"] == "failed"  # the run shows red...
    assert set(task_states(run, "score_shard")) == {"success"} and task_states(run, "commit") == ["success"]
    assert task_states(run, "health_report") == ["failed"]  # ...because of the report alone
    assert task_states(run, "report") == ["upstream_failed"]  # the leaf that carries the failure to the run's state
    assert task_states(run, "publish") == ["success"]  # the committed scores are published, alerts in the event's extra
    alerts = run["xcom"]["publish"]["alerts"]
    assert "status:image_missing" in {a["quantity"] for a in alerts} and all(a["date"] == DRIFTED_DAY for a in alerts)
    reports = _out(deployment, models_root, DRIFTED_DAY).parent / "_reports" / f"dt={DRIFTED_DAY}"
    numbers = json.loads((reports / "report.json").read_text())
    assert numbers["alerts"] == alerts and numbers["baseline"]["present"] == list(DAYS)
    assert "drift alert(s) and CTMWA_FAIL_ON_DRIFT is set" in runs["log"]


def test_a_rerun_is_a_noop(runs, run_dags, deployment, models_root):
    before = {day: (_out(deployment, models_root, day) / "_SUCCESS.json").read_bytes() for day in DAYS}
    # The first night again, and the second day named by the partition_date param: nothing to do, nothing rewritten.
    rerun = run_dags(
        [
            {"dag_id": "ctmwa_score_daily", "logical_date": _night_after(DAYS[0])},
            {
                "dag_id": "ctmwa_score_daily",
                "logical_date": "2026-03-01T00:00:00+00:00",
                "conf": {"partition_date": DAYS[1]},
            },
        ],
        env=deployment,
    )
    for day, run in zip(DAYS, rerun):
        assert run["state"] == "success", run["tasks"]
        assert run["xcom"]["shards"] == []
        assert set(task_states(run, "score_shard")) == {"skipped"}
        assert task_states(run, "publish") == ["skipped"]  # no new scores: no Asset event
        assert run["xcom"]["commit"]["skipped"] and run["xcom"]["commit"]["date"] == day
        assert (_out(deployment, models_root, day) / "_SUCCESS.json").read_bytes() == before[day]


def test_daily_dag_fails_clearly_when_the_day_never_landed(runs, deployment, models_root):
    run = runs["missing"]
    assert run["state"] == "failed"
    assert task_states(run, "wait_for_input") == ["failed"]
    assert task_states(run, "plan") == ["upstream_failed"]
    assert f"dt={MISSING_DAY}: no such folder" in runs["log"]
    assert not _out(deployment, models_root, MISSING_DAY).exists()


def test_backfill_scores_exactly_the_uncommitted_days(runs, backfill_lake, models_root):
    run = runs["backfill"]
    assert run["state"] == "success", run["tasks"]
    assert run["xcom"]["chunks"] == [[BACKFILL_DAYS[0]], [BACKFILL_DAYS[2]]]
    assert task_states(run, "score_days") == ["success", "success"]
    report = run["xcom"]["report"]
    assert report["scored"] == 2 and report["committed_before"] == [BACKFILL_DAYS[1]] and report["missing"] == []
    assert backfill_lake["committed"].read_bytes() == backfill_lake["committed_bytes"]
    for day in (BACKFILL_DAYS[0], BACKFILL_DAYS[2]):
        out = Path(output_dir(str(backfill_lake["scores"]), registry.current_version(models_root), f"dt={day}"))
        success = json.loads((out / "_SUCCESS.json").read_text())
        assert success["rows"]["input"] == success["rows"]["output"] == pq.read_table(out).num_rows == 30
    # one health report for the whole range, the day committed before included
    health = run["xcom"]["health_report"]
    reports = Path(
        output_dir(
            str(backfill_lake["scores"]),
            registry.current_version(models_root),
            f"_reports/dt={BACKFILL_DAYS[0]}..{BACKFILL_DAYS[-1]}",
        )
    )
    assert health["report_dir"] == str(reports) and (reports / "report.html").is_file()
    numbers = json.loads((reports / "report.json").read_text())
    assert numbers["report_dates"] == list(BACKFILL_DAYS) and [
        d["rows"] for d in numbers["days"] if d["role"] == "report"
    ] == [30, 30, 30]


def test_export_dag_publishes_a_bundle_and_moves_current(runs, release_inputs):
    run, models = runs["export"], release_inputs["models"]
    assert run["state"] == "success", run["tasks"]
    published = run["xcom"]["publish"]
    version = published["model_version"]
    assert (
        version != release_inputs["first"] and published["previous"] == release_inputs["first"] and published["current"]
    )
    assert (models / "CURRENT").read_text() == version + "\n"
    assert registry.resolve(models) == models / version
    assert sorted(registry.list_versions(models)) == sorted([release_inputs["first"], version])
    assert run["xcom"]["validate"]["smoke"]["rows"] == 50 and run["xcom"]["validate"]["labels"] == list(
        demo_posts.LABELS
    )
    manifest = json.loads((models / version / "manifest.json").read_text())
    assert manifest["calibration"]["method"] != "none" and manifest["training_metrics"]["epochs"] == 1
    assert not (models / ".staging").exists() or not any((models / ".staging").iterdir())  # work files cleaned up
