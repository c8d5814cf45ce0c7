"""score_partition into tables under a real Airflow (`dag.test()`): a Delta table and an Iceberg table (SQL catalog
on SQLite, configured through PYICEBERG_CATALOG__* in the workers' environment), health report included."""

from __future__ import annotations

import pytest

from fixtures import posts as demo_posts
from tests.dags.conftest import task_states

DAY = "2026-01-05"

TABLES_DAG = """
import pendulum
from airflow.sdk import dag

from ctmwa_batch.airflow import score_partition


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def scores_as_tables():
    for name, output, fmt in (("delta", {delta!r}, "delta"), ("iceberg", "lake.scores", "iceberg")):
        score_partition(
            name,
            input={lake!r} + "/posts/dt={{{{ params.day }}}}",
            output=output,
            format=fmt,
            catalog="local" if fmt == "iceberg" else None,
            bundle={bundle!r},
            device="cpu",
            max_rows_per_shard=20,
            baseline_days=0,
        )


scores_as_tables()
"""


@pytest.mark.slow
def test_score_partition_into_delta_and_iceberg_tables(run_dags, full_bundle, tmp_path_factory):
    import polars as pl
    from pyiceberg.catalog import load_catalog

    root = tmp_path_factory.mktemp("tables_dag")
    info = demo_posts.write_partition(root / "lake", DAY, rows=30, row_group_size=10)
    folder = root / "dags"
    folder.mkdir()
    delta = str(root / "delta")
    (folder / "scores_as_tables.py").write_text(
        TABLES_DAG.format(delta=delta, lake=str(root / "lake"), bundle=str(full_bundle))
    )
    catalog = {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"}
    env = {f"PYICEBERG_CATALOG__LOCAL__{k.upper()}": v for k, v in catalog.items()}
    (run,) = run_dags(
        [{"dag_id": "scores_as_tables", "logical_date": f"{DAY}T00:00:00+00:00", "conf": {"day": DAY}}],
        env=env,
        dags_folder=folder,
    )
    assert run["state"] == "success", run["tasks"]
    for group in ("delta", "iceberg"):
        assert task_states(run, f"{group}.score_shard") == ["success"] * 2
        summary = run["xcom"][f"{group}.health_report"]
        assert summary["rows"]["output"] == info["rows"] == 40
        assert summary["table"]["format"] == group and summary["report_dir"]
    rows = pl.read_delta(delta)
    assert rows.height == 40 and set(rows["dt"].to_list()) == {DAY}
    table = load_catalog("local", **catalog).load_table("lake.scores")  # a SQL catalog keys its tables by its name
    assert table.scan().to_arrow().num_rows == 40
    assert table.current_snapshot().snapshot_id == run["xcom"]["iceberg.health_report"]["table"]["snapshot_id"]
