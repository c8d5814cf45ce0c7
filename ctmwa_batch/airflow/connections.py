"""Storage (and Iceberg catalogs) from an Airflow Connection: `conn_id` of score_partition and the operators.

Resolved inside the task, on the worker, never when a DAG file is parsed; its options go to
ctmwa_batch.io.storage.configure for the task's duration, so input, output, models and image URIs all use it. Airflow is
imported only when a task looks a Connection up, so this module can be imported (and tested) without it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def connection_storage_options(conn: Any) -> dict[str, str]:
    """Storage options (ctmwa_batch.io.storage keys) from an Airflow Connection: an `aws` Connection's login / password
    (access key id / secret), its extra's `endpoint_url` (or `service_config.s3.endpoint_url`), `region_name`,
    `aws_session_token`, `profile_name`; for other types, `host` (with scheme and port) is the endpoint."""
    extra = dict(conn.extra_dejson or {})
    s3_config = (
        ((extra.get("service_config") or {}).get("s3") or {}) if isinstance(extra.get("service_config"), dict) else {}
    )
    endpoint = extra.get("endpoint_url") or s3_config.get("endpoint_url") or extra.get("endpoint")
    if not endpoint and conn.host:
        endpoint = conn.host if "://" in conn.host else f"{'https' if conn.schema == 'https' else 'http'}://{conn.host}"
        if conn.port and ":" not in endpoint.split("://", 1)[1]:
            endpoint = f"{endpoint}:{conn.port}"
    found = {
        "endpoint": endpoint,
        "region": extra.get("region_name") or extra.get("region"),
        "access_key_id": conn.login or extra.get("aws_access_key_id"),
        "secret_access_key": conn.password or extra.get("aws_secret_access_key"),
        "session_token": extra.get("aws_session_token"),
        "profile": extra.get("profile_name") or extra.get("profile"),
    }
    return {k: str(v) for k, v in found.items() if v}


def connection_catalogs(conn: Any) -> dict[str, dict[str, str]]:
    """Iceberg catalogs a Connection supplies: its extra's `iceberg_catalogs`, {name: pyiceberg properties}, e.g.
    {"lake": {"type": "rest", "uri": "https://catalog.example", "credential": "id:secret"}}."""
    catalogs = dict(conn.extra_dejson or {}).get("iceberg_catalogs") or {}
    if not isinstance(catalogs, dict) or not all(isinstance(v, dict) for v in catalogs.values()):
        raise ValueError('the Connection\'s extra "iceberg_catalogs" must map catalog names to property objects')
    return {str(name): {str(k): str(v) for k, v in props.items()} for name, props in catalogs.items()}


@contextlib.contextmanager
def connection_storage(conn_id: str | None) -> Iterator[None]:
    """While the task runs, its storage (input, output, models, image URIs) uses the Connection `conn_id`; None leaves
    the worker's standard configuration (the AWS environment, CTMWA_STORAGE_OPTIONS). Looked up here, at run time."""
    from ctmwa_batch.io import storage

    if conn_id:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        options = connection_storage_options(conn)
        catalogs = connection_catalogs(conn)
        if catalogs:  # Iceberg catalogs the Connection supplies, over pyiceberg's own configuration
            from ctmwa_batch.io import tables

            tables.configure_catalogs(catalogs)
            logger.info("Iceberg catalog(s) from Connection %r: %s", conn_id, sorted(catalogs))
        logger.info(
            "storage from Connection %r: %s",
            conn_id,
            ", ".join(f"{k}={v}" for k, v in options.items() if k not in storage.SECRET_KEYS and k != "access_key_id")
            or "no options",
        )
        storage.configure(options)
    try:
        with storage.translate_errors():  # a store's fault ends the task with one line: the store, the bucket, the fix
            yield
    finally:
        if conn_id:
            storage.configure(None)
            from ctmwa_batch.io import tables

            tables.configure_catalogs(None)
