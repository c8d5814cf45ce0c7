"""The DAG files parse with zero import errors, touch no database, Variable or Connection at parse time, import no
heavy module, and wire the tasks the design asks for (mapped shards on the GPU queue and pool, retries, timeouts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.dags.conftest import DAGS, REPO, airflow_env

DAG_IDS = {"ctmwa_score_daily", "ctmwa_backfill", "ctmwa_export_model"}


def _probe(tmp_path, **env: str) -> dict:
    home = tmp_path / "home"  # never migrated: and the database URL below cannot even be opened
    result = tmp_path / "parse.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dags.parse_probe", str(DAGS), str(result)],
        env=airflow_env(
            home, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/no/such/dir/airflow.db", **env
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    return _probe(tmp_path_factory.mktemp("parse"))


def test_every_dag_file_loads_without_import_errors(parsed):
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == DAG_IDS
    assert {p.name for p in DAGS.glob("*.py")} == {f"{d}.py" for d in DAG_IDS}


def test_parsing_touches_no_database_variable_or_connection(parsed):
    assert parsed["sql"] == []  # and Variable.get / Connection.get raise in the probe: no import error came of it


def test_parsing_imports_nothing_heavy(parsed):
    # torch, onnxruntime, pyarrow... and the task code itself load inside the tasks, on the workers.
    assert parsed["heavy_imported"] == []
    assert parsed["seconds"] < 5


def test_daily_dag_maps_shards_on_the_gpu_queue_and_pool(parsed):
    dag = parsed["dags"]["ctmwa_score_daily"]
    assert dag["schedule"] == "CronDataIntervalTimetable"
    tasks = dag["tasks"]
    assert set(tasks) == {
        "wait_for_input",
        "plan",
        "shards",
        "score_shard",
        "commit",
        "health_report",
        "publish",
        "report",
    }
    shard = tasks["score_shard"]
    assert shard["mapped"] and (shard["queue"], shard["pool"]) == ("gpu", "ctmwa_gpu")
    assert shard["retries"] == 2 and shard["execution_timeout_s"] == 120 * 60 and shard["max_active_tis_per_dag"] == 8
    assert tasks["plan"]["upstream"] == ["wait_for_input"]
    assert tasks["commit"]["upstream"] == ["plan", "score_shard"]
    assert tasks["commit"]["trigger_rule"].endswith("NONE_FAILED")  # a committed day maps zero shards and still reports
    assert tasks["publish"]["outlets"] == ["ctmwa_scores"]
    assert tasks["health_report"]["upstream"] == ["commit"]
    assert tasks["report"]["upstream"] == ["commit", "health_report"]  # so that a drift failure fails the run
    # publish carries the report's alerts, and still publishes the committed scores when the report failed on drift
    assert tasks["publish"]["upstream"] == ["commit", "health_report"] and tasks["publish"]["trigger_rule"].endswith(
        "ALL_DONE_MIN_ONE_SUCCESS"
    )
    assert {"partition_date", "overwrite", "model_version", "input_root", "output_root", "device"} <= set(dag["params"])


def test_backfill_dag_is_bounded_and_publishes_the_asset(parsed):
    dag = parsed["dags"]["ctmwa_backfill"]
    assert dag["schedule"] == "NullTimetable"  # triggered by hand
    score = dag["tasks"]["score_days"]
    assert score["mapped"] and score["max_active_tis_per_dag"] == 8 and score["pool"] == "ctmwa_gpu"
    assert score["outlets"] == ["ctmwa_scores"]
    assert {"start_date", "end_date", "model_version", "overwrite", "on_missing"} <= set(dag["params"])


def test_export_dag_chain(parsed):
    tasks = parsed["dags"]["ctmwa_export_model"]["tasks"]
    assert tasks["publish"]["upstream"] == ["export_head", "prepare", "validate"]
    assert tasks["export_head"]["upstream"] == ["export_encoders", "features", "prepare", "train"]
    assert tasks["validate"]["upstream"] == ["export_head", "prepare"]
    assert tasks["train"]["upstream"] == ["features", "prepare"]
    assert tasks["publish"]["outlets"] == ["ctmwa_models"]


def test_scheduling_settings_come_from_the_environment_at_parse_time(tmp_path):
    parsed = _probe(
        tmp_path,
        CTMWA_QUEUE="a100",
        CTMWA_POOL="scoring",
        CTMWA_SHARD_RETRIES="5",
        CTMWA_MAX_ACTIVE_SHARDS="3",
        CTMWA_TRAIN_QUEUE="trainers",
        CTMWA_POD_TEMPLATE_FILE="/etc/airflow/gpu-pod.yaml",
    )
    assert parsed["import_errors"] == {}
    shard = parsed["dags"]["ctmwa_score_daily"]["tasks"]["score_shard"]
    assert (shard["queue"], shard["pool"], shard["retries"], shard["max_active_tis_per_dag"]) == (
        "a100",
        "scoring",
        5,
        3,
    )
    assert parsed["dags"]["ctmwa_export_model"]["tasks"]["train"]["queue"] == "trainers"
    assert shard["executor_config"] == {"pod_template_file": "/etc/airflow/gpu-pod.yaml"}
    assert parsed["dags"]["ctmwa_backfill"]["tasks"]["score_days"]["executor_config"] == {
        "pod_template_file": "/etc/airflow/gpu-pod.yaml"
    }
    assert parsed["dags"]["ctmwa_score_daily"]["tasks"]["plan"]["executor_config"] == {}  # only the GPU tasks


def test_a_bad_setting_is_an_import_error_that_names_it(tmp_path):
    parsed = _probe(tmp_path, CTMWA_MAX_ACTIVE_SHARDS="many")
    assert set(parsed["import_errors"]) == {str(DAGS / f"{d}.py") for d in ("ctmwa_score_daily", "ctmwa_backfill")} | {
        str(DAGS / "ctmwa_export_model.py")
    }
    assert all("CTMWA_MAX_ACTIVE_SHARDS = 'many'" in e for e in parsed["import_errors"].values())
