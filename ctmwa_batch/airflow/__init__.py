"""ctmwa-batch inside your own Airflow DAGs: the only part of ctmwa_batch that imports Airflow.

    from ctmwa_batch.airflow import score_partition

    load >> score_partition("sentiment", input="s3://lake/posts/dt={{ data_interval_start | ds }}",
                            output="s3://lake/scores", models_root="/mnt/models", conn_id="aws_lake") >> dbt_run

`score_partition` builds a TaskGroup (plan -> score_shard, mapped -> commit -> health_report) from the operators in
`ctmwa_batch.airflow.operators`; `ctmwa_batch.airflow.provider.get_provider_info` announces the package to Airflow
(the `apache_airflow_provider` entry point). Names load on first use, so the provider entry point, which Airflow
imports when it lists providers, imports no operator and nothing heavy.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "score_partition",
    "score_range",
    "result_of",
    "PlanPartitionOperator",
    "ScoreShardOperator",
    "CommitPartitionOperator",
    "HealthReportOperator",
]

_WHERE = {
    "score_partition": "ctmwa_batch.airflow.group",
    "score_range": "ctmwa_batch.airflow.group",
    "result_of": "ctmwa_batch.airflow.group",
    "PlanPartitionOperator": "ctmwa_batch.airflow.operators",
    "ScoreShardOperator": "ctmwa_batch.airflow.operators",
    "CommitPartitionOperator": "ctmwa_batch.airflow.operators",
    "HealthReportOperator": "ctmwa_batch.airflow.operators",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ctmwa_batch.airflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
