"""Scoring inside your own DAG: `score_partition` between your tasks (docs/your-own-dag.md, README.md).

tests/test_docs.py parses this file with Airflow's DagBag (no database, no Connection at parse time) and checks the
tasks it wires. `ingest` and `dbt_run` stand for your own tasks.
"""

# --8<-- [start:dag]
import pendulum
from airflow.sdk import dag, task

from ctmwa_batch.airflow import result_of, score_partition


@task
def ingest() -> None: ...  # your task that lands the day's posts


@task
def dbt_run(scores: dict) -> None: ...  # your task that reads the scores (partition, rows, report_dir, alerts)


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def posts_pipeline():
    sentiment = score_partition(
        "sentiment",
        input="s3://lake/posts/dt={{ data_interval_start | ds }}",
        output="s3://lake/scores",
        models_root="/mnt/models",
        conn_id="aws_lake",
        device="cuda",
        score_task_args={"queue": "gpu", "pool": "ctmwa_gpu", "retries": 2},
    )
    ingest() >> sentiment >> dbt_run(result_of(sentiment))


posts_pipeline()
# --8<-- [end:dag]
