"""The fault suite's harness: the product driven from outside, as an operator would.

Each test gets its own gateway database and state database on the local PostgreSQL, an
integrations file, a Dagster home, and a destination on the session's stand-ins. Syncs are real
``prism-pipelines sync`` processes, so a fault can be a real signal to a real process. Every
command's output, the Dagster home and the state database are scanned for the destination's
secrets when the test ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from prism_pipelines.source import GatewaySource
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.faults import destinations as dest
from prism_pipelines_tests.faults.matrix import Results

REPO = Path(__file__).resolve().parents[2]
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
CLI = Path(sys.executable).with_name("prism-pipelines")
SYNC_TIMEOUT = 120
#: PRISM_LEASE_SECONDS for every process the suite starts: how long a killed run's partition
#: stays refused to the next run
LEASE_SECONDS = 2
#: the seed of every random choice in the suite; printed in assertion messages
SEED = int(os.environ.get("PRISM_FAULT_SEED", "20261130"))


def _database(name: str) -> str:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{PG_SERVER}/{name}"


def drop_database(name: str) -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Ran:
    """One finished command: exit code and what the operator saw."""

    code: int | None
    out: str
    err: str
    killed: bool = False

    @property
    def output(self) -> str:
        return self.out + self.err


class Traffic:
    """Gateway rows in the last 45 minutes (recent enough for Datadog's intake windows, settled
    past the sync's settle delay), with request ids unique across a test."""

    def __init__(self, source: GatewaySource):
        self.source = source
        self.ids: list[str] = []
        self.now = datetime.now(UTC).replace(microsecond=0)

    @property
    def since(self) -> str:
        return f"{self.now - timedelta(hours=1):%Y-%m-%dT%H:00:00Z}"

    def add(self, count: int, hour: datetime | None = None, padding: int = 0) -> list[str]:
        """``count`` new rows in the last 45 minutes, or all within ``hour`` (a past hour);
        with ``padding``, each row's ``error_message`` that many characters long."""
        start, end = self.now - timedelta(minutes=45), self.now - timedelta(minutes=1)
        if hour is not None:
            start, end = hour + timedelta(minutes=1), hour + timedelta(minutes=59)
        hour = start.replace(minute=0, second=0)
        rows = gateway_rows(hour, count, start=len(self.ids))
        columns = list(_insert_columns())
        stamp, ingested = columns.index("timestamp"), columns.index("ingested_at")
        made = []
        for i, row in enumerate(rows):
            row = list(row)
            row[columns.index("request_id")] = f"req_fault_{len(self.ids) + i:07d}"
            row[stamp] = start + (end - start) * ((len(self.ids) + i) * 7919 % 10007) / 10007
            row[ingested] = row[stamp] + timedelta(seconds=1)
            if padding:
                row[columns.index("error_message")] = "x" * padding
            made.append(tuple(row))
        self.source.insert_rows([made])
        new = [r[columns.index("request_id")] for r in made]
        self.ids += new
        return new


def _insert_columns():
    from prism_pipelines.source import INSERT_COLUMNS

    return INSERT_COLUMNS


@dataclass
class Harness:
    folder: Path
    source_url: str
    state_url: str
    destination: dest.Destination
    traffic: Traffic
    rng: random.Random
    results: Results
    outputs: list[str] = field(default_factory=list, repr=False)
    settings: dict = field(default_factory=dict)
    #: every secret value a command was given (kept out of the repr pytest prints on failure)
    secrets_seen: set[str] = field(default_factory=set, repr=False)

    @property
    def integrations(self) -> Path:
        return self.folder / "integrations.yaml"

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    def configure(
        self, endpoint_url: str | None = None, source: dict | None = None, **settings
    ) -> Harness:
        """The integrations file: the destination's integration with ``settings``, and the
        file's ``source:`` section with ``source``."""
        self.settings = settings
        # The traffic's hours are history to the integration (a sync with --since names them).
        settings.setdefault("history", {"since": self.traffic.since})
        entry = self.destination.integration(endpoint_url, **settings)
        source = {"settle_seconds": 2, **(source or {})}
        self.integrations.write_text(yaml.safe_dump({"integrations": [entry], "source": source}))
        return self

    def env(self) -> dict[str, str]:
        self.secrets_seen.update(v for v in self.destination.secrets.values() if v)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("PRISM_")},
            "PRISM_INTEGRATIONS": str(self.integrations),
            "PRISM_SOURCE_URL": self.source_url,
            "PRISM_STATE_URL": self.state_url,
            "DAGSTER_HOME": str(self.dagster_home),
            "PRISM_LEASE_SECONDS": str(LEASE_SECONDS),
            "PYTHONPATH": str(REPO),
            **self.destination.secrets,
        }

    def start(self, *args: str, stop_at: str | None = None) -> subprocess.Popen:
        """A ``prism-pipelines`` command; ``stop_at`` names a stop point where the process
        stops itself (``PRISM_STOP_AT``, prism_pipelines/stop_points.py)."""
        self.dagster_home.mkdir(exist_ok=True)
        return subprocess.Popen(
            [str(CLI), *args],
            env={**self.env(), **({"PRISM_STOP_AT": stop_at} if stop_at else {})},
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a signal reaches all of it
        )

    def start_sync(self, stop_at: str | None = None) -> subprocess.Popen:
        return self.start("sync", dest.NAME, "--since", self.traffic.since, stop_at=stop_at)

    def finish(self, proc: subprocess.Popen, killed: bool = False) -> Ran:
        out, err = proc.communicate(timeout=SYNC_TIMEOUT)
        self.outputs += [out, err]
        log = self.folder / f"command-{len(self.outputs) // 2}.log"
        log.write_text(f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n{out}{err}")
        return Ran(proc.returncode, out, err, killed)

    def sync(self) -> Ran:
        return self.finish(self.start_sync())

    def wait_until_stopped(self, proc: subprocess.Popen) -> None:
        """Until the process has stopped itself at its stop point (state T in /proc)."""
        deadline = time.monotonic() + SYNC_TIMEOUT
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            if proc.poll() is not None:
                ran = self.finish(proc)
                raise AssertionError(f"the sync ended before its stop point: {ran.output}")
            assert time.monotonic() < deadline, "the sync never reached its stop point"
            time.sleep(0.05)

    def set_rows_aside(self, hour: datetime) -> None:
        """Take the hour's rows out of the gateway's table (kept, ids and all), as a deletion
        would; ``restore_rows`` puts them back, as a restore from a backup would."""
        with self.traffic.source.engine.begin() as conn:
            window = {"start": hour, "end": hour + timedelta(hours=1)}
            conn.execute(
                text(
                    "CREATE TABLE prism_rows_aside AS SELECT * FROM prism_request_logs "
                    'WHERE "timestamp" >= :start AND "timestamp" < :end'
                ),
                window,
            )
            conn.execute(
                text(
                    'DELETE FROM prism_request_logs WHERE "timestamp" >= :start '
                    'AND "timestamp" < :end'
                ),
                window,
            )

    def restore_rows(self) -> None:
        with self.traffic.source.engine.begin() as conn:
            conn.execute(text("INSERT INTO prism_request_logs SELECT * FROM prism_rows_aside"))
            conn.execute(text("DROP TABLE prism_rows_aside"))

    def run(self, *args: str) -> Ran:
        return self.finish(self.start(*args))

    def status(self) -> dict:
        ran = self.run("status", dest.NAME, "--json")
        assert ran.code == 0, ran.output
        return json.loads(ran.out.splitlines()[0])

    def batches_recorded(self) -> int:
        """Batch rows in the ledger (open or finished): progress seen from outside."""
        engine = create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table("prism_batches"):
                    return 0
                return conn.execute(text("SELECT count(*) FROM prism_batches")).scalar_one()
        finally:
            engine.dispose()

    def cursors(self) -> dict[str, int]:
        """Each partition's cursor as the ledger has it (the highest id a finished batch covers)."""
        engine = create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table("prism_batches"):
                    return {}
                rows = conn.execute(
                    text(
                        "SELECT hour, max(through_id) FROM prism_batches "
                        "WHERE finished_at IS NOT NULL GROUP BY hour"
                    )
                )
                return {f"{hour:%Y-%m-%d-%H:%M}": cursor for hour, cursor in rows}
        finally:
            engine.dispose()

    def let_leases_run_out(self) -> None:
        """Wait out a killed run's lease (``PRISM_LEASE_SECONDS``). Until the ledger reads that
        setting (its lease is a fixed 120 s today), expire what is still held in the state
        database, as two minutes would."""
        time.sleep(LEASE_SECONDS + 0.5)
        engine = create_engine(self.state_url)
        try:
            with engine.begin() as conn:
                if inspect(conn).has_table("prism_leases"):
                    conn.execute(
                        text(
                            "UPDATE prism_leases SET expires_at = now() - interval '1 second' "
                            "WHERE expires_at > now()"
                        )
                    )
        finally:
            engine.dispose()

    def kill_mid_delivery(self, proc: subprocess.Popen, window: float) -> bool:
        """SIGKILL the sync's process group at a seeded random moment once it has begun
        delivering (a batch row appeared in the ledger). False if it finished first."""
        before = self.batches_recorded()
        deadline = time.monotonic() + SYNC_TIMEOUT
        while proc.poll() is None and self.batches_recorded() == before:
            if time.monotonic() > deadline:
                raise AssertionError("the sync never started a batch")
            time.sleep(0.05)
        time.sleep(self.rng.uniform(0, window))
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        return True

    def assert_delivered(self, kills: int, context: str) -> int:
        """Every source row delivered by the rules of the destination's kind; returns how many
        duplicate deliveries a consumer saw (always 0 for storage)."""
        expected = set(self.traffic.ids)
        received = self.destination.received()
        where = f"{context} (seed {SEED})"
        lost = sorted(expected - set(received))
        assert not lost, f"{where}: {len(lost)} rows lost, e.g. {lost[:3]}"
        unknown = sorted(set(received) - expected)
        assert not unknown, f"{where}: records that are no source row: {unknown[:3]}"
        if self.destination.storage:
            twice = {r: files for r, files in received.items() if len(files) != 1}
            assert not twice, f"{where}: rows in more than one file: {list(twice.items())[:3]}"
            leftovers = self.destination.leftovers()
            assert not leftovers, f"{where}: leftovers in the destination: {leftovers[:5]}"
            return 0
        duplicates = sum(received.values()) - len(received)
        bound = kills * self.batch_rows
        assert duplicates <= bound, (
            f"{where}: {duplicates} duplicate deliveries after {kills} kills; at most one batch "
            f"({self.batch_rows} rows) per kill may be re-sent"
        )
        return duplicates

    @property
    def batch_rows(self) -> int:
        return self.settings.get("batch_rows", 0)

    def scan_for_secrets(self) -> None:
        """No secret value in any command's output, the Dagster home (event log, compute logs,
        run storage) or any table of the state database."""
        secrets = {s for s in self.secrets_seen if len(s) >= 12}
        places: list[tuple[str, bytes]] = [("CLI output", "\n".join(self.outputs).encode())]
        if self.dagster_home.exists():
            places += [
                (str(p.relative_to(self.folder)), p.read_bytes())
                for p in self.dagster_home.rglob("*")
                if p.is_file()
            ]
        engine = create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                for table in inspect(conn).get_table_names():
                    rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
                    places.append((f"state table {table}", repr(rows).encode()))
        finally:
            engine.dispose()
        for where, data in places:
            for secret in secrets:
                assert secret.encode() not in data, f"a secret value is in {where}"


@pytest.fixture(scope="session")
def fault_results(tmp_path_factory) -> Iterator[Results]:
    """What every fault test observed; written as JSON (and the matrix it gives) at the end."""
    results = Results()
    yield results
    folder = tmp_path_factory.getbasetemp()
    (folder / "fault_results.json").write_text(json.dumps(results.as_list(), indent=2))
    (folder / "fault_matrix.md").write_text(results.render())


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """A gateway database and a separate state database, so a fault can hit one of them."""
    names = [f"prism_fault_{kind}_{uuid.uuid4().hex[:10]}" for kind in ("source", "state")]
    urls = [_database(name) for name in names]
    yield urls[0], urls[1]
    for name in names:
        drop_database(name)


def make_destination(request, kind: str, folder: Path) -> dest.Destination:
    if kind == "local":
        return dest.Local(folder / "bucket")
    if kind == "s3":
        return dest.S3(request.getfixturevalue("moto_server"))
    if kind == "azure_blob":
        return dest.AzureBlob(request.getfixturevalue("azurite"))
    if kind == "gcs":
        return dest.Gcs(request.getfixturevalue("fake_gcs"))
    if kind == "sqs":
        return dest.Sqs(request.getfixturevalue("moto_server"))
    if kind == "pubsub":
        return dest.PubSub(request.getfixturevalue("pubsub_emulator"))
    if kind == "otlp":
        return dest.Otlp(request.getfixturevalue("apm_agent"))
    return dest.Datadog(request.getfixturevalue("datadog_intake"))


@pytest.fixture
def harness(request, tmp_path, databases, fault_results) -> Iterator[Harness]:
    """The test's destination type comes from its ``kind`` parameter (default ``local``)."""
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("kind", "local") if callspec else "local"
    source_url, state_url = databases
    source = GatewaySource(source_url)
    source.create_table()
    destination = make_destination(request, kind, tmp_path)
    rng = random.Random(f"{SEED}:{request.node.name}")
    made = Harness(
        tmp_path, source_url, state_url, destination, Traffic(source), rng, fault_results
    )
    try:
        yield made
        made.scan_for_secrets()
    finally:
        destination.close()
        source.engine.dispose()
