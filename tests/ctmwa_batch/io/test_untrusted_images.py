"""Image references are untrusted input (ctmwa_batch.imagepolicy, ctmwa_batch.io.fetch): the size cap, the address
policy and confined local paths, each a per-row reason, never retried.

Loopback only: live requests go to servers these tests start on 127.0.0.1; the other ranges (link-local, private,
metadata, multicast, IPv6) are checked on the policy function alone, without a packet sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from ctmwa_batch.imagepolicy import AddressPolicy, ImageRefused, LocalRoots, parse_host_rule, refused_range
from ctmwa_batch.io import storage
from ctmwa_batch.io.fetch import FetchConfig, Fetcher, classify
from fixtures.httpserver import ImageHTTPServer
from tests import images

JPEG = images.jpeg(seed=5)
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, max_tries=3, retry_budget_s=5.0, connect_timeout_s=1.0)


def fetch(config: FetchConfig, uris: list, base: Path) -> tuple[list, list, dict]:
    with Fetcher(config) as fetcher:
        fetcher.begin()
        data, errors = fetcher.fetch(uris, base)
        return data, errors, fetcher.summary()


@pytest.fixture
def two_servers():
    """Two loopback image servers: `a` is the one a test allows, `b` the one it does not."""
    with ImageHTTPServer({"a.jpg": JPEG}) as a, ImageHTTPServer({"b.jpg": JPEG}) as b:
        yield a, b


# --------------------------------------------------------------------------------------------------- the policy alone


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.0.0.1", "loopback 127.0.0.0/8"),
        ("127.255.1.2", "loopback 127.0.0.0/8"),
        ("::1", "loopback ::1/128"),
        ("10.1.2.3", "private 10.0.0.0/8"),
        ("172.31.255.255", "private 172.16.0.0/12"),
        ("192.168.0.10", "private 192.168.0.0/16"),
        ("fd12:3456::1", "private fc00::/7"),
        ("169.254.169.254", "link-local, cloud metadata 169.254.169.254/32"),
        ("169.254.170.2", "link-local, cloud metadata 169.254.170.2/32"),
        ("fd00:ec2::254", "private, cloud metadata fd00:ec2::254/128"),
        ("100.100.100.200", "shared address space, cloud metadata 100.100.100.200/32"),
        ("169.254.1.1", "link-local 169.254.0.0/16"),
        ("fe80::1", "link-local fe80::/10"),
        ("fe80::1%eth0", "link-local fe80::/10"),
        ("0.0.0.0", "unspecified 0.0.0.0/8"),
        ("::", "unspecified ::/128"),
        ("224.0.0.1", "multicast 224.0.0.0/4"),
        ("ff02::1", "multicast ff00::/8"),
        ("255.255.255.255", "reserved 240.0.0.0/4"),
        ("100.64.0.1", "shared address space 100.64.0.0/10"),
        # IPv6 forms that carry an IPv4 address reach that address: judged by it
        ("::ffff:127.0.0.1", "loopback 127.0.0.0/8"),
        ("::ffff:169.254.169.254", "link-local, cloud metadata 169.254.169.254/32"),
        ("64:ff9b::a9fe:a9fe", "link-local, cloud metadata 169.254.169.254/32"),
        ("2002:7f00:1::", "loopback 127.0.0.0/8"),
        # public addresses pass
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("172.32.0.1", None),
    ],
)
def test_refused_ranges(address, expected):
    assert refused_range(address) == expected


def test_allow_list_entries_and_their_errors():
    policy = AddressPolicy(["images.internal", "*.cdn.corp", "10.1.2.3", "192.168.0.0/16", "[::1]:8080", "db:5432"])
    assert policy.refusal("images.internal", 443, "10.9.9.9") is None  # a name allows what it resolves to
    assert policy.refusal("IMAGES.internal.", 80, "10.9.9.9") is None
    assert policy.refusal("a.b.cdn.corp", 80, "10.9.9.9") is None and policy.refusal("cdn.corp", 80, "10.9.9.9")
    assert policy.refusal("other", 80, "10.1.2.3") is None  # an address, any port
    assert policy.refusal("x", 80, "192.168.44.1") is None  # a network
    assert policy.refusal("x", 8080, "::1") is None and policy.refusal("x", 8081, "::1") == "loopback ::1/128"
    assert policy.refusal("db", 5432, "10.0.0.7") is None and policy.refusal("db", 80, "10.0.0.7")
    assert policy.refusal("metadata", 80, "169.254.169.254") == "link-local, cloud metadata 169.254.169.254/32"
    assert policy.refusal("anything", 80, "93.184.216.34") is None  # public: never needs the list
    e = AddressPolicy().refused("http://h:81/x.jpg", "h", 81, "10.0.0.1")
    assert isinstance(e, ImageRefused) and str(e) == (
        "image refused: http://h:81/x.jpg resolves to 10.0.0.1 (private 10.0.0.0/8); "
        "allow it with --allow-image-host h:81 (CTMWA_ALLOW_IMAGE_HOSTS)"
    )
    assert parse_host_rule("[fd00::1]:443").port == 443
    for bad in ("", "exa mple.com", "host:port", "host:70000", "http://x", "a/b/c"):
        with pytest.raises(ValueError, match="allowed image host"):
            parse_host_rule(bad)
    with pytest.raises(ValueError, match="'exa mple'"):
        FetchConfig(allow_image_hosts=("exa mple",))


def test_a_name_that_does_not_resolve_is_a_fact_about_the_row():
    assert classify(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == "no_host"
    assert classify(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")) == "transient"


# --------------------------------------------------------------------------------------------------- http(s) live


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_loopback_is_refused_by_default_and_allowed_by_the_list(two_servers, tmp_path, monkeypatch, loop):
    monkeypatch.setenv("CTMWA_FETCH_LOOP", loop)  # the fetcher's loop: uvloop where installed, or asyncio's
    a, _ = two_servers
    port = a.port
    uris = [
        a.url("a.jpg"),
        f"http://localhost:{port}/a.jpg",  # a name: the resolver's addresses are checked
        f"http://0.0.0.0:{port}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
        f"http://2130706433:{port}/a.jpg",  # 127.0.0.1 as one number
        f"http://127.1:{port}/a.jpg",
    ]
    data, errors, stats = fetch(FetchConfig(**FAST), uris, tmp_path)
    assert data == [None] * len(uris) and a.requests["a.jpg"] == 0  # not one request reached the server
    assert errors[0] == (
        f"image refused: {uris[0]} resolves to 127.0.0.1 (loopback 127.0.0.0/8); "
        f"allow it with --allow-image-host 127.0.0.1:{port} (CTMWA_ALLOW_IMAGE_HOSTS)"
    )
    assert errors[1].startswith(f"image refused: {uris[1]} resolves to ") and "(loopback " in errors[1]
    assert "(unspecified 0.0.0.0/8)" in errors[2] and "(loopback 127.0.0.0/8)" in errors[3]
    assert all(e.startswith(("image refused: ", "malformed image URI")) for e in errors[4:]), errors
    assert stats["retries"] == 0 and stats["blocked"] >= 4

    data, errors, _ = fetch(FetchConfig(**FAST, allow_image_hosts=(f"127.0.0.1:{port}",)), uris[:1], tmp_path)
    assert data == [JPEG] and errors == [None]
    data, errors, _ = fetch(FetchConfig(**FAST, allow_image_hosts=("localhost",)), uris[:2], tmp_path)
    assert data[1] == JPEG and errors[0].startswith("image refused: ")  # the name is allowed, not the address


def test_a_redirect_is_checked_on_every_hop(two_servers, tmp_path):
    a, b = two_servers
    a.redirects.update(
        {
            "to-b.jpg": b.url("b.jpg"),
            "to-a.jpg": "/a.jpg",  # relative, same server
            "to-file.jpg": "file:///etc/passwd",
            "loop.jpg": "/loop.jpg",
            # an IPv4-mapped literal of the refused server: judged as 127.0.0.1, refused before any connection (the
            # metadata ranges are checked on the policy function alone, never through a socket)
            "to-mapped.jpg": f"http://[::ffff:127.0.0.1]:{b.port}/b.jpg",
            "bad-location.jpg": "http://[::1",
        }
    )
    only_a = FetchConfig(**FAST, allow_image_hosts=(f"127.0.0.1:{a.port}",))
    paths = ("to-b.jpg", "to-a.jpg", "to-file.jpg", "loop.jpg", "to-mapped.jpg", "bad-location.jpg")
    uris = [a.url(p) for p in paths]
    data, errors, stats = fetch(only_a, uris, tmp_path)
    assert errors[0] == (
        f"image refused: {uris[0]} redirects to {b.url('b.jpg')}, which resolves to 127.0.0.1 "
        f"(loopback 127.0.0.0/8); allow it with --allow-image-host 127.0.0.1:{b.port} (CTMWA_ALLOW_IMAGE_HOSTS)"
    )
    assert data[1] == JPEG and errors[1] is None
    assert errors[2] == f"image refused: {uris[2]} redirects to file:///etc/passwd: only http(s) is followed"
    assert errors[3] == f"image refused: {uris[3]} redirects more than 5 times" and a.requests["loop.jpg"] == 6
    assert errors[4].startswith(f"image refused: {uris[4]} redirects to http://[::ffff:"), errors[4]
    assert f":{b.port}/b.jpg, which resolves to ::ffff:" in errors[4] and "(loopback 127.0.0.0/8)" in errors[4]
    assert b.requests["b.jpg"] == 0  # neither refused hop was requested
    assert errors[5] == f"image refused: {uris[5]} redirects to an invalid Location"
    assert stats["blocked"] == 5 and stats["retries"] == 0
    # both servers allowed: the same redirect is followed
    data, errors, _ = fetch(FetchConfig(**FAST, allow_image_hosts=("127.0.0.0/8",)), uris[:1], tmp_path)
    assert data == [JPEG] and errors == [None]


def test_the_size_cap_refuses_a_declared_length_unread_and_cuts_off_a_growing_body(tmp_path):
    with ImageHTTPServer({"ok.jpg": JPEG}) as http:
        http.generated.update({"declared.bin": (300_000_000, True), "chunked.bin": (300_000_000, False)})
        http.generated["at-cap.bin"] = (4096, False)
        config = FetchConfig(**FAST, allow_image_hosts=("127.0.0.1",), max_image_bytes=4096)
        uris = [http.url(p) for p in ("declared.bin", "chunked.bin", "at-cap.bin", "ok.jpg")]
        data, errors, stats = fetch(config, uris, tmp_path)
        assert errors[:2] == [
            f"image too large: {uris[0]} (> 4096 bytes)",
            f"image too large: {uris[1]} (> 4096 bytes)",
        ]
        assert data[2] == b"\0" * 4096 and errors[2] is None  # at the cap exactly: read
        assert errors[3] == f"image too large: {uris[3]} (> 4096 bytes)" if len(JPEG) > 4096 else data[3] == JPEG
        assert stats["too_large"] >= 2 and stats["retries"] == 0 and stats["bytes"] < 1_000_000
        # the server stopped well short of 300 MB: the client closed the connection
        assert http.sent["declared.bin"] < 50_000_000 and http.sent["chunked.bin"] < 50_000_000


def test_the_size_cap_holds_for_s3_objects(s3_server, monkeypatch, tmp_path):
    bucket = f"cap-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    fs = s3_server.filesystem()
    for key, data in (("small.jpg", JPEG), ("big.bin", b"\0" * 200_000)):
        with fs.open_output_stream(f"{bucket}/{key}") as f:
            f.write(data)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    storage.configure(None)
    uris = [f"s3://{bucket}/small.jpg", f"s3://{bucket}/big.bin"]
    data, errors, stats = fetch(FetchConfig(**FAST, max_image_bytes=100_000), uris, tmp_path)
    assert data[0] == JPEG and errors == [None, f"image too large: {uris[1]} (> 100000 bytes)"]
    assert stats["bytes"] == len(JPEG) and stats["too_large"] == 1 and stats["retries"] == 0


# --------------------------------------------------------------------------------------------------- local paths


def test_local_paths_are_confined_to_the_roots_and_to_regular_files(tmp_path):
    root = tmp_path / "posts"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(JPEG)
    (root / "big.bin").write_bytes(b"\0" * 5000)
    (root / "escape.jpg").symlink_to("/etc/passwd")
    (root / "inside.jpg").symlink_to(root / "img" / "a.jpg")
    os.mkfifo(root / "pipe.jpg")
    config = FetchConfig(**FAST, image_roots=(str(root),), max_image_bytes=4096)
    rows = [
        "img/a.jpg",
        str(root / "img" / "a.jpg"),
        f"file://{root}/img/a.jpg",
        "inside.jpg",  # a symlink that stays inside
        "escape.jpg",
        "../../../../etc/hostname",
        "/etc/passwd",
        "file:///etc/passwd",
        "/dev/zero",
        "pipe.jpg",  # would block a plain open() forever
        "img",
        "big.bin",
        "img/missing.jpg",
    ]
    data, errors, stats = fetch(config, rows, root)
    assert data[:4] == [JPEG] * 4 and errors[:4] == [None] * 4
    rule = f"outside the allowed image roots [{root}]; allow a folder with --image-root DIR (CTMWA_IMAGE_ROOTS)"
    assert errors[4] == f"image refused: escape.jpg resolves to /etc/passwd, which is {rule}"
    up = os.path.realpath(root / "../../../../etc/hostname")  # /etc/hostname, or a folder above the root
    assert errors[5] == f"image refused: ../../../../etc/hostname resolves to {up}, which is {rule}"
    assert errors[6] == f"image refused: /etc/passwd is {rule}"
    assert errors[7] == f"image refused: file:///etc/passwd resolves to /etc/passwd, which is {rule}"
    assert errors[8] == f"image refused: /dev/zero is {rule}"
    assert errors[9] == "image refused: pipe.jpg is a FIFO; only regular files are read as images"
    assert errors[10] == "image refused: img is a directory; only regular files are read as images"
    assert errors[11] == "image too large: big.bin (> 4096 bytes)"
    assert errors[12] == "image not found: img/missing.jpg"
    assert stats["blocked"] == 7 and stats["too_large"] == 1
    # a device under an allowed root is still not a regular file; no root at all reads nothing
    data, errors, _ = fetch(FetchConfig(**FAST, image_roots=("/dev",)), ["/dev/zero"], root)
    assert errors == ["image refused: /dev/zero is a character device; only regular files are read as images"]
    data, errors, _ = fetch(FetchConfig(**FAST), ["img/a.jpg"], root)
    assert errors == [
        "image refused: img/a.jpg resolves to "
        f"{root}/img/a.jpg, which is no folder is allowed (the input is not a local folder); "
        "allow a folder with --image-root DIR (CTMWA_IMAGE_ROOTS)"
    ]


def test_local_roots_resolve_symlinked_roots(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes(JPEG)
    (tmp_path / "link").symlink_to(real)
    roots = LocalRoots([tmp_path / "link"])
    assert roots.roots == (str(real),)
    assert roots.read("a.jpg", str(tmp_path / "link" / "a.jpg"), 1 << 20) == JPEG
    assert roots.root_of(str(tmp_path / "realx" / "a.jpg")) is None  # a sibling with the same prefix is outside


# --------------------------------------------------------------------------------------------------- interface


def test_the_flags_settings_and_plugin_arguments_are_spelled_as_the_issue_says(monkeypatch):
    from ctmwa_batch.airflow.operators import settings_args
    from ctmwa_batch.cli import score as score_cli
    from ctmwa_batch.scoring import embed
    from ctmwa_batch.settings import Settings, SettingsError

    argv = ["--max-image-bytes", "1000", "--allow-image-host", "10.0.0.0/8", "--allow-image-host", "img.corp:8080"]
    argv += ["--image-root", "/mnt/images", "--image-root", "/srv/pics"]
    parser = argparse.ArgumentParser()
    score_cli.add_arguments(parser)
    score = score_cli.config_from(parser.parse_args(["--bundle", "b", "--input", "i", "--output", "o", *argv])).score
    assert (score.max_image_bytes, score.allow_image_hosts, score.image_roots) == (
        1000,
        ("10.0.0.0/8", "img.corp:8080"),
        ("/mnt/images", "/srv/pics"),
    )
    parser = argparse.ArgumentParser()
    embed.add_arguments(parser)
    args = parser.parse_args(["--bundle", "b", "--input", "i", "--output", "o", *argv])
    assert (args.max_image_bytes, args.allow_image_hosts, args.image_roots) == (
        1000,
        ["10.0.0.0/8", "img.corp:8080"],
        ["/mnt/images", "/srv/pics"],
    )
    env = {
        "CTMWA_MAX_IMAGE_BYTES": "1000",
        "CTMWA_ALLOW_IMAGE_HOSTS": "10.0.0.0/8, img.corp:8080",
        "CTMWA_IMAGE_ROOTS": "/mnt/images,/srv/pics",
    }
    from_env = Settings.load(env).score_config()
    assert (from_env.max_image_bytes, from_env.allow_image_hosts, from_env.image_roots) == (
        score.max_image_bytes,
        score.allow_image_hosts,
        score.image_roots,
    )
    with pytest.raises(SettingsError, match="CTMWA_ALLOW_IMAGE_HOSTS"):
        Settings.load({"CTMWA_ALLOW_IMAGE_HOSTS": "not a host"})
    given = settings_args(
        max_image_bytes=1000,
        allow_image_hosts=["10.0.0.0/8", "img.corp:8080"],
        image_roots=["/mnt/images", "/srv/pics"],
    )
    assert Settings.load({}, given).score_config() == Settings.load(env).score_config()


def test_the_plugin_takes_the_three_arguments():
    """score_partition and score_range carry them to the settings their tasks load (lists as comma-separated)."""
    import pendulum
    from airflow.sdk import DAG

    from ctmwa_batch.airflow import score_partition, score_range
    from ctmwa_batch.settings import Settings

    policy = {"max_image_bytes": 1000, "allow_image_hosts": ["10.0.0.0/8", "img.corp"], "image_roots": ["/mnt/img"]}
    with DAG("untrusted", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        score_partition("day", input="/lake/posts/dt=2026-01-01", output="/lake/scores", bundle="/b", **policy)
        score_range("days", input_root="/lake/posts", output="/lake/scores", bundle="/b", **policy)
    settings = Settings.load({}, dag.get_task("day.plan").settings).score_config()
    assert (settings.max_image_bytes, settings.allow_image_hosts, settings.image_roots) == (
        1000,
        ("10.0.0.0/8", "img.corp"),
        ("/mnt/img",),
    )
    assert {t.task_id for t in dag.tasks} >= {"day.plan", "days.plan"}


# --------------------------------------------------------------------------------------------------- fuzzing

FUZZ = hypothesis.settings(
    max_examples=150,
    deadline=timedelta(seconds=5),  # bounded time per case (a slow decode is a finding)
    derandomize=True,  # the same cases every run: a suite test, not a search that fails at random
    database=None,  # nothing written into the tree (xdist-safe)
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)


def _seeds() -> list[bytes]:
    from PIL import Image

    photo = Image.fromarray(images.photo_array(48, 40, 7))
    frames = [photo, photo.rotate(90)]
    gif = images.encode(frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")])
    return [
        images.jpeg(48, 40, seed=1),
        images.png(40, 32, seed=2),
        gif,
        images.encode(photo, "WEBP", quality=80),
        images.declared_size_png(9000, 9000),
        images.cmyk_jpeg(),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real JPEG, PNG, GIF or WebP with bytes flipped, cut, repeated or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 256))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif data:
            data[at:at] = data[at : at + draw(st.integers(1, 512))] * draw(st.integers(1, 8))
    return bytes(data)


@FUZZ
@hypothesis.given(batch=st.lists(mutated_images() | st.binary(max_size=256), min_size=1, max_size=4))
def test_fuzz_the_decoder_gives_each_image_pixels_or_a_reason(batch):
    from ctmwa_batch.model.preprocess import ImageSpec, decode_images

    pixels, ok, reasons = decode_images(batch, ImageSpec(size=32, resize_shortest_edge=32))
    assert pixels.shape == (len(batch), 32, 32, 3)
    for i in range(len(batch)):
        assert ok[i] == (reasons[i] is None), (i, reasons[i])
        assert reasons[i] is None or (isinstance(reasons[i], str) and 0 < len(reasons[i]) <= 200)


URI_PARTS = st.sampled_from(
    ["http://", "https://", "s3://", "gs://", "az://", "abfss://", "file://", "ftp://", "://", "", "/", "..", "?", "#"]
    + ["%", "%2e%2e/", "@", ":", "[", "]", "\\", "\x00", "\n", " ", "é", "localhost", "127.0.0.1", "[::1]", "a.jpg"]
)
URIS = st.lists(URI_PARTS | st.text(max_size=12), min_size=1, max_size=8).map("".join)


@FUZZ
@hypothesis.given(location=URIS, address=st.ip_addresses())
def test_fuzz_the_uri_parser_and_the_policy_never_raise(location, address, tmp_path):
    from ctmwa_batch.io.fetch import _request_url, parse_location

    target = parse_location(location, tmp_path)
    assert isinstance(target, str) or target.kind in {"s3", "gs", "az", "http", "file"}
    if not isinstance(target, str) and target.kind == "http":
        try:
            url = _request_url(location)
        except (ValueError, TypeError):
            pass  # the fetcher makes it "malformed image URI ..."
        else:
            str(url)
    policy = AddressPolicy(["10.0.0.0/8", "images.internal"])
    where = policy.refusal("images.internal", 80, str(address))
    assert where is None or where.split(" ")[-1].count("/") == 1
    with contextlib.suppress(ValueError):
        parse_host_rule(location)


@pytest.fixture(scope="module")
def fuzz_server():
    with ImageHTTPServer({"a.jpg": JPEG}) as http:
        yield http


@FUZZ
@hypothesis.given(rows=st.lists(st.none() | URIS | mutated_images().map(lambda b: b.hex()[:40]), max_size=6))
def test_fuzz_fetch_rows_end_as_bytes_or_a_reason(rows, fuzz_server, tmp_path_factory):
    """Local paths and URIs with our loopback server as the only host (no request leaves 127.0.0.1): each row ends
    as bytes or a reason, never an exception out of the fetcher."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a.jpg").write_bytes(JPEG)
    safe = []
    for row in rows:  # an http(s) row keeps its path and query, on our server; s3/gs/az rows become local paths
        if row and "://" in row and row.split("://", 1)[0].lower() in {"http", "https", "s3", "gs", "az", "abfss"}:
            rest = row.split("://", 1)[1]
            row = f"{fuzz_server.endpoint}/{rest.partition('/')[2]}" if row.lower().startswith("http") else rest
        safe.append(row)
    config = FetchConfig(**FAST, allow_image_hosts=("127.0.0.1",), image_roots=(str(root),), max_image_bytes=1 << 20)
    data, errors, _ = fetch(config, safe, root)
    for row, got, why in zip(safe, data, errors):
        if not row:
            assert got is None and why is None
        else:
            assert (got is None) != (why is None), (row, why)


