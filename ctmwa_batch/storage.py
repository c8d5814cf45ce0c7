"""Where data lives: one storage configuration for every location (posts, scores, reports, models, image URIs).

Precedence, lowest first (DESIGN.md section 9):
1. the standard AWS environment and profiles (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_PROFILE`), which every client reads itself;
2. `CTMWA_STORAGE_OPTIONS`: a JSON object or `key=value,key=value`;
3. `--storage-option KEY=VALUE` on a command line, or an Airflow Connection (`conn_id`), via `configure`.

Option keys (one vocabulary for pyarrow and the image fetcher): `endpoint`, `region`, `access_key_id`,
`secret_access_key`, `session_token`, `profile`. Secrets never reach a log line, an error, a marker or an XCom:
format a location or an error with `redact`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
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
                raise CtmwaError(f"storage options are not valid JSON ({e.msg}); use a JSON object or key=value,key=value") from None
            if not isinstance(raw, dict):
                raise CtmwaError("storage options JSON must be an object, e.g. {\"endpoint\": \"http://host:9000\"}")
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
    endpoint = opts.get("endpoint")
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        kwargs["endpoint_override"] = rest if sep else endpoint
        kwargs["scheme"] = scheme if sep else "https"
    for key, arg in (("region", "region"), ("access_key_id", "access_key"), ("secret_access_key", "secret_key"), ("session_token", "session_token")):
        if opts.get(key):
            kwargs[arg] = opts[key]
    return kwargs


def open_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI (s3://bucket/key, gs://...)."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    scheme, _, rest = location.partition("://")
    if scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(rest)
    if scheme == "s3":
        return pafs.S3FileSystem(**pyarrow_s3_options()), rest.rstrip("/")
    return pafs.FileSystem.from_uri(location)
