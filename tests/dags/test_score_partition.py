"""score_partition in a DAG the project does not ship: a DAG file written here, parsed the way the DAG processor does
(no I/O, no Connection, nothing heavy), then run under `dag.test()`: one task of its own, then two groups scoring two
partitions (one templated on the run's date, one a fixed hive path with passthrough) into one scores root, and a
task downstream of both that pulls their results. The run reports OpenLineage events to a file (the provider's file
transport), and the commits update Asset(output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ctmwa_batch.io.partitions import output_dir
from ctmwa_batch.model import registry
from fixtures import posts as demo_posts
from tests.dags.conftest import REPO, airflow_env, task_states

DAY = "2026-01-05"  # the templated group's partition: the run's date
CAMPAIGN = "region=eu/dt=2025-12-24"  # the fixed group's partition, a hive path two levels deep

OWN_DAG = '''
"""A data team's pipeline: ingest, then score the day's posts and a fixed campaign partition, then roll up."""

import pendulum
from airflow.sdk import dag, task

from ctmwa_batch.airflow import result_of, score_partition

LAKE = {lake!r}
SCORES = {scores!r}


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def my_pipeline():
    @task
    def ingest(ds=None) -> str:
        return f"ingested {{ds}}"

    daily = score_partition(
        "posts",
        input=LAKE + "/posts/dt={{{{ data_interval_start | ds }}}}",
        output=SCORES,
        models_root={models!r},
        device="cpu",
        max_rows_per_shard=20,
        baseline_days=2,
        score_task_args={{"retries": 1, "max_active_tis_per_dag": 2, "pool": "default_pool"}},
        tooltip="the day's posts",
    )
    campaign = score_partition(
        "campaign",
        input=LAKE + "/campaign/{campaign}",
        output=SCORES,
        bundle={bundle!r},
        device="cpu",
        passthrough=["created_at"],
        health_report=False,
        conn_id={conn_id!r},
    )

    @task
    def rollup(daily: dict, campaign: dict) -> dict:
        return {{s["partition"]: s["rows"]["by_status"] for s in (daily, campaign)}}

    ingest() >> [daily, campaign]
    rollup(result_of(daily), result_of(campaign))


my_pipeline()
'''


def write_dag(folder: Path, **values: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "my_pipeline.py"
    path.write_text(OWN_DAG.format(campaign=CAMPAIGN, **values))
    return path


def test_building_the_groups_does_no_io(tmp_path):
    """Parsed with a database that cannot be opened, Variable/Connection lookups that raise, and an S3 input behind a
    Connection that does not exist: no import error, no SQL, nothing heavy imported."""
    folder = tmp_path / "dags"
    write_dag(
        folder,
        lake="s3://no-such-bucket/lake",
        scores="s3://no-such-bucket/scores",
        models="s3://no-such-bucket/models",
        bundle="/no/such/bundle",
        conn_id="no_such_connection",
    )
    result = tmp_path / "parse.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dags.parse_probe", str(folder), str(result)],
        env=airflow_env(
            tmp_path / "home", AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/no/such/dir/airflow.db"
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parsed = json.loads(result.read_text())
    assert parsed["import_errors"] == {} and parsed["sql"] == [] and parsed["heavy_imported"] == []
    tasks = parsed["dags"]["my_pipeline"]["tasks"]
    assert set(tasks) == {"ingest", "rollup"} | {
        f"{g}.{t}" for g in ("posts", "campaign") for t in ("plan", "shards", "score_shard", "commit")
    } | {"posts.health_report"}
    shard = tasks["posts.score_shard"]
    assert (
        shard["mapped"]
        and shard["retries"] == 1
        and shard["max_active_tis_per_dag"] == 2
        and shard["pool"] == "default_pool"
    )
    assert tasks["posts.plan"]["upstream"] == ["ingest"] and tasks["campaign.plan"]["upstream"] == ["ingest"]
    assert tasks["posts.commit"]["upstream"] == ["posts.plan", "posts.score_shard"] and tasks["posts.commit"][
        "trigger_rule"
    ].endswith("NONE_FAILED")
    assert tasks["posts.health_report"]["upstream"] == ["posts.commit"]
    assert tasks["rollup"]["upstream"] == ["campaign.commit", "posts.health_report"]  # each group's last task
    assert tasks["posts.commit"]["outlets"] == ["s3://no-such-bucket/scores"]  # Asset(output)


@pytest.mark.slow
def test_two_groups_in_a_users_dag_commit_every_row(run_dags, full_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("own_dag")
    models = root / "models"
    version = registry.publish(full_bundle, models)["model_version"]
    lake, scores = root / "lake", root / "scores"
    demo_posts.write_partition(lake, DAY, rows=30, row_group_size=10)  # 40 rows with the bad ones
    demo_posts.write_partition(root / "staging", CAMPAIGN[-10:], rows=15, row_group_size=10)  # 25 rows
    campaign_dir = lake / "campaign" / CAMPAIGN
    campaign_dir.parent.mkdir(parents=True)
    (root / "staging" / "posts" / f"dt={CAMPAIGN[-10:]}").rename(campaign_dir)
    folder = write_dag(
        root / "dags", lake=str(lake), scores=str(scores), models=str(models), bundle=str(full_bundle), conn_id=None
    )
    lineage = root / "openlineage.json"
    run, rerun = run_dags(
        # The same day again (another run of it, six hours later): both partitions are committed, nothing to do.
        [
            {"dag_id": "my_pipeline", "logical_date": f"{DAY}T00:00:00+00:00"},
            {"dag_id": "my_pipeline", "logical_date": f"{DAY}T06:00:00+00:00"},
        ],
        env={
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(lineage), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "ctmwa-tests",
        },
        dags_folder=folder,
    )
    assert run["state"] == "success", run["tasks"]
    assert task_states(run, "ingest") == ["success"]
    assert task_states(run, "posts.score_shard") == ["success"] * 2  # 40 rows in row groups of 10, 20 rows a shard
    assert task_states(run, "campaign.score_shard") == ["success"]  # one shard: the default max_rows_per_shard

    for group, source, partition in (
        ("posts", lake / "posts" / f"dt={DAY}", f"dt={DAY}"),
        ("campaign", campaign_dir, CAMPAIGN),
    ):
        out = Path(output_dir(str(scores), version, partition))
        success = json.loads((out / "_SUCCESS.json").read_text())
        posts, scored = pq.read_table(source), pq.read_table(out)
        assert success["rows"]["input"] == success["rows"]["output"] == posts.num_rows == scored.num_rows
        assert scored.column("post_id").to_pylist() == posts.column("post_id").to_pylist()  # every input row, in order
        assert run["xcom"][f"{group}.commit"]["partition"] == partition and run["xcom"][f"{group}.commit"][
            "output_dir"
        ] == str(out)
    campaign_scores = pq.read_table(Path(output_dir(str(scores), version, CAMPAIGN)))
    assert (
        campaign_scores.column("created_at").to_pylist() == pq.read_table(campaign_dir).column("created_at").to_pylist()
    )  # passthrough

    # The groups' results downstream: the day's commit summary plus its health report; the campaign's commit summary.
    daily = run["xcom"]["posts.health_report"]
    assert (
        daily["date"] == DAY
        and daily["rows"]["output"] == 40
        and Path(daily["html"]).is_file()
        and daily["alerts"] == []
    )
    assert set(run["xcom"]["rollup"]) == {f"dt={DAY}", CAMPAIGN}
    assert run["xcom"]["rollup"][CAMPAIGN] == run["xcom"]["campaign.commit"]["rows"]["by_status"]

    # Each commit updated Asset(output) with the partition it landed.
    events = sorted(run["asset_events"], key=lambda e: e["task_id"])
    assert [e["task_id"] for e in events] == ["campaign.commit", "posts.commit"]
    assert {e["uri"] for e in events} == {f"file://{scores}"}
    assert [e["extra"]["partitions"][0]["partition"] for e in events] == [CAMPAIGN, f"dt={DAY}"]

    # The rerun: zero shards, the summaries unchanged, no Asset event.
    assert rerun["state"] == "success", rerun["tasks"]
    assert rerun["xcom"]["posts.shards"] == [] and set(task_states(rerun, "posts.score_shard")) == {"skipped"}
    for group in ("posts", "campaign"):
        assert (
            rerun["xcom"][f"{group}.commit"]["skipped"]
            and rerun["xcom"][f"{group}.commit"]["committed_at"] == run["xcom"][f"{group}.commit"]["committed_at"]
        )
    assert rerun["asset_events"] == []

    # OpenLineage: posts and model in, scores (and the report) out.
    completes = {}
    for line in lineage.read_text().splitlines():
        event = json.loads(line)
        if event["eventType"] == "COMPLETE" and event["job"]["name"].startswith("my_pipeline."):  # tasks, not the DAG
            completes.setdefault(event["job"]["name"].removeprefix("my_pipeline."), []).append(event)
    names = lambda datasets: {(d["namespace"], d["name"]) for d in datasets}  # noqa: E731
    shard = completes["posts.score_shard"][0]
    assert names(shard["inputs"]) == {("file", str(lake / "posts" / f"dt={DAY}")), ("file", str(models / version))}
    assert names(shard["outputs"]) == {("file", str(Path(output_dir(str(scores), version, f"dt={DAY}"))))}
    assert names(completes["campaign.commit"][0]["outputs"]) == {
        ("file", str(Path(output_dir(str(scores), version, CAMPAIGN))))
    }
    assert ("file", str(full_bundle)) in names(completes["campaign.plan"][0]["inputs"])
    assert names(completes["posts.health_report"][0]["outputs"]) == {("file", str(Path(daily["report_dir"])))}


S3_DAG = """
import pendulum
from airflow.sdk import dag

