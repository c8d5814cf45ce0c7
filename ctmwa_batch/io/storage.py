"""Where data lives: one storage configuration for every location (posts, scores, reports, models, image URIs).

Precedence, lowest first (DESIGN.md section 9):
1. the standard AWS environment and profiles (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_PROFILE`), which every client reads itself
   (pyarrow's S3 client but the endpoint variables, which pyarrow_s3_options passes on);
2. `CTMWA_STORAGE_OPTIONS`: a JSON object or `key=value,key=value`;
3. `--storage-option KEY=VALUE` on a command line, or an Airflow Connection (`conn_id`), via `configure`.

Option keys (one vocabulary for pyarrow and the image fetcher): `endpoint`, `region`, `access_key_id`,
`secret_access_key`, `session_token`, `profile`. Secrets never reach a log line, an error, a marker or an XCom:
format a location or an error with `redact`.

Locations never carry settings: a URI with a query string is refused (`check_location`), and `join` builds paths
under a location. s3:// locations share one cached S3FileSystem per configuration, each bucket checked once;
`translate_errors` turns a store's OSError (unreachable, credentials refused, missing bucket, throttling past the
retries) into one StorageError line naming the store, the bucket and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ctmwa_batch.errors import CtmwaError

logger = logging.getLogger(__name__)

ENV_OPTIONS = "CTMWA_STORAGE_OPTIONS"
KEYS = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token", "profile")
SECRET_KEYS = ("secret_access_key", "session_token")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_configured: dict[str, str] = {}


class StorageError(CtmwaError):
    """A store cannot be reached or used: names the store, the bucket and the fix, never a secret."""


def parse_options(items: Iterable[str] | str | None) -> dict[str, str]:
    """`["k=v", ...]`, `"k=v,k=v"` or a JSON object -> {key: value}; unknown keys are an error naming the known ones."""
    if not items:
        return {}
    if isinstance(items, str):
        text = items.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                raise CtmwaError(
                    f"storage options are not valid JSON ({e.msg}); use a JSON object or key=value,key=value"
                ) from None
            if not isinstance(raw, dict):
                raise CtmwaError('storage options JSON must be an object, e.g. {"endpoint": "http://host:9000"}')
            pairs = {str(k): str(v) for k, v in raw.items()}
            items = [f"{k}={v}" for k, v in pairs.items()]
        else:
            items = [part for part in text.split(",") if part.strip()]
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CtmwaError(f"storage option {redact(item)!r} is not KEY=VALUE; keys are {', '.join(KEYS)}")
        if key not in KEYS:
            raise CtmwaError(f"storage option {key!r} unknown; keys are {', '.join(KEYS)}")
        options[key] = value.strip()
    return options


def configure(options: Mapping[str, str] | None) -> None:
    """Set the explicit options of this process (a CLI's `--storage-option`s, a task's Connection); None clears."""
    global _configured
    _configured = dict(parse_options([f"{k}={v}" for k, v in (options or {}).items()]))


def options() -> dict[str, str]:
    """The explicit storage options in force: CTMWA_STORAGE_OPTIONS overlaid by `configure`'s."""
    return {**parse_options(os.environ.get(ENV_OPTIONS)), **_configured}


def is_uri(location: str) -> bool:
    """True for `scheme://...` (s3://, gs://, http://), False for a local path."""
    return "://" in str(location)


def is_object_store(location: str) -> bool:
    """True for a location in an object store (s3://, gs://, ...), where a rename is a copy and a delete."""
    return is_uri(location) and not str(location).startswith("file://")


def check_location(location: str) -> str:
    """`location` as a string; a URI with a query string is refused (never parsed, never appended to)."""
    location = str(location)
    if is_uri(location) and "?" in location:
        bare = location.split("?", 1)[0]
        raise StorageError(
            f"location {bare + '?...'!r} carries a query string; store settings are not read from locations (they would "
            f"travel into plans, markers and logs): drop '?...' and set the endpoint with AWS_ENDPOINT_URL_S3, "
            f"{ENV_OPTIONS} or --storage-option endpoint=http://host:port"
        )
    return location


