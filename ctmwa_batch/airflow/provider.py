"""The `apache_airflow_provider` entry point: what `airflow providers list` shows for ctmwa-batch.

Airflow imports this module whenever it discovers providers (every CLI call, every worker), so it imports nothing
but the package version: no Airflow, no operator, no runtime.
"""

from __future__ import annotations

from typing import Any

from ctmwa_batch import __version__

PACKAGE_NAME = "ctmwa-batch"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata in the shape of Airflow's provider_info.schema.json."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "CTMWA batch scoring",
        "description": "Image-text sentiment (CTMWA) of Parquet post partitions with ONNX Runtime: a score_partition "
        "task group for your own DAGs (plan, mapped shard scoring, atomic commit, health report) and its operators.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "CTMWA", "tags": ["software"]},
        ],
        "operators": [{"integration-name": "CTMWA", "python-modules": ["ctmwa_batch.airflow.operators"]}],
    }
