"""A downstream DAG that runs when scores are committed (docs/dags.md, "Downstream DAGs").

tests/test_docs.py parses this file with Airflow's DagBag and checks its schedule and task.
"""

# --8<-- [start:dag]
from airflow.sdk import Asset, dag, task


@dag(schedule=[Asset("ctmwa_scores")])
def sentiment_rollup():
    @task
    def rollup(triggering_asset_events=None):
        for event in triggering_asset_events[Asset("ctmwa_scores")]:
            for partition in event.extra["partitions"]:
                print(partition["output_dir"])  # .../model_version=.../dt=...: read and aggregate it here

    rollup()


sentiment_rollup()
# --8<-- [end:dag]