def local_path(value: str) -> Path:
    """argparse type of an argument that takes a local folder or file only: a URI is refused, never turned into a
    local path (Path("s3://lake/x") would be the folder "s3:/lake/x")."""
    if is_uri(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is a URI; this takes a local path (copy it here first; bundles go to a store with "
            "`ctmwa-batch models --models-root s3://... publish BUNDLE`)"
        )
    return Path(value)


def join(location: str, *parts: str) -> str:
    """`location/part/part`, for a local path or a URI (never appended to a query string: those are refused)."""
    out = check_location(location).rstrip("/") or "/"
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}" if out != "/" else f"/{part}"
    return out


def bucket_of(location: str) -> str | None:
    """The bucket of an s3:// (or gs://) URI, None for a local path."""
    if not is_object_store(location):
        return None
    return str(location).partition("://")[2].split("/", 1)[0].split("?", 1)[0] or None


def s3_endpoint(opts: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint in force: the explicit option, then AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL; None = AWS's.
    Every S3 client here (pyarrow's, which reads no endpoint variable itself, and the image fetcher's) takes it."""
    opts = options() if opts is None else opts
    return opts.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint() -> str:
    """The S3 endpoint in force, for messages."""
    return s3_endpoint() or "AWS S3 (default endpoint)"


def redact(text: object) -> str:
    """`text` with every secret in force (explicit options and the AWS environment) replaced by `***`."""
    out = str(text)
    secrets = [v for k, v in options().items() if k in SECRET_KEYS] + [os.environ.get(name, "") for name in _SECRET_ENV]
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        out = out.replace(secret, "***")
    return out


def pyarrow_s3_options(opts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of pyarrow.fs.S3FileSystem from the storage options (the AWS environment fills the rest)."""
    opts = options() if opts is None else opts
    kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint(opts)
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        kwargs["endpoint_override"] = rest if sep else endpoint
        kwargs["scheme"] = scheme if sep else "https"
    for key, arg in (
        ("region", "region"),
        ("access_key_id", "access_key"),
        ("secret_access_key", "secret_key"),
        ("session_token", "session_token"),
    ):
        if opts.get(key):
            kwargs[arg] = opts[key]
    if opts.get("profile") and "access_key" not in kwargs and "secret_key" not in kwargs:
        kwargs.update({k: v for k, v in _profile(opts["profile"]).items() if k not in kwargs})
    # pyarrow takes explicit credentials as a pair: one given explicitly takes its partner from the environment.
    if ("access_key" in kwargs) != ("secret_key" in kwargs):
        kwargs.setdefault("access_key", os.environ.get("AWS_ACCESS_KEY_ID", ""))
        kwargs.setdefault("secret_key", os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        if not (kwargs["access_key"] and kwargs["secret_key"]):
            raise StorageError(
                "storage credentials come in a pair: set both access_key_id and secret_access_key "
                "(options or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
    return kwargs


def _profile(name: str) -> dict[str, str]:
    """Keys (and region) of a named AWS profile, from the shared credentials and config files: pyarrow's S3 client
    takes no profile name (it reads AWS_PROFILE only), so a `profile` option is resolved here."""
    import configparser

    home = os.path.expanduser("~")
    credentials_file = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    config_file = os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
    credentials, config = configparser.ConfigParser(), configparser.ConfigParser()
    credentials.read(credentials_file)
    config.read(config_file)
    section = credentials[name] if credentials.has_section(name) else {}
    settings = (
        config[f"profile {name}"]
        if config.has_section(f"profile {name}")
        else (config[name] if config.has_section(name) else {})
    )
    merged = {**dict(settings), **dict(section)}
    if not merged.get("aws_access_key_id") or not merged.get("aws_secret_access_key"):
        raise StorageError(
            f"AWS profile {name!r} has no aws_access_key_id / aws_secret_access_key in {credentials_file} or {config_file}; "
            "fix the profile, or set the keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --storage-option)"
        )
    out = {"access_key": merged["aws_access_key_id"], "secret_key": merged["aws_secret_access_key"]}
    if merged.get("aws_session_token"):
        out["session_token"] = merged["aws_session_token"]
    if merged.get("region"):
        out["region"] = merged["region"]
    return out


# A store that is down or throttling is retried with the AWS SDK's standard backoff (exponential, jittered) this many
# attempts per request, then the run fails (DESIGN.md section 8): the orchestrator retries the shard later.
S3_MAX_ATTEMPTS = 5
ENV_MAX_ATTEMPTS = "CTMWA_S3_MAX_ATTEMPTS"  # overrides S3_MAX_ATTEMPTS (tests of a throttling store set 2)
S3_CONNECT_TIMEOUT_S = 10.0

# One filesystem per storage configuration, and each bucket checked once per process (a missing bucket, a store that
# cannot be reached or refuses the credentials fail before any work, with one clean error).
_filesystems: dict[tuple, pafs.FileSystem] = {}
_checked_buckets: set[tuple] = set()
_cache_lock = threading.Lock()


def max_attempts() -> int:
    """Attempts per S3 request (CTMWA_S3_MAX_ATTEMPTS, else S3_MAX_ATTEMPTS)."""
    raw = os.environ.get(ENV_MAX_ATTEMPTS, "")
    try:
        return max(1, int(raw)) if raw else S3_MAX_ATTEMPTS
    except ValueError:
        raise CtmwaError(
            f"{ENV_MAX_ATTEMPTS}={raw!r} is not a whole number of attempts; unset it or set e.g. 5"
        ) from None


def _s3_key(kwargs: Mapping[str, Any]) -> tuple:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_") or k == ENV_MAX_ATTEMPTS))
    return (tuple(sorted((k, str(v)) for k, v in kwargs.items())), env)


def s3_filesystem(bucket: str | None = None) -> pafs.S3FileSystem:
    """The S3FileSystem of the storage configuration in force (cached); with `bucket`, checked to exist once."""
    kwargs = pyarrow_s3_options()
    key = _s3_key(kwargs)
    with _cache_lock:
        fs = _filesystems.get(key)
        if fs is None:
            fs = pafs.S3FileSystem(
                **kwargs,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
                connect_timeout=S3_CONNECT_TIMEOUT_S,
            )
            _filesystems[key] = fs
    if bucket and (key, bucket) not in _checked_buckets:
        with translate_errors(f"s3://{bucket}"):
            info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(
                f"bucket {bucket!r} does not exist at the store {redact(endpoint())}; create it (aws s3 mb s3://{bucket}) "
                "or fix the location's bucket name"
            )
        _checked_buckets.add((key, bucket))
    return fs


def open_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI (s3://bucket/key, gs://...).

    s3:// locations share one cached S3FileSystem per storage configuration; their bucket is checked once. A URI
    with a query string is refused (check_location)."""
    location = check_location(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    scheme, _, rest = location.partition("://")
    if scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(rest)
    if scheme == "s3":
        path = rest.rstrip("/")
        return s3_filesystem(path.split("/", 1)[0] or None), path
    with translate_errors(location):
        return pafs.FileSystem.from_uri(location)


def write_object(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small file so that a reader sees the old content or the new, never a torn one: on a local disk a
    temporary file renamed over the old; on an object store one PUT (already atomic; a rename there is a copy)."""
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def move(fs: pafs.FileSystem, src: str, dest: str) -> None:
    """fs.move, with a missing source always a FileNotFoundError (S3 answers a copy of a missing key NoSuchKey).

    On an object store a move is a copy and a delete: `dest` appears whole (one PUT) but `src` may outlive a kill."""
    try:
        fs.move(src, dest)
    except FileNotFoundError:
        raise
    except OSError as e:
        if "NO_SUCH_KEY" in str(e) or "NoSuchKey" in str(e):
            raise FileNotFoundError(f"{src}: no such object") from e
        raise


# --------------------------------------------------------------------------------------------------- errors

_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?(?: during (\w+) operation)?")
_IN_BUCKET = re.compile(r"(?:in|for) bucket '([^']*)'")  # pyarrow: 'in bucket' for keys, 'for bucket' for HeadBucket
_UNREACHABLE = {"NETWORK_CONNECTION", "REQUEST_TIMEOUT", "INTERNAL_FAILURE"}
_DENIED = {
    "ACCESS_DENIED",
    "SIGNATURE_DOES_NOT_MATCH",
    "INVALID_ACCESS_KEY_ID",
    "INVALID_CLIENT_TOKEN_ID",
    "EXPIRED_TOKEN",
    "UNRECOGNIZED_CLIENT",
    "MISSING_AUTHENTICATION_TOKEN",
    "INVALID_SIGNATURE",
}
_THROTTLED = {"SLOW_DOWN", "THROTTLING", "SERVICE_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR"}
_RETRY_HINT = "then rerun: nothing was committed, and a rerun resumes from the finished shards"


def translate(error: BaseException, location: str | None = None) -> StorageError | None:
    """One clean StorageError for a pyarrow/AWS SDK error (names the store, the bucket and the fix; no secret), or
    None when `error` is not a store's error."""
    text = str(error)
    found = _AWS_ERROR.search(text)
    if found is None:
        return None
    code, http, operation = found.group(1), found.group(2), found.group(3) or "request"
    if code == "UNKNOWN" and http:  # e.g. a HEAD answered 503 or 403: no body, no error code
        code = {"403": "ACCESS_DENIED", "503": "SLOW_DOWN"}.get(http, f"HTTP {http}")
    in_bucket = _IN_BUCKET.search(text)
    bucket = in_bucket.group(1) if in_bucket else bucket_of(location or "")
    store = redact(endpoint())
    where = f"the store {store}" + (f", bucket {bucket!r}" if bucket else "")
    if code in _UNREACHABLE or "curlCode" in text:
        message = (
            f"cannot reach {where} ({code} during {operation}); check the endpoint (AWS_ENDPOINT_URL_S3, {ENV_OPTIONS} "
            f"or --storage-option endpoint=...) and that the store is up, {_RETRY_HINT}"
        )
    elif code in _DENIED:
        message = (
            f"{where} refused the credentials ({code} during {operation}); check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_PROFILE (or --storage-option access_key_id=... secret_access_key=...) and the "
            "bucket's policy"
        )
    elif code in {"NO_SUCH_BUCKET"} or "NoSuchBucket" in text:
        message = f"bucket {bucket!r} does not exist at the store {store}; create it or fix the location's bucket name"
    elif code in _THROTTLED or "SlowDown" in text or (http or "").startswith("5"):  # 5xx: a store down or overloaded
        message = (
            f"{where} is throttling or unavailable ({code} during {operation}) beyond {max_attempts()} attempts with "
            f"backoff; lower the concurrency (fewer parallel shards) or wait, {_RETRY_HINT}"
        )
    else:
        detail = redact(text.split("operation:", 1)[-1].strip())[:160]
        message = f"{where} failed ({code} during {operation}: {detail}); {_RETRY_HINT}"
    return StorageError(message)


@contextlib.contextmanager
def translate_errors(location: str | None = None) -> Iterator[None]:
    """Turn a store's OSError (unreachable, credentials refused, missing bucket, throttling) raised inside into one
    StorageError; other errors (a missing file is a fact, FileNotFoundError) pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        clean = translate(e, location)
        if clean is None:
            raise
        raise clean from e
