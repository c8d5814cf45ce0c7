"""Parses the DAG folder the way the DAG processor does and reports what parsing touched:
`python -m tests.dags.parse_probe DAGS_FOLDER RESULT.json`.

Run with a metadata database that cannot be opened; every SQL statement is counted, and Variable / Connection
lookups raise, so a DAG file that reaches for any of them at parse time shows up as an import error or a count.
"""

from __future__ import annotations

import json
import sys
import time

HEAVY = (
    "torch",
    "onnxruntime",
    "onnx",
    "transformers",
    "tokenizers",
    "pyarrow",
    "numpy",
    "PIL",
    "matplotlib",
    "ctmwa_batch.monitoring.report",
    "ctmwa_batch.scoring.orchestrate",
    "ctmwa_batch.scoring.job",
    "ctmwa_export",
    "ctmwa_training",
)


def main(dags_folder: str, result_path: str) -> int:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []
    event.listen(Engine, "before_cursor_execute", lambda conn, cursor, statement, *args: statements.append(statement))

    def forbidden(*args, **kwargs):
        raise RuntimeError(f"Variable/Connection lookup at parse time: {args}")

    import airflow.sdk
    from airflow.dag_processing.dagbag import DagBag

    airflow.sdk.Variable.get = forbidden  # type: ignore[method-assign]
    airflow.sdk.Connection.get = forbidden  # type: ignore[method-assign]
    try:
        import airflow.models

        airflow.models.Variable.get = forbidden  # type: ignore[method-assign]
        airflow.models.Connection.get_connection_from_secrets = forbidden  # type: ignore[method-assign]
    except (ImportError, AttributeError):
        pass

    before = {m for m in sys.modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}}
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=dags_folder)
    seconds = time.perf_counter() - t0
    imported = sorted({m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY)} - before)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "fileloc": dag.fileloc,
            "schedule": str(getattr(dag, "timetable", None).__class__.__name__),
            "params": sorted(dag.params.keys()),
            "tasks": {
                t.task_id: {
                    "queue": t.queue,
                    "pool": t.pool,
                    "executor_config": dict(getattr(t, "executor_config", None) or {}),
                    "retries": t.retries,
                    "execution_timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                    "max_active_tis_per_dag": t.max_active_tis_per_dag,
                    "mapped": bool(getattr(t, "is_mapped", False)),
                    "trigger_rule": str(t.trigger_rule),
                    "outlets": [getattr(o, "name", str(o)) for o in (t.outlets or [])],
                    "upstream": sorted(t.upstream_task_ids),
                }
                for t in dag.tasks
            },
        }
    with open(result_path, "w") as f:
        json.dump(
            {
                "import_errors": bag.import_errors,
                "dags": dags,
                "heavy_imported": imported,
                "sql": statements,
                "seconds": seconds,
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
