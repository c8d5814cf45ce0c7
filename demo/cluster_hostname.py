"""`[core] hostname_callable` of the cluster demo's Celery workers.

Airflow records on each task instance the hostname its worker reports (`socket.getfqdn()` by default). The demo runs
several workers on one machine, so each worker's environment names it (CLUSTER_DEMO_HOSTNAME) and this function hands
that name to Airflow: `AIRFLOW__CORE__HOSTNAME_CALLABLE=demo.cluster_hostname.hostname`. On a real fleet leave the
default; every machine has its own name.
"""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "CLUSTER_DEMO_HOSTNAME"


def hostname() -> str:
    """The worker's name from CLUSTER_DEMO_HOSTNAME, else the machine's."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
