"""Scoring posts whose images are URIs (s3:// on a real S3 server, http:// on a local server): the same scores as
inline bytes, per-row reasons for missing objects, retries under throttling, and a store outage that commits nothing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.io import storage
from ctmwa_batch.scoring import job
from fixtures.httpserver import ImageHTTPServer
from fixtures.netproxy import LatencyProxy
from tests import images
from tests.ctmwa_batch.cli.test_score import FIXED_TIME, TEXTS, cpu
from tests.ctmwa_batch.scoring.test_score_job import output_dir

PARTITION = "dt=2026-11-26"
SCORE_COLUMNS = ["post_id", "sentiment", "confidence", "status", "error"]


def _jpeg(i: int) -> bytes:
    return images.jpeg(40, 32, seed=i % 17)


@pytest.fixture
def image_stores(s3_server, monkeypatch):
    """A fresh bucket, an HTTP server, and the AWS environment pointing at the S3 server."""
    bucket = f"uris-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    storage.configure(None)
    with ImageHTTPServer() as http:
        yield bucket, http


def _write(path: Path, ids: list[str], images_column: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"post_id": ids, "text": [TEXTS[i % len(TEXTS)] for i in range(len(ids))], "image": images_column}),
        path,
        row_group_size=8,
    )
    return path


def _upload(s3_server, bucket: str, http: ImageHTTPServer, n: int) -> list[str]:
    """Post i's image: s3:// for even i, http:// for odd i."""
    fs = s3_server.filesystem()
    uris = []
    for i in range(n):
        if i % 2 == 0:
            with fs.open_output_stream(f"{bucket}/img/{i}.jpg") as f:
                f.write(_jpeg(i))
            uris.append(f"s3://{bucket}/img/{i}.jpg")
        else:
            http.files[f"img/{i}.jpg"] = _jpeg(i)
            uris.append(http.url(f"img/{i}.jpg"))
    return uris


def _scores(root: Path, bundle: Path) -> list[dict]:
    return pq.read_table(output_dir(root, bundle), columns=SCORE_COLUMNS).sort_by("post_id").to_pylist()


def test_uri_posts_score_as_inline_bytes_with_reasons_for_missing_objects(
    full_bundle, s3_server, image_stores, tmp_path, monkeypatch
):
    bucket, http = image_stores
    n = 24
    uris = _upload(s3_server, bucket, http, n)
    missing = {20: f"s3://{bucket}/img/missing.jpg", 21: http.url("img/missing.jpg"), 22: "ftp://host/x.jpg"}
    ids = [f"p{i:02d}" for i in range(n)]
    inline = _write(
        tmp_path / "inline" / PARTITION / "posts.parquet", ids, [None if i in missing else _jpeg(i) for i in range(n)]
    )
    by_uri = _write(
        tmp_path / "uris" / PARTITION / "posts.parquet", ids, [missing.get(i, u) for i, u in enumerate(uris)]
    )
    config = cpu(
        scored_at=FIXED_TIME,
        precision="fp32",
        batch_size=5,
        max_rows_per_shard=16,
        fetch_concurrency=4,
        allow_image_hosts=("127.0.0.1",),  # the test's image server: loopback is refused unless allowed
    )
    job.score_partition(inline.parent, tmp_path / "out-inline", full_bundle, config)
    summary = job.score_partition(by_uri.parent, tmp_path / "out-uris", full_bundle, config)

    got, want = _scores(tmp_path / "out-uris", full_bundle), _scores(tmp_path / "out-inline", full_bundle)
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g["sentiment"], g["status"]) == (w["sentiment"], w["status"]), i
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-6)
    assert [r["status"] for r in got] == ["ok"] * 20 + ["image_missing"] * 3 + ["ok"]
    assert [r["error"] for r in got[20:23]] == [
        f"image not found: {missing[20]}",
        f"image not found: {missing[21]}",
        "unsupported image URI scheme 'ftp' in ftp://host/x.jpg; use s3://, gs://, az://, abfs(s)://, http(s):// or a path",
    ]
    # the fetch stage in _SUCCESS.json and the summary: 24 URIs, 23 GETs, 21 found, no retries
    success = json.loads((output_dir(tmp_path / "out-uris", full_bundle) / "_SUCCESS.json").read_text())
    fetch = success["fetch"]
    assert summary["fetch"] == fetch
    assert (fetch["objects"], fetch["requests"], fetch["not_found"], fetch["invalid"], fetch["retries"]) == (
        24,
        23,
        2,
        1,
        0,
    )
    assert fetch["bytes"] == sum(len(_jpeg(i)) for i in range(n) if i not in missing)
    assert fetch["latency_p95_ms"] >= fetch["latency_p50_ms"] > 0 and fetch["stores"] >= 2
    assert {"fetch", "fetch_wait"} <= set(success["timings"]["stages"])

    # 503 SlowDown on every third connection to S3 and every third GET over HTTP: the same statuses and scores
    with LatencyProxy(("127.0.0.1", s3_server.port), delay_s=0.002, fail_every=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        http.fail_every = 3
        throttled = job.score_partition(by_uri.parent, tmp_path / "out-throttled", full_bundle, config)
    assert _scores(tmp_path / "out-throttled", full_bundle) == got
    assert proxy.failed >= 1 and throttled["fetch"]["retries"] >= proxy.failed + 1


@pytest.mark.slow
def test_image_store_stopped_mid_run_commits_nothing_and_the_rerun_completes(
    full_bundle, s3_server, image_stores, tmp_path, monkeypatch
):
    bucket, _ = image_stores
    n = 48
    fs = s3_server.filesystem()
    for i in range(n):
        with fs.open_output_stream(f"{bucket}/img/{i}.jpg") as f:
            f.write(_jpeg(i))
    ids = [f"p{i:02d}" for i in range(n)]
    posts = _write(
        tmp_path / "posts" / PARTITION / "posts.parquet", ids, [f"s3://{bucket}/img/{i}.jpg" for i in range(n)]
    )
    out = tmp_path / "out"
    args = [
        "score",
        "--bundle",
        str(full_bundle),
        "--input",
        str(posts.parent),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--workers",
        "0",
        "--scored-at",
        FIXED_TIME,
        "--batch-size",
        "4",
        "--max-rows-per-shard",
        "16",
        "--fetch-concurrency",
        "2",
    ]
    with LatencyProxy(("127.0.0.1", s3_server.port), delay_s=0.02) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)

        def outage() -> None:  # the image store goes down once a third of the images are fetched
            while proxy.chunks < n // 3:
                time.sleep(0.005)
            s3_server.stop()

        stopper = threading.Thread(target=outage, daemon=True)
        stopper.start()
        try:
            assert cli_main(args) == 2
        finally:
            stopper.join(30)
        out_dir = output_dir(out, full_bundle)
        assert not (out_dir / "_SUCCESS.json").exists()
        assert [p.name for p in out_dir.glob("*.parquet")] == []  # nothing a reader would take as output
        s3_server.restart()
        assert cli_main(args) == 0
    rows = _scores(out, full_bundle)
    assert (
        [r["post_id"] for r in rows] == ids
        and {r["status"] for r in rows} == {"ok"}
        and {r["error"] for r in rows} == {None}
    )
    success = json.loads((out_dir / "_SUCCESS.json").read_text())
    assert success["rows"]["by_status"] == {"ok": n}
