"""Image references are untrusted input (ctmwa_batch.imagepolicy, ctmwa_batch.fetch): the size cap, the address
policy and confined local paths, each a per-row reason, never retried.

Loopback only: live requests go to servers these tests start on 127.0.0.1; the other ranges (link-local, private,
metadata, multicast, IPv6) are checked on the policy function alone, without a packet sent.
"""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from pathlib import Path

import pytest

from ctmwa_batch import storage
from ctmwa_batch.fetch import FetchConfig, Fetcher, classify
from ctmwa_batch.imagepolicy import AddressPolicy, ImageRefused, LocalRoots, parse_host_rule, refused_range
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


def test_loopback_is_refused_by_default_and_allowed_by_the_list(two_servers, tmp_path):
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
            "to-metadata.jpg": "http://169.254.169.254/latest/meta-data/",  # refused before any connection
        }
    )
    only_a = FetchConfig(**FAST, allow_image_hosts=(f"127.0.0.1:{a.port}",))
    uris = [a.url(p) for p in ("to-b.jpg", "to-a.jpg", "to-file.jpg", "loop.jpg", "to-metadata.jpg")]
    data, errors, stats = fetch(only_a, uris, tmp_path)
    assert errors[0] == (
        f"image refused: {uris[0]} redirects to {b.url('b.jpg')}, which resolves to 127.0.0.1 "
        f"(loopback 127.0.0.0/8); allow it with --allow-image-host 127.0.0.1:{b.port} (CTMWA_ALLOW_IMAGE_HOSTS)"
    )
    assert b.requests["b.jpg"] == 0  # the refused hop was never requested
    assert data[1] == JPEG and errors[1] is None
    assert errors[2] == f"image refused: {uris[2]} redirects to file:///etc/passwd: only http(s) is followed"
    assert errors[3] == f"image refused: {uris[3]} redirects more than 5 times" and a.requests["loop.jpg"] == 6
    assert "redirects to http://169.254.169.254/latest/meta-data/, which resolves to 169.254.169.254" in errors[4]
    assert stats["blocked"] == 4 and stats["retries"] == 0
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
    from ctmwa_batch import embed, score_cli
    from ctmwa_batch.airflow.operators import settings_args
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