# --------------------------------------------------------------------------------------------------- done when

RUNNER = """
import resource, sys
from ctmwa_batch.cli.main import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
print("CHILDREN_MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def _score_in_a_child(args: list[str]) -> int:
    """`ctmwa-batch score ARGS` in a process of its own; its peak RSS plus its children's (decoding processes, if
    any), in bytes."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, "score", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = dict(line.split() for line in done.stderr.splitlines() if line.startswith(("MAXRSS_KB", "CHILDREN_")))
    return (int(figures["MAXRSS_KB"]) + int(figures["CHILDREN_MAXRSS_KB"])) * 1024


@pytest.mark.slow
def test_hostile_rows_end_image_missing_with_reasons_and_the_partition_commits(full_bundle, tmp_path):
    """The issue's "done when": four 300 MB objects (two declared, two chunked), /dev/zero, /etc/passwd,
    file:///etc/passwd, ../../../../etc/hostname, a FIFO, a loopback URL not allowed and a redirect from the allowed
    server to it, among good rows (local and http): each hostile row image_missing with its reason, the good ones ok,
    the partition committed, the run's peak RSS under 1 GB with 64 fetches in flight. Then, with every loopback
    address allowed, the URLs refused for their address score ok."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.ctmwa_batch.cli.test_score import FIXED_TIME, TEXTS
    from tests.ctmwa_batch.scoring.test_score_job import output_dir

    part = tmp_path / "lake" / "posts" / "dt=2026-11-26"
    (part / "img").mkdir(parents=True)
    os.mkfifo(part / "pipe.jpg")
    with ImageHTTPServer() as a, ImageHTTPServer({"b.jpg": images.jpeg(40, 32, seed=9)}) as b:
        good = []
        for i in range(48):
            data = images.jpeg(40, 32, seed=i % 17)
            if i % 2:
                a.files[f"img/{i}.jpg"] = data
                good.append(a.url(f"img/{i}.jpg"))
            else:
                (part / "img" / f"{i}.jpg").write_bytes(data)
                good.append(f"img/{i}.jpg")
        for k in range(4):
            a.generated[f"big{k}.bin"] = (300_000_000, k % 2 == 0)
        a.redirects["to-b.jpg"] = b.url("b.jpg")
        hostile = {
            **{a.url(f"big{k}.bin"): "image too large: {} (> 33554432 bytes)" for k in range(4)},
            "/dev/zero": "image refused: /dev/zero is outside the allowed image roots",
            "/etc/passwd": "image refused: /etc/passwd is outside the allowed image roots",
            "file:///etc/passwd": "image refused: file:///etc/passwd resolves to /etc/passwd, which is outside",
            "../../../../etc/hostname": "image refused: ../../../../etc/hostname resolves to ",
            "pipe.jpg": "image refused: pipe.jpg is a FIFO; only regular files are read as images",
            b.url("b.jpg"): "image refused: {} resolves to 127.0.0.1 (loopback 127.0.0.0/8); allow it with",
            a.url("to-b.jpg"): "image refused: {} redirects to " + b.url("b.jpg") + ", which resolves to 127.0.0.1",
        }
        column = good + list(hostile)
        ids = [f"p{i:03d}" for i in range(len(column))]
        texts = [TEXTS[i % len(TEXTS)] for i in range(len(column))]
        pq.write_table(pa.table({"post_id": ids, "text": texts, "image": column}), part / "posts.parquet")
        common = ["--bundle", str(full_bundle), "--input", str(part), "--device", "cpu", "--threads", "1"]
        common += ["--workers", "0", "--scored-at", FIXED_TIME, "--batch-size", "16", "--fetch-concurrency", "64"]

        rss = _score_in_a_child(
            [*common, "--output", str(tmp_path / "out"), "--allow-image-host", f"127.0.0.1:{a.port}"]
        )
        out = output_dir(tmp_path / "out", full_bundle)
        rows = pq.read_table(out, columns=["post_id", "status", "error"]).sort_by("post_id").to_pylist()
        assert [r["status"] for r in rows[: len(good)]] == ["ok"] * len(good)
        for row, (uri, reason) in zip(rows[len(good) :], hostile.items()):
            assert row["status"] == "image_missing" and row["error"].startswith(reason.format(uri)), (uri, row)
        assert json.loads((out / "_SUCCESS.json").read_text())["rows"]["by_status"] == {
            "ok": len(good),
            "image_missing": len(hostile),
        }
        print(f"peak RSS of the scoring process: {rss / 2**20:.0f} MiB")  # shown with -s (docs/untrusted-images.md)
        assert rss < 1 << 30, f"peak RSS {rss / 2**20:.0f} MiB"
        assert max(a.sent[f"big{k}.bin"] for k in range(4)) < 50_000_000  # the 300 MB bodies were not read
        assert b.requests["b.jpg"] == 0  # the refused server never saw a request

        _score_in_a_child([*common, "--output", str(tmp_path / "allowed"), "--allow-image-host", "127.0.0.0/8"])
        allowed = pq.read_table(output_dir(tmp_path / "allowed", full_bundle), columns=["post_id", "status", "error"])
        by_id = {r["post_id"]: r for r in allowed.to_pylist()}
        for uri in (b.url("b.jpg"), a.url("to-b.jpg")):
            assert by_id[ids[column.index(uri)]]["status"] == "ok", by_id[ids[column.index(uri)]]
