"""Fixtures of the io tests against the S3 server: a fresh bucket each, and no storage options left over."""

from __future__ import annotations

import uuid

import pytest

from ctmwa_batch.io import storage
from ctmwa_batch.model.bundle import ENV_CACHE


@pytest.fixture()
def no_explicit_options():
    """Explicit storage options (storage.configure) cleared before and after the test."""
    storage.configure(None)
    yield
    storage.configure(None)


@pytest.fixture()
def s3(s3_server, monkeypatch, tmp_path, no_explicit_options):
    """The session's S3 server in this test's environment, a fresh bucket, and a bundle cache of its own."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "bundle-cache"))
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    s3_server.bucket = bucket
    return s3_server
