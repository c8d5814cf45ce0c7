"""Scores as Iceberg and Delta tables against the real S3 server (SeaweedFS, with its Iceberg REST catalog), and an
Iceberg SQL catalog on SQLite; outside readers are Polars and pyiceberg/deltalake themselves, never this project's
code."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.io import tables
from ctmwa_batch.model.bundle import load_bundle
from ctmwa_batch.schema import scores_schema
from ctmwa_batch.scoring import job
from fixtures.s3server import SECRET_KEY
from tests.ctmwa_batch.cli.test_score import FIXED_TIME, write_posts
from tests.ctmwa_batch.io.test_storage import _upload, _zoo
from tests.ctmwa_batch.scoring.test_scorer import bad_rows

DAY = "2026-11-26"
PARTITION = f"dt={DAY}"
COMPARED = ("post_id", "status", "sentiment", "error", "text_sentiment", "image_sentiment", "has_text", "has_image")


@pytest.fixture(autouse=True)
def _no_explicit_options(no_explicit_options):
    """Every test here starts and ends without explicit storage options (tests/ctmwa_batch/io/conftest.py)."""


def _set_catalog(monkeypatch, name: str, properties: dict[str, str]) -> None:
    """A pyiceberg catalog configured the way pyiceberg reads it: PYICEBERG_CATALOG__<NAME>__<KEY> variables."""
    for key, value in properties.items():
        monkeypatch.setenv(
            f"PYICEBERG_CATALOG__{name.upper()}__{key.upper().replace('.', '__').replace('-', '_')}", value
        )


@pytest.fixture()
def rest(s3, monkeypatch) -> str:
    """The S3 server's Iceberg REST catalog, as pyiceberg catalog 'lake' (a fresh table bucket as warehouse)."""
    warehouse = f"tb-{uuid.uuid4().hex[:10]}"
    s3.create_table_bucket(warehouse)
    s3.rest_properties = s3.rest_catalog(warehouse)
    _set_catalog(monkeypatch, "lake", s3.rest_properties)
    return "lake"


