"""The deployment tier: prism-pipelines as it is deployed, not in process.

One set of real processes for the whole tier, started from ``deploy/``: the gRPC code server,
``dagster-webserver`` and ``dagster-daemon`` with the commands of ``deploy/docker-compose.yaml``
(this machine's executables, hosts and ports), on a Dagster instance made by
``deploy/dagster.yaml`` over a fresh PostgreSQL database. A thread inserts live gateway traffic
while they run. The tests drive it as a user does: GraphQL on the webserver, the
``prism-pipelines`` command line, the archive's files.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import requests
import yaml
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import create_engine, select, text

from prism_pipelines.hours import HOUR, floor_hour, utcnow
from prism_pipelines.source import GatewaySource
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import REPO, _patched_env, _tail, run_server, wait_for
from prism_pipelines_tests.test_notifications import Receiver

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
#: the code location's name in deploy/workspace.yaml: not the project's own `prism_pipelines`,
#: so the tier proves nothing depends on the name a deployment gives its location
LOCATION = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"][0]["grpc_server"][
    "location_name"
]
#: the late-data sensor's minimum interval here: seconds, not the production 300
LATE_DATA_INTERVAL_SECONDS = 10
HISTORY_HOURS = 3
ROWS_PER_PAST_HOUR = 40
#: a 1-minute schedule ticks within a minute; its run starts and finishes on a busy machine
SCHEDULED_RUN_SECONDS = 300
IN_PROGRESS = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def compose_command(service: str) -> list[str]:
    """A service's command in deploy/docker-compose.yaml: the one place the flags are written."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    return list(compose["services"][service]["command"])


def local_command(service: str, *, port: int | None = None, workspace: Path | None = None):
    """The compose command for this machine: this venv's executable, 127.0.0.1, the test's port
    and workspace file in place of the container's."""
    argv = compose_command(service)
    argv[0] = str(BIN / argv[0])
    for flag, value in (("-h", "127.0.0.1"), ("-p", port), ("-w", workspace)):
        if flag in argv:
            assert value is not None, f"{service}: {flag} needs a value here"
            argv[argv.index(flag) + 1] = str(value)
    return argv


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database for the tier, dropped at its end."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Traffic:
    """Live gateway traffic: a few requests a second stamped now, until stopped."""

    def __init__(self, source: GatewaySource, rows_per_second: int = 4):
        self.source = source
        self.rows_per_second = rows_per_second
        self._serial = 1_000_000  # above the historical rows' numbers: request ids stay unique
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-traffic", daemon=True)
        self.error: BaseException | None = None

    def insert(self, at: datetime, count: int, ingested_at: datetime | None = None) -> list[str]:
        """``count`` requests with event time ``at``, written now (or at ``ingested_at``)."""
        self._serial += count
        rows = gateway_rows(
            floor_hour(at),
            count,
            start=self._serial - count,
            timestamp=at,
            ingested_at=ingested_at or utcnow(),
        )
        self.source.insert_rows([rows])
        return [row[0] for row in rows]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(1.0):
                self.insert(utcnow(), self.rows_per_second)
        except BaseException as exc:  # reported by the test that reads the traffic
            self.error = exc