from ctmwa_batch.airflow import score_partition


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def lake_on_s3():
    score_partition(
        "posts",
        input="s3://{bucket}/posts/dt={{{{ params.day }}}}",
        output="s3://{bucket}/scores",
        bundle={bundle!r},
        device="cpu",
        max_rows_per_shard=20,
        conn_id="lake_s3",
    )


lake_on_s3()
"""


@pytest.mark.slow
def test_a_connection_gives_the_storage_of_an_s3_lake(run_dags, full_bundle, s3_server, tmp_path_factory, monkeypatch):
    """input and output on a real S3 server, reached through the Connection alone: the worker has no AWS_* variable."""
    import uuid

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    root = tmp_path_factory.mktemp("s3_dag")
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    info = demo_posts.write_partition(root / "local", DAY, rows=30, row_group_size=10)
    fs = s3_server.filesystem()
    local = root / "local" / "posts" / f"dt={DAY}"
    for f in local.iterdir():
        with fs.open_output_stream(f"{bucket}/posts/dt={DAY}/{f.name}") as out:
            out.write(f.read_bytes())
    folder = root / "dags"
    folder.mkdir()
    (folder / "lake_on_s3.py").write_text(S3_DAG.format(bucket=bucket, bundle=str(full_bundle)))
    connection = {
        "conn_type": "aws",
        "login": s3_server.access_key,
        "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"},
    }
    (run,) = run_dags(
        [{"dag_id": "lake_on_s3", "logical_date": f"{DAY}T00:00:00+00:00", "conf": {"day": DAY}}],
        env={"AIRFLOW_CONN_LAKE_S3": json.dumps(connection)},
        dags_folder=folder,
    )
    assert run["state"] == "success", run["tasks"]
    assert task_states(run, "posts.score_shard") == ["success"] * 2
    summary = run["xcom"]["posts.health_report"]
    version = summary["model_version"]
    out = f"{bucket}/scores/model_version={version}/dt={DAY}"
    assert (
        summary["output_dir"] == f"s3://{out}"
        and summary["rows"]["input"] == summary["rows"]["output"] == info["rows"] == 40
    )
    scored = pq.read_table(out, filesystem=fs)
    assert scored.column("post_id").to_pylist() == pq.read_table(local).column("post_id").to_pylist()
    assert json.loads(fs.open_input_stream(f"{out}/_SUCCESS.json").read())["rows"]["output"] == scored.num_rows
    assert fs.get_file_info(f"{bucket}/scores/model_version={version}/_reports/dt={DAY}/report.html").size > 10_000
    assert "storage from Connection 'lake_s3': endpoint=" + s3_server.endpoint in run_dags.log
    assert s3_server.secret_key not in run_dags.log and s3_server.secret_key not in json.dumps(run["xcom"])
