"""Runs DAGs with `dag.test()` in a process of its own: `python -m tests.dags.airflow_runner SPEC.json RESULT.json`.

The tests start it as a subprocess with AIRFLOW_HOME and friends set, so Airflow's configuration, its ORM and its
logging setup never enter the pytest process. SPEC: {"dags_folder": ..., "runs": [{"dag_id", "logical_date" (ISO or
null), "conf" (dict), "env" (dict, set before the run)}]}. RESULT: one entry per run with the run's state, every task
instance's state (task_id, map_index), the non-mapped tasks' return values and the run's Asset events.
"""

from __future__ import annotations

import json
import os
import sys


def _text(state: object) -> str:
    """A state (an enum, a plain string or None) as its plain value."""
    return str(getattr(state, "value", state))


def _xcoms(dag_id: str, run_id: str) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, object] = {}
    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
        )
        for row in rows:
            out[row.task_id] = XComModel.deserialize_value(row)
    return out


def _asset_events(dag_id: str, run_id: str) -> list[dict[str, object]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
        )
        return [{"task_id": e.source_task_id, "uri": e.asset.uri, "name": e.asset.name, "extra": e.extra} for e in rows]


def main(spec_path: str, result_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=spec["dags_folder"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    results = []
    for run in spec["runs"]:
        os.environ.update(run.get("env") or {})
        dag = bag.get_dag(run["dag_id"])
        logical_date = pendulum.parse(run["logical_date"]) if run.get("logical_date") else None
        dr = dag.test(logical_date=logical_date, run_conf=run.get("conf") or None)
        tis = sorted((ti.task_id, ti.map_index, _text(ti.state)) for ti in dr.get_task_instances())
        results.append(
            {
                "dag_id": run["dag_id"],
                "run_id": dr.run_id,
                "state": _text(dr.state),
                "data_interval_start": dr.data_interval_start.isoformat() if dr.data_interval_start else None,
                "tasks": [{"task_id": t, "map_index": m, "state": s} for t, m, s in tis],
                "xcom": _xcoms(run["dag_id"], dr.run_id),
                "asset_events": _asset_events(run["dag_id"], dr.run_id),
            }
        )
    with open(result_path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