@dataclass
class Deployment:
    url: str
    client: DagsterGraphQLClient
    env: dict[str, str]
    log_dir: Path
    integrations_file: Path
    integrations: dict[str, dict]
    source: GatewaySource
    traffic: Traffic
    started_at: datetime
    hour: datetime  # the hour the tier started in
    #: the notification webhook's stand-in (notifications.webhook_url)
    webhook: Receiver | None = None
    paused_at: dict[str, float] = field(default_factory=dict)
    fixed_at: float = 0.0  # when the refused destination was fixed
    backfilled: set[str] = field(default_factory=set)  # the rows the GraphQL backfill delivered

    # -- the webserver's GraphQL API -------------------------------------------------------------

    def graphql(self, query: str, **variables) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def runs(self, name: str) -> list[dict]:
        """Every run of integration ``name`` (by its tag), newest first."""
        data = self.graphql(
            """query ($tags: [ExecutionTag!]) {
              runsOrError(filter: {tags: $tags}) {
                ... on Runs { results { runId status creationTime startTime endTime
                                        tags { key value } } }
              }
            }""",
            tags=[{"key": "prism/integration", "value": name}],
        )
        runs = data["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs

    def ticks(self) -> list[dict]:
        """Every schedule and sensor tick so far: instigator name, status, error."""
        data = self.graphql(
            """query {
              repositoriesOrError { ... on RepositoryConnection { nodes {
                schedules { name scheduleState { ticks(limit: 1000) {
                  status timestamp error { message } } } }
                sensors { name sensorState { ticks(limit: 1000) {
                  status timestamp error { message } } } }
              } } }
            }"""
        )
        found = []
        for repository in data["repositoriesOrError"]["nodes"]:
            for kind, state in (("schedules", "scheduleState"), ("sensors", "sensorState")):
                for instigator in repository[kind]:
                    for tick in instigator[state]["ticks"]:
                        found.append({"name": instigator["name"], **tick})
        return found

    # -- the command line ---------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "prism-pipelines"), *args],
            env=self.env,
            cwd=self.log_dir,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def status(self, name: str) -> dict:
        """`prism-pipelines status NAME --json`, read between runs if one comes within
        ``SCHEDULED_RUN_SECONDS``: a 1-minute schedule keeps an integration Syncing much of the
        time (all of it on a machine too busy to finish a run a minute)."""
        deadline = time.monotonic() + SCHEDULED_RUN_SECONDS
        while True:
            busy = [r for r in self.runs(name) if r["status"] in IN_PROGRESS]
            if not busy or time.monotonic() > deadline:
                result = self.cli("status", name, "--json")
                assert result.returncode == 0, result.stderr
                status = json.loads(result.stdout.splitlines()[-1])
                if status["status"] != "Syncing" or time.monotonic() > deadline:
                    return status
            time.sleep(2)

    # -- the integrations file ----------------------------------------------------------------

    def write_integrations(self) -> None:
        self.integrations_file.write_text(
            yaml.safe_dump(
                {
                    "integrations": list(self.integrations.values()),
                    "source": {"settle_seconds": 1},
                    "notifications": {"webhook_url": {"env": "PRISM_TEST_WEBHOOK"}},
                }
            )
        )

    # -- what was sent, what arrived ----------------------------------------------------------

    def delivered(self, name: str) -> Counter:
        """request_id → how many times it is in integration ``name``'s archive files."""
        found: Counter = Counter()
        for path in Path(self.integrations[name]["path"]).rglob("batch_*.jsonl.gz"):
            with gzip.open(path, "rt") as lines:
                found.update(json.loads(line)["request_id"] for line in lines)
        return found

    def source_ids(self, start: datetime, end: datetime | None = None) -> set[str]:
        """request_ids of the gateway rows whose event time is in [start, end)."""
        table = self.source.table
        query = select(table.c.request_id).where(table.c.timestamp >= start)
        if end is not None:
            query = query.where(table.c.timestamp < end)
        with self.source.engine.connect() as conn:
            return set(conn.scalars(query))

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}:\n{_tail(log, 15)}" for log in sorted(self.log_dir.glob("*.log"))
        )


