"""ctmwa_batch.io.fetch against real servers: S3 (SeaweedFS) for s3://, http.server for http://, loopback only."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ctmwa_batch.io import storage
from ctmwa_batch.io.fetch import FetchConfig, FetchDenied, Fetcher, FetchFailed, classify, parse_location
from fixtures.httpserver import ImageHTTPServer
from fixtures.netproxy import LatencyProxy
from fixtures.s3server import SECRET_KEY
from tests import images

FAST = FetchConfig(
    concurrency=8,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
    max_tries=4,
    retry_budget_s=5.0,
    connect_timeout_s=1.0,
    allow_image_hosts=("127.0.0.1",),  # the test servers' address: loopback is refused unless allowed
)


def fast(**changes) -> FetchConfig:
    """FAST with some fields changed."""
    return FetchConfig(**{**FAST.__dict__, **changes})


JPEGS = {f"img/{i}.jpg": images.jpeg(seed=i) for i in range(6)}


@pytest.fixture
def http_images():
    with ImageHTTPServer(JPEGS) as server:
        yield server


@pytest.fixture
def s3_images(s3_server, monkeypatch):
    """A fresh bucket holding JPEGS, and the AWS environment pointing at the server."""
    bucket = f"fetch-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    fs = s3_server.filesystem()
    for key, data in JPEGS.items():
        with fs.open_output_stream(f"{bucket}/{key}") as f:
            f.write(data)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    storage.configure(None)
    yield bucket
    storage.configure(None)


def test_http_bytes_not_found_gone_and_permission(http_images, tmp_path):
    http_images.status.update({"gone.jpg": 410, "secret.jpg": 403, "login.jpg": 401, "bad.jpg": 400})
    uris = [
        http_images.url("img/0.jpg"),
        http_images.url("nope.jpg"),
        http_images.url("gone.jpg"),
        http_images.url("secret.jpg"),
        http_images.url("login.jpg"),
        http_images.url("bad.jpg"),
        None,
        "",
    ]
    with Fetcher(FAST) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, tmp_path)
        stats = fetcher.summary()
    assert data[0] == JPEGS["img/0.jpg"] and errors[0] is None
    assert data[1:] == [None] * 7
    assert errors[1:3] == [f"image not found: {uris[1]}", f"image not found: {uris[2]}"]
    assert errors[3] == f"image permission denied (HTTP 403): {uris[3]}"
    assert errors[4] == f"image permission denied (HTTP 401): {uris[4]}"
    assert errors[5] == f"image fetch refused (HTTP 400): {uris[5]}"
    assert errors[6:] == [None, None]  # no image: a missing modality, not an error
    # none of these is retried: one GET each
    assert all(http_images.requests[p] == 1 for p in ("nope.jpg", "gone.jpg", "secret.jpg", "login.jpg", "bad.jpg"))
    assert stats["objects"] == 6 and stats["requests"] == 6 and stats["retries"] == 0
    assert (stats["not_found"], stats["denied"], stats["refused"]) == (2, 2, 1)
    assert stats["bytes"] == len(JPEGS["img/0.jpg"]) and stats["stores"] == 1 and stats["latency_p50_ms"] > 0


def test_injected_503s_are_retried_to_the_same_bytes(http_images, tmp_path):
    http_images.fail_every = 3
    uris = [http_images.url(k) for k in JPEGS] * 3
    with Fetcher(FAST) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, tmp_path)
        stats = fetcher.summary()
    assert errors == [None] * len(uris)
    assert data == list(JPEGS.values()) * 3
    assert stats["retries"] >= len(uris) // 3 and stats["requests"] == len(uris) + stats["retries"]


def test_a_store_down_past_the_budget_fails_the_run_unless_allowed(http_images, tmp_path):
    http_images.status["down.jpg"] = 503
    uris = [http_images.url("img/1.jpg"), http_images.url("down.jpg")]
    with Fetcher(FAST) as fetcher:
        fetcher.begin()
        with pytest.raises(FetchFailed, match="--max-fetch-failures"):
            fetcher.fetch(uris, tmp_path)
    assert http_images.requests["down.jpg"] == FAST.max_tries
    with Fetcher(fast(max_failures=1)) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, tmp_path)
        assert data[0] == JPEGS["img/1.jpg"] and data[1] is None
        assert (
            errors[1].startswith(f"image fetch failed after {FAST.max_tries} tries: {uris[1]}: ") and "503" in errors[1]
        )
        fetcher.begin()  # a new run (shard) counts afresh
        assert fetcher.fetch(uris, tmp_path)[1][1] is not None
        with pytest.raises(FetchFailed):  # the second failure of one run is one too many
            fetcher.fetch(uris, tmp_path)


def test_permission_denied_beyond_the_threshold_fails_the_run(http_images, tmp_path):
    http_images.status.update({f"deny{i}.jpg": 403 for i in range(20)})
    config = fast(max_denied=3, max_denied_share=0.5)
    with Fetcher(config) as fetcher:
        fetcher.begin()
        few = fetcher.fetch([http_images.url("deny0.jpg")] + [http_images.url(k) for k in JPEGS], tmp_path)[1]
        assert few[0].startswith("image permission denied")  # one of seven: a fact about the row
        with pytest.raises(FetchDenied, match="configuration error"):
            fetcher.fetch([http_images.url(f"deny{i}.jpg") for i in range(20)], tmp_path)


def test_malformed_uris_and_unsupported_schemes_are_per_row_errors(tmp_path):
    uris = ["ftp://host/a.jpg", "s3://", "s3://bucket", "s3://bucket/", "http:///a.jpg", "gopher:/x"]
    with Fetcher(fast(image_roots=(str(tmp_path),))) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, tmp_path)
        stats = fetcher.summary()
    assert data == [None] * len(uris)
    assert errors[0].startswith("unsupported image URI scheme 'ftp' in ftp://host/a.jpg; use s3://")
    assert errors[1] == "malformed image URI s3://: no bucket"
    assert errors[2] == errors[3].replace("bucket/", "bucket") == "malformed image URI s3://bucket: no key"
    assert errors[4] == "malformed image URI http:///a.jpg: no host"
    assert errors[5] == "image not found: gopher:/x"  # no "://": a local path, relative to the posts' folder
    assert stats["invalid"] == 5 and stats["requests"] == 1


def test_local_paths_relative_and_absolute(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEGS["img/0.jpg"])
    with Fetcher(fast(image_roots=(str(tmp_path),))) as fetcher:
        data, errors = fetcher.fetch(["a.jpg", str(tmp_path / "a.jpg"), f"file://{tmp_path}/a.jpg", "b.jpg"], tmp_path)
    assert data[:3] == [JPEGS["img/0.jpg"]] * 3 and errors[:3] == [None] * 3
    assert errors[3] == "image not found: b.jpg"


def test_s3_objects_missing_keys_and_one_store_per_bucket(s3_images, tmp_path):
    uris = [f"s3://{s3_images}/{k}" for k in JPEGS] + [
        f"s3://{s3_images}/missing.jpg",
        f"s3://nobucket-{uuid.uuid4().hex[:8]}/x.jpg",
    ]
    with Fetcher(FAST) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, tmp_path)
        stats = fetcher.summary()
    assert data[: len(JPEGS)] == list(JPEGS.values()) and errors[: len(JPEGS)] == [None] * len(JPEGS)
    assert errors[-2:] == [f"image not found: {uris[-2]}", f"image not found: {uris[-1]}"]
    assert stats["stores"] == 2 and stats["retries"] == 0


def test_s3_explicit_options_override_the_environment_and_no_secret_leaks(s3_images, s3_server, monkeypatch, tmp_path):
    # The environment points at a dead port; the explicit endpoint (CTMWA_STORAGE_OPTIONS) at the server.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv(storage.ENV_OPTIONS, f'{{"endpoint": "{s3_server.endpoint}"}}')
    uri = f"s3://{s3_images}/img/2.jpg"
    with Fetcher(FAST) as fetcher:
        assert fetcher.fetch([uri], tmp_path)[0] == [JPEGS["img/2.jpg"]]
    storage.configure({"secret_access_key": "wrong-" + SECRET_KEY})
    with Fetcher(FAST) as fetcher:
        _, errors = fetcher.fetch([uri], tmp_path)
    assert errors == [f"image permission denied (HTTP 403): {uri}"]
    # a store that is unreachable: the error names the URI and the cause, never the secret
    storage.configure({"endpoint": "http://127.0.0.1:9"})
    with Fetcher(FAST) as fetcher, pytest.raises(FetchFailed) as failed:
        fetcher.fetch([uri], tmp_path)
    assert uri in str(failed.value) and SECRET_KEY not in str(failed.value)


def test_s3_through_a_throttling_proxy(s3_images, s3_server, monkeypatch, tmp_path):
    with LatencyProxy(("127.0.0.1", s3_server.port), delay_s=0.005, fail_every=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        uris = [f"s3://{s3_images}/{k}" for k in JPEGS] * 4
        with Fetcher(FAST) as fetcher:
            fetcher.begin()
            data, errors = fetcher.fetch(uris, tmp_path)
            stats = fetcher.summary()
    assert errors == [None] * len(uris) and data == list(JPEGS.values()) * 4
    assert proxy.failed >= 1 and stats["retries"] >= proxy.failed


@pytest.mark.parametrize(
    "message, kind",
    [
        ("Server returned non-2xx status code: 503 Service Unavailable", "transient"),
        ("Server returned non-2xx status code: 429 Too Many Requests", "transient"),
        ("Server returned non-2xx status code: 410 Gone", "not_found"),
        ("Server returned non-2xx status code: 416 Range Not Satisfiable", "refused"),
        ("HTTP error: error sending request", "transient"),
    ],
)
def test_classify(message, kind):
    assert classify(RuntimeError(message)) == kind


def test_http_percent_encoded_paths_and_signed_urls(tmp_path):
    with ImageHTTPServer({"a b.jpg": b"plain", "a b.jpg?sig=1&x=%2F": b"signed"}) as server:
        port = server.port
        with Fetcher(FAST) as fetcher:
            data, errors = fetcher.fetch(
                [
                    server.endpoint + "/a%20b.jpg",
                    server.endpoint + "/a%20b.jpg?sig=1&x=%2F",
                    server.endpoint + "/gone.jpg?X-Amz-Signature=deadbeef",
                ],
                tmp_path,
            )
    assert data == [b"plain", b"signed", None] and errors[:2] == [None, None]
    assert errors[2] == f"image not found: http://127.0.0.1:{port}/gone.jpg?..."  # a signature is never shown


def test_parse_location(tmp_path):
    t = parse_location("https://cdn.example.com/a/b.jpg?sig=1&x=2", tmp_path)
    assert (t.kind, t.netloc, t.whole) == ("http", "cdn.example.com", "https://cdn.example.com/a/b.jpg?sig=1&x=2")
    t = parse_location("https://cdn.example.com/a%20b.jpg", tmp_path)
    assert (t.path, t.whole) == ("a b.jpg", "https://cdn.example.com/a%20b.jpg")  # requested as written
    t = parse_location("abfss://box@acct.dfs.core.windows.net/a/b.jpg", tmp_path)
    assert (t.kind, t.netloc, t.path) == ("az", "box@acct.dfs.core.windows.net", "a/b.jpg")
    assert parse_location("img/a.jpg", tmp_path).path == str(Path(tmp_path) / "img/a.jpg")
