"""Backfill: score a range of days with one model, in bounded parallel, skipping days already committed for it.

    plan -> chunks -> score_days (mapped: one task per day, or per chunk of days for ranges longer than max_map_length) -> report, health_report

Trigger it by hand with `start_date`, `end_date` (both included), `model_version` ("current" or a published version),
`overwrite`. The model is resolved once, when the run plans, so every day of the range gets the same model even if
CURRENT moves meanwhile. Parallelism is bounded by the pool (all DAGs together) and by max_active_tis_per_dag (this
DAG's share). Days without input are listed in the report and skipped (`on_missing`: "fail" fails the run instead).
`health_report` writes one report for the whole range under `{output_root}/model_version={v}/_reports/dt=START..END/`.
An example of ctmwa_batch.airflow.score_range with the deployment settings: wiring only.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag

from ctmwa_batch.airflow import score_range
from ctmwa_batch.settings import SCORES_ASSET_NAME, SCORES_ASSET_URI, Settings, override_param_specs

SETTINGS = Settings.load()  # parse time: only the scheduling fields (queue, pool, retries, timeouts) are used
SCORES = Asset(name=SCORES_ASSET_NAME, uri=SCORES_ASSET_URI)


@dag(
    dag_id="ctmwa_backfill",
    description="Score a date range with one CTMWA model, skipping committed days",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two backfills of overlapping ranges would race for the same partitions
    tags=["ctmwa", "scoring", "backfill"],
    doc_md=__doc__,
    # The light tasks (plan, commit, report) read footers and markers: one retry covers a storage hiccup.
    default_args={"owner": "ctmwa", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "start_date": Param(type="string", format="date", description="first day to score (YYYY-MM-DD)"),
        "end_date": Param(type="string", format="date", description="last day to score, included (YYYY-MM-DD)"),
        "overwrite": Param(False, type="boolean", description="rescore days already committed for this model"),
        "on_missing": Param(
            "skip",
            enum=["skip", "fail"],
            description="days without input: skip them (listed in the report) or fail the run",
        ),
        **{name: Param(None, **spec) for name, spec in override_param_specs().items()},
    },
)
def ctmwa_backfill():
    # Everything left out (start_date, end_date, on_missing, input, output, models, device...) comes from the run's
    # params and the settings.
    score_range(
        "backfill",
        prefix_group_id=False,  # task ids plan, chunks, score_days, report, health_report
        asset=SCORES,
        score_task_args={
            **SETTINGS.scoring_task_kwargs(),  # queue and pool of the GPU workers (executor, pod template when set)
            "retries": SETTINGS.shard_retries,
            "retry_delay": timedelta(minutes=SETTINGS.retry_delay_minutes),
            # A task scores whole days one after another; a retry skips the shards and days that finished.
            "execution_timeout": timedelta(minutes=SETTINGS.backfill_timeout_minutes),
            "max_active_tis_per_dag": SETTINGS.max_active_shards,
        },
    )


ctmwa_backfill()
