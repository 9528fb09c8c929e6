"""prism-pipelines as deployed: run overhead, freshness and parallel backfills under the real
``dagster-daemon``.

Run by hand, never as a test: ``.venv/bin/python bench/deploy_bench.py`` (about 20 minutes on
2 cores; ``--only overhead --rounds 2`` is a quick look). ``bench/README.md`` holds the latest
run and how to read it.

Each part starts its own deployment: a Dagster instance on PostgreSQL (``deploy/dagster.yaml``
when present, else the same settings written here), the code location's gRPC code server(s),
``dagster-webserver`` (GraphQL, to launch runs and backfills and to read their events) and
``dagster-daemon`` (schedules, the run queue, backfills), started with
``prism_pipelines_tests.services.run_server``; fresh gateway, state and instance databases on
127.0.0.1:5432, dropped at the end.

- ``overhead``: runs of ``<name>_sync`` for an hour with no new rows, as a schedule requests
  them (partition tag, the job's tags), queued and launched by the daemon; this checkout
  (``after``) beside ``--before`` (a git revision, default ``main``, served by a second code
  server from ``git archive``), alternating, medians. Times from the run's own events: queued,
  launched (``RUN_STARTING``), process started (``RUN_START``), success.
- ``backfill``: 720 hourly partitions (20 rows each) backfilled with 1, 2 and 4 concurrent runs
  per integration (each integration's pool ``prism_<name>`` set to the limit), launched as the
  UI does (``launchPartitionBackfill``); wall time from the backfill's launch to its last run's
  end, and how busy the machine's two cores were meanwhile (every process counts); every row
  in the archive exactly once.
- ``freshness``: live traffic for ``--minutes`` minutes under 1-minute schedules, to the local
  archive and to SQS on moto; per record, the time it became readable (file seen in the
  folder; the queue's ``SentTimestamp`` of its message, on moto started by
  ``bench/moto_server.py``) minus its ``ingested_at``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import requests
import yaml
from sqlalchemy import create_engine, text

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from prism_pipelines.dagster_defs.names import pool_name  # noqa: E402
from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow  # noqa: E402
from prism_pipelines.source import GatewaySource  # noqa: E402
from prism_pipelines_tests.deployment.conftest import wait_for  # noqa: E402
from prism_pipelines_tests.factories import gateway_rows  # noqa: E402
from prism_pipelines_tests.services import _patched_env, run_moto, run_server  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
BIN = Path(sys.executable).parent
LOCATION = "prism"
REPOSITORY = "__repository__"
BACKFILL_HOURS = 720
BACKFILL_ROWS_PER_HOUR = 20
BACKFILL_LIMITS = (1, 2, 4)
IN_PROGRESS = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
EVENTS = {
    "RunEnqueuedEvent": "queued",
    "RunDequeuedEvent": "dequeued",
    "RunStartingEvent": "launched",
    "RunStartEvent": "started",
    "RunSuccessEvent": "success",
    "RunFailureEvent": "failure",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="overhead,backfill,freshness")
    parser.add_argument("--rounds", type=int, default=5, help="overhead runs per candidate")
    parser.add_argument("--before", default="main", help="git revision of the overhead baseline")
    parser.add_argument("--minutes", type=float, default=10, help="freshness: traffic minutes")
    parser.add_argument("--rate", type=int, default=5, help="freshness: requests per second")
    parser.add_argument(
        "--limits", default=",".join(map(str, BACKFILL_LIMITS)), help="backfill: runs at once"
    )
    parser.add_argument("--hours", type=int, default=BACKFILL_HOURS, help="backfill partitions")
    parser.add_argument("--workdir", type=Path, help="keep logs and archives here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prism-deploy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}; workdir {workdir}", flush=True)
    parts = args.only.split(",")
    if "overhead" in parts:
        overhead(workdir / "overhead", args.rounds, args.before)
    if "backfill" in parts:
        backfill(workdir / "backfill", [int(n) for n in args.limits.split(",")], args.hours)
    if "freshness" in parts:
        freshness(workdir / "freshness", args.minutes, args.rate)
    print(f"load average at end: {os.getloadavg()}", flush=True)


# -- the deployment ------------------------------------------------------------------------------


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Deployment:
    """Code server(s), webserver and daemon on a PostgreSQL instance; GraphQL to drive them."""

    def __init__(self, folder: Path, locations: dict[str, tuple[Path, list[dict]]], limits=None):
        self.folder = folder
        self.locations = locations  # location name -> (code checkout, integrations)
        self.limits = limits or {}
        self.url = ""

    @contextlib.contextmanager
    def run(self) -> Iterator[Deployment]:
        folder = self.folder
        logs, home = folder / "logs", folder / "dagster_home"
        for path in (logs, home):
            path.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
        with contextlib.ExitStack() as stack:
            instance_db, gateway_db = (
                stack.enter_context(database(f"prism_bench_{p}")) for p in ("dg", "gw")
            )
            self.source = GatewaySource(f"{PG}/{gateway_db}")
            self.source.create_table()
            stack.callback(self.source.engine.dispose)
            self.env = {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_HOST": "127.0.0.1",
                "DAGSTER_PG_PORT": "5432",
                "DAGSTER_PG_USERNAME": "postgres",
                "DAGSTER_PG_PASSWORD": "",
                "DAGSTER_PG_DB": instance_db,
                "PRISM_SOURCE_URL": f"{PG}/{gateway_db}",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            load_from = []
            for location, (checkout, integrations) in self.locations.items():
                config = folder / f"{location}.integrations.yaml"
                config.write_text(yaml.safe_dump({"integrations": integrations}))
                # A state database per location: checkouts of different state revisions (the
                # overhead's baseline) cannot share one (a newer revision refuses the older code).
                state_db = stack.enter_context(database(f"prism_bench_st_{location}"))
                env = {
                    **self.env,
                    "PYTHONPATH": str(checkout),
                    "PRISM_INTEGRATIONS": str(config),
                    "PRISM_STATE_URL": f"{PG}/{state_db}",
                }
                with _patched_env(env):
                    port = stack.enter_context(
                        run_server(
                            f"code_server_{location}",
                            lambda port, location=location: [
                                str(BIN / "dagster"),
                                *("code-server", "start", "-h", "127.0.0.1", "-p", str(port)),
                                *("-m", "prism_pipelines.definitions"),
                                *("--location-name", location),
                            ],
                            lambda port: f"http://127.0.0.1:{port}/",
                            logs,
                            timeout=180,
                        )
                    )
                load_from.append(
                    {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": location}}
                )
            workspace = folder / "workspace.yaml"
            workspace.write_text(yaml.safe_dump({"load_from": load_from}))
            with _patched_env({**self.env, "PYTHONPATH": str(REPO)}):
                web = stack.enter_context(
                    run_server(
                        "webserver",
                        lambda port: [
                            str(BIN / "dagster-webserver"),
                            *("-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)),
                        ],
                        lambda port: f"http://127.0.0.1:{port}/server_info",
                        logs,
                        timeout=180,
                    )
                )
                self.url = f"http://127.0.0.1:{web}"
                stack.enter_context(
                    run_server(
                        "daemon",
                        lambda _: [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
                        lambda _: f"{self.url}/server_info",
                        logs,
                    )
                )
            wait_for("the daemon's heartbeats", self.daemon_healthy, 180)
            for name, limit in self.limits.items():  # the run limit of each integration's pool
                self.graphql(
                    "mutation ($k: String!, $n: Int!) { setConcurrencyLimit(concurrencyKey: $k, "
                    "limit: $n) }",
                    k=pool_name(name),
                    n=limit,
                )
            yield self

    # -- GraphQL ---------------------------------------------------------------------------------

    def graphql(self, query: str, **variables) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=120
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def daemon_healthy(self) -> bool:
        data = self.graphql(
            "{ instance { daemonHealth { allDaemonStatuses { required healthy } } } }"
        )
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])

    def submit(self, location: str, name: str, key: str) -> str:
        """A run of ``<name>_sync`` for one partition, as a schedule's run request makes it."""
        data = self.graphql(
            """mutation ($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
                 __typename ... on LaunchRunSuccess { run { runId } }
                 ... on PythonError { message } ... on RunConfigValidationInvalid { errors {
                 message } } } }""",
            p={
                "selector": {
                    "repositoryLocationName": location,
                    "repositoryName": REPOSITORY,
                    "pipelineName": f"{name}_sync",
                },
                "executionMetadata": {
                    "tags": [
                        {"key": "dagster/partition", "value": key},
                        {"key": "prism/integration", "value": name},
                    ]
                },
            },
        )["launchPipelineExecution"]
        if data["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch of {name}_sync refused: {data}")
        return data["run"]["runId"]

    def run_times(self, run_id: str) -> dict:
        """status, and the epoch seconds of the run's lifecycle events (see ``EVENTS``)."""
        data = self.graphql(
            """query ($id: ID!) { runOrError(runId: $id) { ... on Run { status
                 eventConnection { events { __typename
                   ... on MessageEvent { timestamp } } } } } }""",
            id=run_id,
        )["runOrError"]
        times = {"status": data["status"]}
        for event in data["eventConnection"]["events"]:
            label = EVENTS.get(event["__typename"])
            if label:
                times.setdefault(label, int(event["timestamp"]) / 1000)
        return times

    def wait_run(self, run_id: str, timeout: float = 300) -> dict:
        times = wait_for(
            f"run {run_id}",
            lambda: self.run_times(run_id),
            timeout,
            interval=0.5,
            until=lambda t: t["status"] not in IN_PROGRESS,
        )
        if times["status"] != "SUCCESS":
            raise SystemExit(f"run {run_id} ended {times['status']}; logs in {self.folder}")
        return times

    def runs(self, name: str) -> list[dict]:
        data = self.graphql(
            """query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {
                 ... on Runs { results { runId status startTime endTime } } } }""",
            tags=[{"key": "prism/integration", "value": name}],
        )
        return data["runsOrError"]["results"]


