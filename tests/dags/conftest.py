"""Airflow for the DAG tests, kept out of the pytest process: a temporary AIRFLOW_HOME with a migrated SQLite
database, and a helper that runs DAGs there with `dag.test()` in a subprocess (tests/dags/airflow_runner.py).

Importing Airflow configures its settings, ORM and logging process-wide; doing that in a subprocess keeps the rest
of the suite (and its caplog) unaffected whatever order the tests run in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of an Airflow subprocess: its own home, SQLite database, our DAG folder, no examples."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CTMWA_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **extra,
        }
    )
    return env


def _migrate(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AIRFLOW_HOME with a migrated SQLite metadata database. `airflow db migrate` (seconds) runs once per test run;
    each xdist worker gets its own copy of the database (SQLite is one writer at a time)."""
    from tests.conftest import built_once

    migrated = built_once(tmp_path_factory, "airflow_db", lambda folder: _migrate(folder / "home"))
    home = tmp_path_factory.mktemp("airflow_home")
    shutil.copy2(migrated, home / "airflow.db")
    return home


class DagRunner:
    """Runs DAGs in a subprocess against the migrated home; returns the runner's results, keeps its log."""

    def __init__(self, home: Path, workdir: Path):
        self.home = home
        self.workdir = workdir
        self.calls = 0

    def __call__(
        self, runs: list[dict], env: dict[str, str] | None = None, timeout: float = 600, dags_folder: Path = DAGS
    ) -> list[dict]:
        self.calls += 1
        spec = self.workdir / f"spec-{self.calls}.json"
        result = self.workdir / f"result-{self.calls}.json"
        spec.write_text(json.dumps({"dags_folder": str(dags_folder), "runs": runs}))
        proc = subprocess.run(
            [sys.executable, "-m", "tests.dags.airflow_runner", str(spec), str(result)],
            env=airflow_env(
                self.home, AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder), **(env or {})
            ),  # dag.test() syncs that bundle
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log = proc.stdout + proc.stderr
        (self.workdir / f"log-{self.calls}.txt").write_text(self.log)
        assert proc.returncode == 0, self.log[-6000:]
        return json.loads(result.read_text())


@pytest.fixture(scope="session")
def run_dags(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> DagRunner:
    """Call with [{"dag_id", "logical_date", "conf"}, ...] (and env for the tasks, and another dags_folder than dags/):
    runs them in order with dag.test()."""
    return DagRunner(airflow_home, tmp_path_factory.mktemp("dag_runs"))


def task_states(run: dict, task_id: str) -> list[str]:
    """States of a task's instances in a run (one per map index)."""
    return [t["state"] for t in run["tasks"] if t["task_id"] == task_id]