def _integration(name: str, archive: Path, since: datetime, **extra) -> dict:
    return {
        "name": name,
        "type": "local",
        "path": str(archive / name),
        "prefix": "prism",
        "sync_interval_minutes": 1,
        # the schedule syncs the current hour only; closed hours are the late-data sensor's
        "grace_minutes": 0,
        "history": {"since": since.isoformat()},
        **extra,
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("deployment")
    log_dir, home, archive = folder / "logs", folder / "dagster_home", folder / "archive"
    for path in (log_dir, home, archive):
        path.mkdir()
    # The instance is deploy/dagster.yaml itself: what this tier proves is what is deployed.
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    hour = floor_hour(utcnow())
    refused = folder / "not_a_folder"  # a file where the archive's folder should be
    refused.write_text("the archive cannot be written under a file\n")
    integrations = {
        # the schedule, the late-data sensor and the auto-backfill of history
        "live": _integration("live", archive, hour - HISTORY_HOURS * HOUR),
        # only what a user launches: runs and a backfill over GraphQL
        "manual": _integration("manual", archive, hour - HISTORY_HOURS * HOUR, paused=True),
        "pausable": _integration("pausable", archive, hour),
        "broken": {**_integration("broken", archive, hour), "path": str(refused)},
        # its history.since is moved earlier while the deployment runs
        "grown": {**_integration("grown", archive, hour), "sync_interval_minutes": 5},
        # its hours are held by another run while the schedule and the sensor reach them
        "overlap": _integration("overlap", archive, hour - HOUR),
    }
    with contextlib.ExitStack() as stack:
        instance_db = stack.enter_context(database("prism_deploy_dagster"))
        gateway_db = stack.enter_context(database("prism_deploy_gateway"))
        state_db = stack.enter_context(database("prism_deploy_state"))
        source = GatewaySource(f"{PG}/{gateway_db}")
        source.create_table()
        stack.callback(source.engine.dispose)
        source.insert_rows(
            gateway_rows(hour - n * HOUR, ROWS_PER_PAST_HOUR) for n in range(1, HISTORY_HOURS + 1)
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": instance_db,
            "PRISM_SOURCE_URL": f"{PG}/{gateway_db}",
            "PRISM_STATE_URL": f"{PG}/{state_db}",
            "PRISM_INTEGRATIONS": str(folder / "integrations.yaml"),
            "PRISM_LATE_DATA_INTERVAL_SECONDS": str(LATE_DATA_INTERVAL_SECONDS),
        }
        traffic = Traffic(source)
        webhook = Receiver()
        stack.callback(webhook.close)
        env["PRISM_TEST_WEBHOOK"] = webhook.url
        deployment = Deployment(
            url="",
            client=None,
            env=env,
            log_dir=log_dir,
            integrations_file=folder / "integrations.yaml",
            integrations=integrations,
            source=source,
            traffic=traffic,
            started_at=utcnow(),
            hour=hour,
            webhook=webhook,
        )
        deployment.write_integrations()
        # The children inherit this environment when they start; the tests' own stays as it was.
        with _patched_env({k: v for k, v in env.items() if os.environ.get(k) != v}):
            grpc_port = stack.enter_context(
                run_server(
                    "code_server",
                    lambda port: local_command("code_server", port=port),
                    # the proxy listens once the definitions loaded; gRPC answers HTTP/1 with a
                    # protocol error, which proves it is up
                    lambda port: f"http://127.0.0.1:{port}/",
                    log_dir,
                    timeout=120,
                )
            )
            workspace = folder / "workspace.yaml"
            workspace.write_text(
                yaml.safe_dump(
                    {
                        "load_from": [
                            {
                                "grpc_server": {
                                    "host": "127.0.0.1",
                                    "port": grpc_port,
                                    "location_name": LOCATION,
                                }
                            }
                        ]
                    }
                )
            )
            web_port = stack.enter_context(
                run_server(
                    "webserver",
                    lambda port: local_command("webserver", port=port, workspace=workspace),
                    lambda port: f"http://127.0.0.1:{port}/server_info",
                    log_dir,
                    timeout=120,
                )
            )
            deployment.url = f"http://127.0.0.1:{web_port}"
            deployment.client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
            # The daemon serves nothing: it is ready once the webserver reports its heartbeats.
            stack.enter_context(
                run_server(
                    "daemon",
                    lambda _: local_command("daemon", workspace=workspace),
                    lambda _: f"{deployment.url}/server_info",
                    log_dir,
                )
            )
        try:
            wait_for("the daemon's heartbeats", lambda: _daemon_healthy(deployment), 90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{deployment.logs()}") from None
        traffic.start()
        stack.callback(traffic.stop)
        yield deployment


def _daemon_healthy(deployment: Deployment) -> bool:
    data = deployment.graphql(
        "query { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
    )
    statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    return all(s["healthy"] for s in statuses if s["required"])


def past_hours(deployment: Deployment) -> tuple[datetime, datetime]:
    """The closed hours of the tier's history: [start, end)."""
    return deployment.hour - HISTORY_HOURS * HOUR, deployment.hour