def local(name: str, archive: Path, since: datetime, **extra) -> dict:
    return {
        "name": name,
        "type": "local",
        "path": str(archive / name),
        "history": {"since": since.isoformat()},
        **extra,
    }


def archived_ids(folder: Path) -> Counter:
    found: Counter = Counter()
    for path in folder.rglob("batch_*.jsonl.gz"):
        with gzip.open(path, "rt") as lines:
            found.update(json.loads(line)["request_id"] for line in lines)
    return found


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


# -- overhead: one idle hour, this checkout beside the baseline ----------------------------------


def checkout(revision: str, folder: Path) -> Path:
    """The code at ``revision``, unpacked (``git archive``) for the baseline's code server."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "prism_pipelines"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def overhead(folder: Path, rounds: int, before: str) -> None:
    hour = floor_hour(utcnow()) - HOUR  # closed, and no rows in it
    archive = folder / "archive"
    candidates = {"after": ("idle", REPO), "before": ("idle_before", None)}
    baseline = checkout(before, folder / f"code-{before.replace('/', '_')}")
    candidates["before"] = ("idle_before", baseline)
    locations = {
        location: (code, [local(name, archive, hour, paused=True)])
        for location, (name, code) in candidates.items()
    }
    print(f"overhead: runs of an idle hour, {rounds} per candidate, alternating", flush=True)
    times: dict[str, list[dict]] = {c: [] for c in candidates}
    with Deployment(folder, locations).run() as deployment:
        for candidate, (name, _) in candidates.items():  # a first run each, not counted
            deployment.wait_run(deployment.submit(candidate, name, partition_key(hour)))
        for round_ in range(rounds):
            for candidate, (name, _) in candidates.items():
                run = deployment.wait_run(deployment.submit(candidate, name, partition_key(hour)))
                times[candidate].append(run)
                print(
                    f"  round {round_ + 1} {candidate:6s}: queued→success "
                    f"{run['success'] - run['queued']:5.2f} s, launched→success "
                    f"{run['success'] - run['launched']:5.2f} s (process start "
                    f"{run['started'] - run['launched']:5.2f} s, run "
                    f"{run['success'] - run['started']:5.2f} s)",
                    flush=True,
                )
    print(
        "| candidate | queued → launched | launched → started | started → success "
        "| launched → success | queued → success |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for candidate, runs in times.items():

        def span(a, b, runs=runs):
            return median([r[b] - r[a] for r in runs])

        print(
            f"| {candidate} | {span('queued', 'launched'):.2f} | {span('launched', 'started'):.2f} "
            f"| {span('started', 'success'):.2f} | {span('launched', 'success'):.2f} "
            f"| {span('queued', 'success'):.2f} |"
        )


# -- backfill: 720 partitions, 1, 2 and 4 runs at once -------------------------------------------


def backfill(folder: Path, limits: list[int], hours: int) -> None:
    start = floor_hour(utcnow()) - (hours + 24) * HOUR
    archive = folder / "archive"
    names = {n: f"backfill{n}" for n in limits}
    integrations = [local(name, archive, start, paused=True) for name in names.values()]
    rows = hours * BACKFILL_ROWS_PER_HOUR
    keys = [partition_key(start + i * HOUR) for i in range(hours)]
    deployment = Deployment(
        folder, {LOCATION: (REPO, integrations)}, {name: n for n, name in names.items()}
    )
    print(f"backfill: {hours} partitions, {rows:,} rows, runs at once {limits}", flush=True)
    results = {}
    with deployment.run() as deployment:
        deployment.source.insert_rows(
            gateway_rows(start + i * HOUR, BACKFILL_ROWS_PER_HOUR) for i in range(hours)
        )
        for n, name in names.items():
            launched = time.time()
            cpu = cpu_times()
            data = deployment.graphql(
                """mutation ($p: LaunchBackfillParams!) {
                     launchPartitionBackfill(backfillParams: $p) {
                     __typename ... on LaunchBackfillSuccess { backfillId }
                     ... on PythonError { message } } }""",
                p={
                    "partitionNames": keys,
                    "assetSelection": [{"path": ["prism", name]}],
                },
            )["launchPartitionBackfill"]
            if data["__typename"] != "LaunchBackfillSuccess":
                raise SystemExit(f"backfill of {name} refused: {data}")
            status = wait_for(
                f"backfill of {name}",
                lambda id_=data["backfillId"]: deployment.graphql(
                    """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                         ... on PartitionBackfill { status } } }""",
                    id=id_,
                )["partitionBackfillOrError"]["status"],
                3600,
                until=lambda s: s not in ("REQUESTED", "CANCELING", "FAILING"),
            )
            # The backfill's runs are Dagster's asset job, without our tags: found by its id.
            runs = wait_for(
                f"the runs of {name}",
                lambda id_=data["backfillId"]: deployment.graphql(
                    """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                         ... on PartitionBackfill { runs { status endTime } } } }""",
                    id=id_,
                )["partitionBackfillOrError"]["runs"],
                600,
                until=lambda rs: rs and all(r["status"] not in IN_PROGRESS for r in rs),
            )
            seconds = max(r["endTime"] for r in runs) - launched
            busy = cpu_busy(cpu, cpu_times())
            found = archived_ids(archive / name)
            twice = sum(1 for c in found.values() if c > 1)
            ok = status == "COMPLETED_SUCCESS" and len(found) == rows and not twice
            results[n] = seconds, busy
            print(
                f"  {n} at once: {seconds:6.1f} s, {len(runs)} runs, {status}, CPU {busy:.0%} "
                f"busy; archive holds "
                f"{len(found):,} of {rows:,} rows, {twice} more than once "
                f"{'(every row once)' if ok else '(NOT every row once)'}",
                flush=True,
            )
            if not ok:
                raise SystemExit(f"backfill of {name}: not every row once; logs in {folder}")
    base = results.get(1, (None,))[0]
    print("| runs at once | seconds | partitions/s | speed-up | CPU busy (both cores) |")
    print("|---:|---:|---:|---:|---:|")
    for n, (seconds, busy) in results.items():
        speedup = f"{base / seconds:.2f}×" if base else "–"
        print(f"| {n} | {seconds:.1f} | {hours / seconds:.1f} | {speedup} | {busy:.0%} |")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time (all cores) that was busy between two samples: every
    process counts (the run workers, PostgreSQL, the daemon, the webserver, the code server)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


# -- freshness: live traffic, 1-minute schedules ------------------------------------------------


class Traffic(threading.Thread):
    """``rate`` requests a second stamped now; remembers each one's ``ingested_at``."""

    def __init__(self, source: GatewaySource, rate: int):
        super().__init__(daemon=True)
        self.source, self.rate = source, rate
        self.ingested: dict[str, float] = {}
        self.stop = threading.Event()
        self.serial = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            now = utcnow()
            rows = gateway_rows(
                floor_hour(now), self.rate, start=self.serial, timestamp=now, ingested_at=now
            )
            self.serial += self.rate
            self.source.insert_rows([rows])
            for row in rows:
                self.ingested[row[0]] = now.timestamp()


