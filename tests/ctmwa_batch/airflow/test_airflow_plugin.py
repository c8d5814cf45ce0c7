"""ctmwa_batch.airflow without running a DAG: the provider entry point (declared, valid for Airflow's schema, shown
by `airflow providers list`) and the storage options a Connection gives. Airflow itself is imported only in
subprocesses (tests/dags/conftest.py says why)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

from ctmwa_batch.airflow.connections import connection_storage_options
from ctmwa_batch.airflow.provider import get_provider_info

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY_POINTS = PYPROJECT["project"]["entry-points"]["apache_airflow_provider"]


def test_the_entry_point_names_get_provider_info():
    (target,) = ENTRY_POINTS.values()
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is get_provider_info


def test_provider_info_is_valid_for_airflow():
    import jsonschema

    # Airflow's runtime schema, read from its package folder without importing Airflow.
    airflow_dir = Path(importlib.util.find_spec("airflow").submodule_search_locations[0])
    schema = json.loads((airflow_dir / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == PYPROJECT["project"]["name"] and info["versions"] == [
        PYPROJECT["project"]["version"]
    ]
    for operators in info["operators"]:
        for module in operators["python-modules"]:
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_airflow_providers_list_shows_the_package(tmp_path):
    """The installed package's metadata, as pip would write it from pyproject.toml (a dist-info on the path ahead of
    the development install), is what Airflow's provider discovery reads."""
    dist = tmp_path / "site" / f"ctmwa_batch-{PYPROJECT['project']['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {PYPROJECT['project']['name']}\nVersion: {PYPROJECT['project']['version']}\n"
    )
    (dist / "entry_points.txt").write_text(
        "[apache_airflow_provider]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(proc.stdout[proc.stdout.index("[") :])}
    assert providers["ctmwa-batch"]["version"] == PYPROJECT["project"]["version"]
    assert providers["ctmwa-batch"]["description"].startswith("Image-text sentiment (CTMWA)")


def _conn(login=None, password=None, host=None, port=None, schema=None, extra=None):
    return SimpleNamespace(
        login=login, password=password, host=host, port=port, schema=schema, extra_dejson=extra or {}
    )


def test_an_aws_connection_gives_the_storage_options():
    conn = _conn(
        "AKIDEXAMPLE",
        "s3cr3t-key",
        extra={"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu-west-1", "aws_session_token": "tok3n"},
    )
    assert connection_storage_options(conn) == {
        "endpoint": "http://127.0.0.1:8333",
        "region": "eu-west-1",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "s3cr3t-key",
        "session_token": "tok3n",
    }
    # The AWS provider's per-service form, and a profile instead of keys.
    conn = _conn(extra={"service_config": {"s3": {"endpoint_url": "https://minio.internal"}}, "profile_name": "lake"})
    assert connection_storage_options(conn) == {"endpoint": "https://minio.internal", "profile": "lake"}


def test_a_generic_connection_gives_its_host_as_the_endpoint():
    assert (
        connection_storage_options(_conn("key", "secret", host="minio.internal", port=9000))["endpoint"]
        == "http://minio.internal:9000"
    )
    assert connection_storage_options(_conn(host="https://s3.example.com"))["endpoint"] == "https://s3.example.com"
    assert connection_storage_options(_conn()) == {}
