"""Nightly CTMWA scoring of one day's posts partition.

    wait_for_input -> [score_partition: plan -> shards -> score_shard (mapped, GPU queue and pool) -> commit
        -> health_report] -> publish, report

Each run scores the UTC day its data interval starts on, `{input_root}/dt=YYYY-MM-DD`, into
`{output_root}/model_version={v}/dt=YYYY-MM-DD/` (param `partition_date` names another day). A partition that has not
landed is waited for (`CTMWA_INPUT_WAIT_HOURS`), then the run fails: a missing day is an upstream incident to look at,
not a silent success. `health_report` writes report.html / report.json under
`{output_root}/model_version={v}/_reports/dt=YYYY-MM-DD/` (drift against the CTMWA_BASELINE_DAYS before); its alerts go
into the Asset event's extra, and with CTMWA_FAIL_ON_DRIFT set an alert fails that task and so the run (`report`, a
leaf, waits for it), while the scores stay committed and `publish` still publishes them. A day already committed for the same input and model is a no-op (param `overwrite` rescores).
The tasks are idempotent, so `airflow backfill create --dag-id ctmwa_score_daily ...` works as well as the
ctmwa_backfill DAG. An example of ctmwa_batch.airflow.score_partition with the deployment settings: wiring only.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from ctmwa_batch.airflow import score_partition
from ctmwa_batch.settings import SCORES_ASSET_NAME, SCORES_ASSET_URI, Settings, override_param_specs

SETTINGS = Settings.load()  # parse time: only the scheduling fields (schedule, queue, pool, retries, timeouts) are used
SCORES = Asset(name=SCORES_ASSET_NAME, uri=SCORES_ASSET_URI)


@dag(
    dag_id="ctmwa_score_daily",
    description="Score each day's posts with the current CTMWA model",
    schedule=CronDataIntervalTimetable(SETTINGS.schedule, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ctmwa", "scoring"],
    doc_md=__doc__,
    # The light tasks (plan, commit, report) read footers and markers: one retry covers a storage hiccup.
    default_args={"owner": "ctmwa", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "partition_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="score this day (YYYY-MM-DD) instead of the data interval's",
        ),
        "overwrite": Param(False, type="boolean", description="rescore even if the day is committed for this model"),
        **{name: Param(None, **spec) for name, spec in override_param_specs().items()},
    },
)
def ctmwa_score_daily():
    @task.sensor(
        poke_interval=SETTINGS.input_poke_minutes * 60,
        timeout=SETTINGS.input_wait_hours * 3600,
        mode="reschedule",
    )
    def wait_for_input(params=None, data_interval_start=None) -> bool:
        """Wait until the day's input partition has landed (a Parquet file, or the configured ready marker)."""
        from ctmwa_batch.scoring import orchestrate

        return orchestrate.input_ready(data_interval_start, params)

    # Everything left at None (input, output, models, device, columns...) comes from the settings and the run's params.
    scoring = score_partition(
        "score",
        prefix_group_id=False,  # task ids plan, shards, score_shard, commit, health_report
        asset=None,  # publish updates the ctmwa_scores Asset, with the health report's alerts
        score_task_args={
            **SETTINGS.scoring_task_kwargs(),  # queue and pool of the GPU workers (executor, pod template when set)
            "retries": SETTINGS.shard_retries,
            "retry_delay": timedelta(minutes=SETTINGS.retry_delay_minutes),
            "execution_timeout": timedelta(minutes=SETTINGS.shard_timeout_minutes),
            "max_active_tis_per_dag": SETTINGS.max_active_shards,
        },
    )
    summary = scoring.get_child_by_label("commit").output

    # After the health report, whether it passed or failed on drift (the scores are committed either way); not when commit failed.
    @task(outlets=[SCORES], trigger_rule="all_done_min_one_success")
    def publish(summary: dict, params=None, outlet_events=None) -> dict:
        """Update the ctmwa_scores Asset for downstream DAGs (with the health report's alerts); skipped when the run committed nothing new."""
        from ctmwa_batch.scoring import orchestrate

        extra = orchestrate.publish_extra(summary, params)
        if not extra["partitions"]:
            raise AirflowSkipException(f"{summary['date']} was already committed: no new scores, no Asset event")
        outlet_events[SCORES].extra = extra
        return extra

    @task
    def report(summary: dict) -> dict:
        """Rows per status, sentiment distribution and throughput of the day, in the task log."""
        from ctmwa_batch.scoring import orchestrate

        return orchestrate.report(summary, title=f"ctmwa_score_daily {summary['date']}")

    wait_for_input() >> scoring
    scoring >> publish(summary)
    scoring >> report(summary)  # a leaf after the health report: a drift failure makes the run fail, not only the task


ctmwa_score_daily()