class ArchiveWatch(threading.Thread):
    """When each record became readable in a local archive: its file first seen (every 0.2 s)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.readable: dict[str, float] = {}
        self.seen: set[Path] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for path in self.folder.rglob("batch_*.jsonl.gz"):
                if path not in self.seen:
                    at = time.time()
                    self.seen.add(path)
                    with gzip.open(path, "rt") as lines:
                        for line in lines:
                            self.readable.setdefault(json.loads(line)["request_id"], at)


class QueueWatch(threading.Thread):
    """When each record became readable in an SQS queue: the message's ``SentTimestamp`` (when
    the queue accepted it), read by a consumer that deletes what it received, so how fast the
    consumer itself keeps up does not count."""

    def __init__(self, client, queue_url: str):
        super().__init__(daemon=True)
        self.client, self.queue_url = client, queue_url
        self.readable: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            messages = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["SentTimestamp"],
            ).get("Messages", [])
            for message in messages:
                self.readable.setdefault(
                    json.loads(message["Body"])["request_id"],
                    int(message["Attributes"]["SentTimestamp"]) / 1000,
                )
            if messages:
                self.client.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)
                    ],
                )


def freshness(folder: Path, minutes: float, rate: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "archive"
    hour = floor_hour(utcnow())
    print(f"freshness: {minutes:g} min of {rate} requests/s, 1-minute schedules", flush=True)
    # moto without its walk of the queue on every send (bench/moto_server.py says why)
    with run_moto(folder, script=BENCH / "moto_server.py") as moto:
        sqs = moto.client("sqs")
        queue_url = sqs.create_queue(QueueName="prism-freshness")["QueueUrl"]
        integrations = [
            local("fresh_local", archive, hour, sync_interval_minutes=1),
            {
                "name": "fresh_sqs",
                "type": "sqs",
                "queue_url": queue_url,
                "region": "us-east-1",
                "endpoint_url": moto.endpoint_url,
                "sync_interval_minutes": 1,
                "history": {"since": hour.isoformat()},
            },
        ]
        with Deployment(folder, {LOCATION: (REPO, integrations)}).run() as deployment:
            traffic = Traffic(deployment.source, rate)
            watches = {
                "fresh_local": ArchiveWatch(archive / "fresh_local"),
                "fresh_sqs": QueueWatch(sqs, queue_url),
            }
            for thread in (traffic, *watches.values()):
                thread.start()
            time.sleep(minutes * 60)
            traffic.stop.set()
            traffic.join()
            sent = dict(traffic.ingested)
            deadline = time.monotonic() + 180  # the runs queued behind catch up
            while time.monotonic() < deadline and any(
                set(sent) - set(w.readable) for w in watches.values()
            ):
                time.sleep(1)
            for watch in watches.values():
                watch.stop.set()
            print(
                "| destination | records | not readable 3 min after the traffic | p50 s "
                "| p95 s | max s | runs | median run s |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for name, watch in watches.items():
                # a record not readable yet counts as readable now: its lag is at least that
                now = time.time()
                lags = [watch.readable.get(r, now) - at for r, at in sent.items()]
                unread = sum(1 for r in sent if r not in watch.readable)
                runs = [
                    r for r in deployment.runs(name) if r["status"] == "SUCCESS" and r["endTime"]
                ]
                print(
                    f"| {name} | {len(lags):,} | {unread:,} | {median(lags):.1f} | {p95(lags):.1f} "
                    f"| {max(lags):.1f} | {len(runs)} "
                    f"| {median([r['endTime'] - r['startTime'] for r in runs]):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