def _outside_iceberg(s3, identifier: str) -> pl.DataFrame:
    """The table's current snapshot as Polars reads it (pyiceberg's catalog, Polars' reader; no project code)."""
    from pyiceberg.catalog import load_catalog

    table = load_catalog("outside", **s3.rest_properties).load_table(identifier)
    opts = {
        "aws_endpoint_url": s3.endpoint,
        "aws_access_key_id": s3.access_key,
        "aws_secret_access_key": s3.secret_key,
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")  # polars' own planner is another package
    return pl.scan_iceberg(table, storage_options=opts).collect()


def _outside_delta(s3, uri: str) -> pl.DataFrame:
    opts = {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    return pl.read_delta(uri, storage_options=opts)


def _score(capsys, bundle: str, src: str, out: str, *extra: str) -> tuple[int, dict | None, str]:
    rc = cli_main(
        [
            "score",
            "--bundle",
            bundle,
            "--input",
            src,
            "--output",
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--workers",
            "0",
            "--precision",
            "fp32",
            "--scored-at",
            FIXED_TIME,
            *extra,
        ]
    )
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else None), captured.err


def _rows(frame: pl.DataFrame | pa.Table, columns=COMPARED) -> list[tuple]:
    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    table = table.select(list(columns))
    return sorted(zip(*(table.column(c).to_pylist() for c in columns)), key=lambda r: str(r[0]))


# --------------------------------------------------------------------------------------------------- end to end


def test_the_zoo_into_iceberg_and_delta_on_s3_equals_a_local_parquet_run(s3, rest, full_bundle, tmp_path, capsys):
    fs = s3.filesystem()
    b = s3.bucket
    pq.write_table(_zoo(), tmp_path / "zoo.parquet", row_group_size=4)
    _upload(fs, tmp_path / "zoo.parquet", f"{b}/posts/{PARTITION}/zoo.parquet")
    local_src = tmp_path / "posts" / PARTITION
    local_src.mkdir(parents=True)
    (local_src / "zoo.parquet").write_bytes((tmp_path / "zoo.parquet").read_bytes())
    common = ["--max-rows-per-shard", "8", "--batch-size", "3"]
    version = load_bundle(full_bundle).model_version
    src = f"s3://{b}/posts/{PARTITION}"

    rc, local, err = _score(capsys, str(full_bundle), str(local_src), str(tmp_path / "scores"), *common)
    assert rc == 0, err
    want = pq.read_table(tmp_path / "scores" / f"model_version={version}" / PARTITION)
    columns = [*COMPARED, "confidence", "prob_positive", "prob_neutral", "prob_negative"]

    # Iceberg through the REST catalog of the S3 server; its S3 Tables bucket takes only data files, so without
    # --staging the run stops with one line before a shard is scored
    rc, _, err = _score(capsys, str(full_bundle), src, "lake.scores", "--format", "iceberg", "--catalog", rest, *common)
    assert rc == 2 and "set --staging (CTMWA_STAGING)" in err.strip().splitlines()[-1], err
    rc, got, err = _score(
        capsys,
        str(full_bundle),
        src,
        "lake.scores",
        "--format",
        "iceberg",
        "--catalog",
        rest,
        "--staging",
        f"s3://{b}/staging",
        *common,
    )
    assert rc == 0, err
    assert got["rows"] == local["rows"] and got["parts"] == 3
    assert got["table"]["format"] == "iceberg" and got["table"]["partition"] == {"model_version": version, "dt": DAY}
    outside = _outside_iceberg(s3, "lake.scores")
    assert _rows(outside, columns) == _rows(want, columns)
    assert set(outside["dt"].to_list()) == {DAY} and set(outside["model_version"].to_list()) == {version}
    assert Counter(outside["status"].to_list()) == Counter(r[3] for r in bad_rows())
    from pyiceberg.catalog import load_catalog

    table = load_catalog("outside", **s3.rest_properties).load_table("lake.scores")
    snapshot = table.current_snapshot()
    assert snapshot.snapshot_id == got["table"]["snapshot_id"]
    assert snapshot.summary["ctmwa.plan-id"] == got["plan_id"]
    assert [f.name for f in table.spec().fields] == ["model_version", "dt"]
    # a rerun adds no snapshot
    rc, again, err = _score(
        capsys,
        str(full_bundle),
        src,
        "lake.scores",
        "--format",
        "iceberg",
        "--catalog",
        rest,
        "--staging",
        f"s3://{b}/staging",
        *common,
    )
    assert rc == 0 and again["skipped"] is True, err
    assert len(load_catalog("outside", **s3.rest_properties).load_table("lake.scores").snapshots()) == len(
        table.snapshots()
    )

    # Delta in the store, no catalog
    delta = f"s3://{b}/tables/scores"
    rc, got, err = _score(capsys, str(full_bundle), src, delta, "--format", "delta", *common)
    assert rc == 0, err
    assert got["rows"] == local["rows"] and got["table"]["version"] == 1
    outside = _outside_delta(s3, delta)
    assert _rows(outside, columns) == _rows(want, columns)
    rc, again, err = _score(capsys, str(full_bundle), src, delta, "--format", "delta", *common)
    assert rc == 0 and again["skipped"] is True, err
    from deltalake import DeltaTable

    dt = DeltaTable(delta, storage_options=tables.delta_storage_options())
    assert dt.version() == 1 and dt.history(1)[0]["ctmwa.plan-id"] == got["plan_id"]
    assert SECRET_KEY not in json.dumps(got)


def _plan_and_score(src: str, out: str, bundle: Path, **config) -> dict:
    """A plan whose every shard is scored, not committed (what the mapped tasks leave for the commit task)."""
    cfg = {"device": "cpu", "intra_op_threads": 1, "workers": 0, "precision": "fp32", "scored_at": FIXED_TIME, **config}
    plan = job.plan(src, out, bundle, config=cfg)
    for k in range(len(plan["shards"])):
        job.score_shard(plan, k, bundle, cfg)
    return plan


def _commit_at_once(plans: list[dict]) -> list[object]:
    """Commit the plans from as many threads, released at the same moment; each result or its exception."""
    barrier = threading.Barrier(len(plans))
    results: list[object] = [None] * len(plans)

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = job.commit(plans[k])
        except Exception as e:  # the loser's one clear line
            results[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_commits_at_once_two_days_both_land_the_same_day_twice_leaves_one_set(s3, rest, full_bundle, tmp_path, fmt):
    b = s3.bucket
    for day in ("2026-11-26", "2026-11-27"):
        write_posts(tmp_path / "posts" / f"dt={day}" / "a.parquet", 30, row_group_size=10, start=0)
    _upload(s3.filesystem(), tmp_path / "posts", f"{b}/posts")
    out = "lake.scores" if fmt == "iceberg" else f"s3://{b}/scores"
    extra = {"format": fmt, "catalog": rest if fmt == "iceberg" else None, "staging": f"s3://{b}/staging"}
    days = [
        _plan_and_score(f"s3://{b}/posts/dt={day}", out, full_bundle, max_rows_per_shard=10, **extra)
        for day in ("2026-11-26", "2026-11-27")
    ]
    results = _commit_at_once(days)
    assert all(isinstance(r, dict) for r in results), results
    read = _outside_iceberg(s3, out) if fmt == "iceberg" else _outside_delta(s3, out)
    assert Counter(read["dt"].to_list()) == {"2026-11-26": 30, "2026-11-27": 30}

    # the same day twice at once, by two plans (other shard layouts): one set of rows, never a mix or a doubling
    same = [
        _plan_and_score(
            f"s3://{b}/posts/dt=2026-11-26", out, full_bundle, max_rows_per_shard=n, overwrite=True, **extra
        )
        for n in (15, 30)
    ]
    results = _commit_at_once(same)
    losers = [r for r in results if isinstance(r, Exception)]
    for r in losers:
        assert isinstance(r, tables.TableCommitConflict) and "committed by another run" in str(r), r
    read = _outside_iceberg(s3, out) if fmt == "iceberg" else _outside_delta(s3, out)
    day = read.filter(pl.col("dt") == "2026-11-26")
    assert day.height == 30 and day["post_id"].n_unique() == 30
    names = tables.current_files(tables.target_of(job.PartitionPlan.from_dict(same[0])))
    plan_ids = {n.split("-")[2] for n in names}
    assert len(plan_ids) == 1 and plan_ids <= {job.PartitionPlan.from_dict(p).plan_id for p in same}
    assert read.filter(pl.col("dt") == "2026-11-27").height == 30  # the other day untouched


# --------------------------------------------------------------------------------------------------- the SQL catalog


@pytest.fixture()
def sqlite_catalog(monkeypatch, tmp_path) -> str:
    """An Iceberg SQL catalog on SQLite with a local warehouse, as pyiceberg catalog 'local'."""
    _set_catalog(
        monkeypatch,
        "local",
        {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"},
    )
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return "local"


def _scores(labels: list[str]) -> pa.Schema:
    return scores_schema(labels, pa.field("post_id", pa.string()))


def test_other_labels_evolve_the_schema_and_a_clash_is_refused_before_writing(sqlite_catalog):
    load_catalog = tables.load_catalog  # pyiceberg's configuration read now (pyiceberg caches its environment)
    first = tables.prepare("iceberg", "lake.scores", sqlite_catalog, "v1", PARTITION, _scores(["pos", "neg"]))
    second = tables.prepare("iceberg", "lake.scores", sqlite_catalog, "v2", PARTITION, _scores(["happy", "sad"]))
    assert first.location == second.location
    table = load_catalog(sqlite_catalog).load_table("lake.scores")
    names = [f.name for f in table.schema().fields]
    assert {"prob_pos", "prob_neg", "prob_happy", "prob_sad", "model_version", "dt"} <= set(names)
    clash = pa.schema([pa.field("post_id", pa.int64()) if f.name == "post_id" else f for f in _scores(["pos"])])
    with pytest.raises(tables.TableError, match=r"has column 'post_id' as \w*string, these scores need int64"):
        tables.prepare("iceberg", "lake.scores", sqlite_catalog, "v3", PARTITION, clash)
    with pytest.raises(tables.TableError, match=r"partitioned by \['model_version', 'dt'\], not by"):
        tables.prepare("iceberg", "lake.scores", sqlite_catalog, "v1", "region=eu", _scores(["pos", "neg"]))
    assert len(load_catalog(sqlite_catalog).load_table("lake.scores").snapshots()) == 0  # nothing written


def test_other_labels_evolve_a_delta_table(tmp_path):
    from deltalake import DeltaTable

    location = str(tmp_path / "delta")
    tables.prepare("delta", location, None, "v1", PARTITION, _scores(["pos", "neg"]))
    tables.prepare("delta", location, None, "v2", PARTITION, _scores(["happy", "sad"]))
    names = set(pa.schema(DeltaTable(location).schema().to_arrow()).names)
    assert {"prob_pos", "prob_neg", "prob_happy", "prob_sad", "model_version", "dt"} <= names
    clash = pa.schema([pa.field("post_id", pa.int64()) if f.name == "post_id" else f for f in _scores(["pos"])])
    with pytest.raises(tables.TableError, match=r"has column 'post_id' as \w*string, these scores need int64"):
        tables.prepare("delta", location, None, "v3", PARTITION, clash)


def test_wrong_catalog_credentials_are_one_clean_line_and_nothing_is_written(
    s3, rest, full_bundle, tmp_path, capsys, monkeypatch
):
    write_posts(tmp_path / "posts" / PARTITION / "a.parquet", 5)
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__CREDENTIAL", f"{s3.access_key}:wrong-secret-4242")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__TOKEN", "wrong-token-4242")
    src = str(tmp_path / "posts" / PARTITION)
    rc, _, err = _score(capsys, str(full_bundle), src, "lake.scores", "--format", "iceberg", "--catalog", rest)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert "wrong-secret-4242" not in err and "wrong-token-4242" not in err and SECRET_KEY not in err, err
    assert last.startswith("ctmwa-batch score: TableError: Iceberg catalog 'lake'"), last
    assert s3.filesystem().get_file_info(pafs.FileSelector(s3.bucket, recursive=True)) == []


def test_catalog_faults_are_one_clean_line(s3, full_bundle, tmp_path, capsys, monkeypatch):
    write_posts(tmp_path / "posts" / PARTITION / "a.parquet", 5)
    src = str(tmp_path / "posts" / PARTITION)
    rc, _, err = _score(capsys, str(full_bundle), src, "lake.scores", "--format", "iceberg", "--catalog", "nowhere")
    assert rc == 2 and err.strip().splitlines()[-1].startswith(
        "ctmwa-batch score: TableError: Iceberg catalog 'nowhere' is not configured; configure it as pyiceberg does"
    ), err
    from fixtures.s3server import free_port_pairs

    port = free_port_pairs(1)[0]
    _set_catalog(
        monkeypatch, "down", {"type": "rest", "uri": f"http://127.0.0.1:{port}", "credential": f"k:{SECRET_KEY}"}
    )
    rc, _, err = _score(capsys, str(full_bundle), src, "lake.scores", "--format", "iceberg", "--catalog", "down")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err and SECRET_KEY not in err, err
    assert last.startswith("ctmwa-batch score: TableError: Iceberg catalog 'down'") and "uri" in last, last
    rc, _, err = _score(capsys, str(full_bundle), src, "not-an-identifier", "--format", "iceberg", "--catalog", "down")
    assert rc == 2 and "give namespace.table" in err.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------------- sources


def test_posts_from_an_iceberg_partition_score_as_from_parquet(sqlite_catalog, full_bundle, tmp_path, capsys):
    load_catalog = tables.load_catalog  # pyiceberg's configuration read now (pyiceberg caches its environment)
    zoo = _zoo()
    pq.write_table(zoo, tmp_path / "zoo.parquet", row_group_size=4)
    catalog = load_catalog(sqlite_catalog)
    catalog.create_namespace("raw")
    posts = zoo.append_column("dt", pa.array([DAY] * zoo.num_rows, pa.string()))
    other = zoo.append_column("dt", pa.array(["2026-11-25"] * zoo.num_rows, pa.string()))
    with catalog.create_table_transaction("raw.posts", schema=posts.schema) as tx:
        with tx.update_spec() as spec:
            spec.add_identity("dt")
    table = catalog.load_table("raw.posts")
    table.append(pa.concat_tables([posts, other]))

    rc, from_parquet, err = _score(capsys, str(full_bundle), str(tmp_path / "zoo.parquet"), str(tmp_path / "a"))
    assert rc == 0, err
    rc, from_table, err = _score(
        capsys,
        str(full_bundle),
        "raw.posts",
        str(tmp_path / "b"),
        "--input-format",
        "iceberg",
        "--catalog",
        sqlite_catalog,
        "--partition",
        f"dt={DAY}",
    )
    assert rc == 0, err
    assert from_table["rows"]["by_status"] == from_parquet["rows"]["by_status"]
    assert from_table["partition"] == PARTITION
    version = load_bundle(full_bundle).model_version
    a = pq.read_table(tmp_path / "a" / f"model_version={version}" / "zoo")
    got = pq.read_table(tmp_path / "b" / f"model_version={version}" / PARTITION)
    assert _rows(got) == _rows(a)
    receipt = json.loads((tmp_path / "b" / f"model_version={version}" / PARTITION / "_SUCCESS.json").read_text())
    assert receipt["input"]["num_rows"] == zoo.num_rows
    # the plan pinned the snapshot it read: a later append to the table does not change what the plan scores
    plan = job.plan("raw.posts", str(tmp_path / "c"), full_bundle, config=_source_config(sqlite_catalog))
    assert plan["source"]["snapshot_id"] == table.current_snapshot().snapshot_id
    table.append(posts)
    assert job.PartitionPlan.from_dict(plan).num_rows == zoo.num_rows
    rc, _, err = _score(
        capsys,
        str(full_bundle),
        "raw.posts",
        str(tmp_path / "d"),
        "--input-format",
        "iceberg",
        "--catalog",
        sqlite_catalog,
        "--partition",
        "region=eu",
    )
    assert rc == 2 and "is not partitioned by ['region']" in err.strip().splitlines()[-1]


def _source_config(catalog: str) -> dict:
    return {
        "device": "cpu",
        "precision": "fp32",
        "input_format": "iceberg",
        "catalog": catalog,
        "partition": f"dt={DAY}",
    }


def test_posts_from_a_delta_partition(full_bundle, tmp_path, capsys):
    from deltalake import write_deltalake

    zoo = _zoo()
    write_deltalake(
        str(tmp_path / "posts"),
        zoo.append_column("dt", pa.array([DAY] * zoo.num_rows, pa.string())),
        partition_by=["dt"],
    )
    rc, got, err = _score(
        capsys,
        str(full_bundle),
        str(tmp_path / "posts"),
        str(tmp_path / "s"),
        "--input-format",
        "delta",
        "--partition",
        f"dt={DAY}",
    )
    assert rc == 0, err
    assert got["rows"]["input"] == zoo.num_rows
    assert Counter(got["rows"]["by_status"]) == Counter(r[3] for r in bad_rows())
    assert os.path.isdir(tmp_path / "s" / f"model_version={load_bundle(full_bundle).model_version}" / PARTITION)


# --------------------------------------------------------------------------------------------------- kills


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_sigkills_while_an_outside_reader_polls_never_show_a_partial_partition(s3, rest, full_bundle, tmp_path, fmt):
    """SIGKILL the scorer 8 times (twice inside the commit), then a final run: Polars, polling the table all along,
    only ever sees the day absent or whole, and at the end exactly the clean run's rows."""
    import random
    import subprocess
    import sys
    import time

    b = s3.bucket
    for k in range(2):
        write_posts(tmp_path / "posts" / f"part-{k}.parquet", 30, row_group_size=10, start=k * 30)
    _upload(s3.filesystem(), tmp_path / "posts", f"{b}/posts/{PARTITION}")
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    staging = f"s3://{b}/staging"

    def cmd(out: str, *extra: str) -> list[str]:
        where = ["--catalog", rest, "--staging", staging] if fmt == "iceberg" else []
        return [
            *(sys.executable, "-m", "ctmwa_batch.cli.main", "score", "--bundle", str(full_bundle)),
            *("--input", f"s3://{b}/posts/{PARTITION}", "--output", out, "--format", fmt, *where),
            *("--device", "cpu", "--threads", "1", "--workers", "0", "--batch-size", "10", "--precision", "fp32"),
            *("--max-rows-per-shard", "20", "--scored-at", FIXED_TIME, *extra),
        ]

    def read(out: str) -> pl.DataFrame:
        return _outside_iceberg(s3, out) if fmt == "iceberg" else _outside_delta(s3, out)

    clean_out, out = ("lake.clean", "lake.scores") if fmt == "iceberg" else (f"s3://{b}/clean", f"s3://{b}/scores")
    t0 = time.monotonic()
    clean = subprocess.run(cmd(clean_out), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    clean_seconds = time.monotonic() - t0
    assert clean.returncode == 0, clean.stderr[-2000:]
    want = read(clean_out).drop("dt").sort("post_id")
    assert want.height == 60

    version = load_bundle(full_bundle).model_version
    markers_dir = f"{b}/staging" if fmt == "iceberg" else f"{b}/scores/_ctmwa"
    markers_dir += f"/model_version={version}/{PARTITION}/_shards"
    fs = s3.filesystem()

    def markers() -> int:
        listing = fs.get_file_info(pafs.FileSelector(markers_dir, allow_not_found=True))
        return sum(1 for i in listing if i.base_name.endswith(".json"))

    seen: list[tuple[int, int]] = []  # (rows, distinct ids) of the day at each read
    stop = threading.Event()

    def outside_reader() -> None:
        while not stop.is_set():
            try:
                day = read(out)
            except Exception:  # no table yet (the first run creates it)
                time.sleep(0.05)
                continue
            seen.append((day.height, day["post_id"].n_unique()))

    reader = threading.Thread(target=outside_reader, daemon=True)
    reader.start()
    rng = random.Random(7)
    killed = runs = in_commit = 0
    committed = False
    try:
        for attempt in range(16):
            if killed >= 8:
                break
            proc = subprocess.Popen(
                cmd(out, *(["--overwrite"] if committed else [])),
                env=env,
                cwd=repo,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            runs += 1
            if attempt in (3, 6):  # inside the commit: every shard marked, the process still running
                while proc.poll() is None and markers() >= 3:
                    time.sleep(0.01)  # an --overwrite run withdraws the old markers first
                while proc.poll() is None and markers() < 3:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.2))
                in_commit += proc.poll() is None
            else:
                deadline = time.monotonic() + rng.uniform(0.5, max(0.6, 0.9 * clean_seconds))
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait()
            committed = committed or proc.returncode == 0
            with contextlib.suppress(Exception):
                committed = committed or read(out).height > 0
        final = subprocess.run(cmd(out), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert killed >= 6 and in_commit >= 1, (killed, runs, in_commit)
    print(
        f"{fmt}: {killed} kills ({in_commit} inside the commit) in {runs} runs; the outside reader read {len(seen)} times: {Counter(seen)}"
    )
    assert seen and set(seen) <= {(0, 0), (60, 60)}, Counter(seen)
    assert (60, 60) in seen
    got = read(out).drop("dt").sort("post_id")
    assert got.equals(want)


# --------------------------------------------------------------------------------------------------- maintenance


def test_maintain_compacts_expires_and_sweeps_orphans_and_a_rerun_stays_a_no_op(
    sqlite_catalog, full_bundle, tmp_path, capsys
):
    write_posts(tmp_path / "posts" / PARTITION / "a.parquet", 30, row_group_size=10)
    src = str(tmp_path / "posts" / PARTITION)
    delta = str(tmp_path / "delta")
    outputs = {"iceberg": ("lake.scores", "--catalog", sqlite_catalog), "delta": (delta,)}
    version = load_bundle(full_bundle).model_version
    for fmt, (out, *extra) in outputs.items():
        rc, got, err = _score(capsys, str(full_bundle), src, out, "--format", fmt, *extra, "--max-rows-per-shard", "10")
        assert rc == 0 and got["parts"] == 3, err
        # a killed attempt's file: written, never committed
        folder = Path((got.get("data_dir") or got["output_dir"]).removeprefix("file://"))
        pq.write_table(
            pq.read_table(next(folder.glob("part-*.parquet"))), folder / "part-00001-killed-000000000000.parquet"
        )
        before = sorted(p.name for p in folder.glob("part-*.parquet"))
        assert len(before) == 4
        table = ("--table", out, *(("--catalog", sqlite_catalog) if fmt == "iceberg" else ()))
        argv = ["table", "maintain", "--format", fmt, *table, "--older-than-hours", "0", "--compact-min-files", "2"]
        assert cli_main([*argv, "--dry-run"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert dry["compacted"] == [{"partition": f"model_version={version}/{PARTITION}", "files_before": 3}]
        assert sorted(p.name for p in folder.glob("part-*.parquet")) == before  # a dry run changes nothing
        assert cli_main(argv) == 0
        done = json.loads(capsys.readouterr().out)
        assert done["compacted"][0]["files_after"] == 1 and done["compacted"][0]["rows"] == 30
        assert done["orphans_removed"] == 4  # the killed attempt's file and the 3 files compaction replaced
        (left,) = folder.glob("part-*.parquet")
        assert left.name.startswith(f"part-c0000-{got['plan_id']}-")
        read = tables.load_catalog(sqlite_catalog).load_table(out).scan().to_arrow() if fmt == "iceberg" else None
        rows = pl.from_arrow(read) if read is not None else pl.read_delta(delta)
        assert rows.height == 30 and rows["post_id"].n_unique() == 30
        # the receipt lists the compacted file: the health report reads the day after the sweep
        from ctmwa_batch.monitoring.drift import collect_day

        stats = collect_day(got["output_dir"].rsplit(f"/model_version={version}/", 1)[0], version, DAY, PARTITION)
        assert stats.committed and stats.rows == 30
        # the plan is still committed: a rerun is a no-op
        rc, again, err = _score(
            capsys, str(full_bundle), src, out, "--format", fmt, *extra, "--max-rows-per-shard", "10"
        )
        assert rc == 0 and again["skipped"] is True, err


def test_the_backfill_and_the_health_report_find_a_table_partition(full_bundle, tmp_path, capsys):
    from ctmwa_batch.io.partitions import plan_partition
    from ctmwa_batch.scoring import orchestrate
    from ctmwa_batch.settings import Settings

    delta = str(tmp_path / "delta")
    for day in ("2026-11-26", "2026-11-27"):
        write_posts(tmp_path / "posts" / f"dt={day}" / "a.parquet", 12, row_group_size=6)
    rc, got, err = _score(capsys, str(full_bundle), str(tmp_path / "posts" / PARTITION), delta, "--format", "delta")
    assert rc == 0, err
    settings = Settings(output_root=delta, format="delta", input_root=str(tmp_path / "posts"), device="cpu")
    version = got["model_version"]
    done = plan_partition(settings.input_path("2026-11-26"), delta, version)
    todo = plan_partition(settings.input_path("2026-11-27"), delta, version)
    assert orchestrate._committed(done, settings) and not orchestrate._committed(todo, settings)
    # the receipts the health report reads are under the table's _ctmwa/ folder, the files they list beside the data
    assert settings.scores_root() == f"{delta}/_ctmwa"
    from ctmwa_batch.monitoring.drift import collect_day

    stats = collect_day(settings.scores_root(), version, "2026-11-26", PARTITION)
    assert stats.committed and stats.rows == 12


def test_a_connection_supplies_an_iceberg_catalog(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ctmwa_batch.airflow.connections import connection_catalogs

    for name in [k for k in os.environ if k.startswith("PYICEBERG_CATALOG__")]:
        monkeypatch.delenv(name)
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/c.db", "warehouse": f"file://{tmp_path}/wh"}
    conn = SimpleNamespace(extra_dejson={"iceberg_catalogs": {"conn_lake": props}})
    with pytest.raises(tables.TableError, match="'conn_lake' is not configured"):
        tables.load_catalog("conn_lake")
    tables.configure_catalogs(connection_catalogs(conn))
    try:
        target = tables.prepare("iceberg", "lake.scores", "conn_lake", "v1", PARTITION, _scores(["pos"]))
        assert target.location.startswith(f"file://{tmp_path}/wh")
    finally:
        tables.configure_catalogs(None)
    with pytest.raises(ValueError, match="iceberg_catalogs"):
        connection_catalogs(SimpleNamespace(extra_dejson={"iceberg_catalogs": {"x": "not an object"}}))
