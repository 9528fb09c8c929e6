"""The databases failing under a running sync: the gateway database ending the connection the
sync reads through, mid-read (``pg_terminate_backend`` of that one backend, while the sync is
held still so the read cannot end first), once and more often than the reader reconnects; and
the state database refusing connections mid-run. A lost read is read on after the last row
handed over; a sync that fails says why, nothing moves past undelivered rows, and the next sync
delivers every row by the destination's rules."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from datetime import datetime

import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy import create_engine, text

from prism_pipelines.source import READ_AHEAD, READER_APPLICATION, RECONNECTS
from prism_pipelines_tests.faults import destinations as dest
from prism_pipelines_tests.faults.conftest import PG_SERVER, SEED, SYNC_TIMEOUT
from prism_pipelines_tests.faults.matrix import BY_NAME, cases

BATCH_ROWS = 50
#: enough rows that the sync is still reading when the fault comes; the queue type here is
#: Datadog, as moto walks the whole queue on every SQS send (slow for thousands of messages)
ROWS = 3000
#: each row's size: the reader's query streams its rows (``COPY``) as fast as the client takes
#: them, so the hour must be larger than what the sockets on loopback buffer between server
#: and client (up to 36 MB here: ``tcp_rmem`` 32 MB, ``tcp_wmem`` 4 MB) for the server to be
#: still sending, mid-read, when the sync is held still
PADDING = 16 * 1024
#: how far the reader can be ahead of the ledger's cursor: the batch in flight, the chunks read
#: ahead and the one being fetched (a chunk is a batch here)
READ_AHEAD_ROWS = (2 + READ_AHEAD) * BATCH_ROWS


@contextmanager
def _admin():
    """A connection to the server as its administrator (autocommit), closed with its engine."""
    engine = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _terminate(url: str, refuse: bool = False) -> int:
    """End every session on the database of ``url`` (and with ``refuse``, take no new ones)."""
    name = url.rsplit("/", 1)[1]
    with _admin() as conn:
        if refuse:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).all()
        )


def _terminate_backend(pid: int) -> None:
    """End one backend's session (``pg_terminate_backend``), as a restart or failover would."""
    with _admin() as conn:
        ended = conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert ended.scalar_one()


def _allow_connections(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _admin() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))


def _wait_for_batches(harness, proc, count: int) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT
    while proc.poll() is None and harness.batches_recorded() < count:
        assert time.monotonic() < deadline, "the sync never got going"
        time.sleep(0.05)


def _readers(conn, url: str, waiting_on: tuple[str, ...] = ("ClientWrite",)) -> list[int]:
    """Backends of the gateway database that are mid-read: the reader's connection (by its
    application name) with its COPY active and waiting on one of ``waiting_on``; by default
    ``ClientWrite``, held up by the client (the rows left fill the socket's buffers, so the
    read has not ended); ``PgSleep``: working out rows (``_slow_gateway``). ``conn``: an admin
    connection the caller keeps for its polling, so a look takes a millisecond, not a new
    connection's tens."""
    return list(
        conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :name "
                "AND application_name = :reader AND state = 'active' "
                "AND wait_event = ANY(:waiting_on)"
            ),
            {
                "name": url.rsplit("/", 1)[1],
                "reader": READER_APPLICATION,
                "waiting_on": list(waiting_on),
            },
        ).scalars()
    )


def _slow_gateway(harness) -> None:
    """Read the gateway through a view that takes a millisecond a row, all of them worked out
    before the first is sent (the read is by id, so PostgreSQL sorts them): each read spends its
    first seconds computing (``PgSleep``), with nothing sent yet."""
    with harness.traffic.source.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE VIEW slow_request_logs AS SELECT * FROM prism_request_logs "
                "WHERE pg_sleep(0.001) IS NOT NULL"
            )
        )
    harness.configure(batch_rows=BATCH_ROWS, source={"table": "slow_request_logs"})


def _end_the_read(
    harness, proc, hour: datetime, ended: set[int], waiting_on: tuple[str, ...] = ("ClientWrite",)
) -> None:
    """End the connection the sync reads through, mid-read: wait for a reading backend not
    ended before (``_readers``, by ``waiting_on``), hold the sync still (SIGSTOP) so the read
    cannot move on, check that the backend still holds its cursor open with rows of the hour
    left to read past it, end it (``pg_terminate_backend``), and let the sync go on."""
    deadline = time.monotonic() + SYNC_TIMEOUT
    key = f"{hour:%Y-%m-%d-%H:%M}"
    with _admin() as conn:
        while True:
            if proc.poll() is not None:
                ran = harness.finish(proc)
                raise AssertionError(
                    f"the sync ended before its read was cut ({len(ended)} cut): {ran.output}"
                )
            assert time.monotonic() < deadline, f"no new reading connection ({len(ended)} cut)"
            readers = _readers(conn, harness.source_url, waiting_on)
            fresh = [pid for pid in readers if pid not in ended]
            if not fresh:
                time.sleep(0.002)
                continue
            os.killpg(proc.pid, signal.SIGSTOP)
            try:
                if fresh[0] not in _readers(conn, harness.source_url, waiting_on):
                    continue  # it ended or moved on before the sync stood still: look again
                delivered = harness.cursors().get(key, 0)
                assert delivered < ROWS - READ_AHEAD_ROWS, (
                    f"the sync had read nearly every row (cursor {delivered} of {ROWS}) "
                    "before its read could be cut: the fault would not land mid-read"
                )
                _terminate_backend(fresh[0])
                ended.add(fresh[0])
                return
            finally:
                os.killpg(proc.pid, signal.SIGCONT)


def _source_reconnects(harness) -> int:
    """``source_reconnects`` summed over the integration's materializations (the run's
    metadata, as the Dagster UI shows it)."""
    with DagsterInstance.from_config(str(harness.dagster_home)) as instance:
        records = instance.fetch_materializations(AssetKey(["prism", dest.NAME]), 100).records
        return sum(
            int(meta.value)
            for record in records
            if (meta := record.asset_materialization.metadata.get("source_reconnects"))
        )


def _traffic_hour(harness) -> datetime:
    """The hour before the current one: a closed hour, all of it one read."""
    return datetime.fromisoformat(harness.traffic.since)


@pytest.mark.parametrize("kind", cases("source_terminated"))
def test_source_connection_terminated_mid_read_is_read_on_after_the_last_row(harness, kind):
    harness.configure(batch_rows=BATCH_ROWS)
    hour = _traffic_hour(harness)
    harness.traffic.add(ROWS, hour, padding=PADDING)
    proc = harness.start_sync()
    _wait_for_batches(harness, proc, harness.rng.randint(1, 5))
    _end_the_read(harness, proc, hour, ended := set())
    ran = harness.finish(proc)
    where = f"{kind}, the reading connection ended once mid-read (seed {SEED})"
    assert ran.code == 0, f"{where}: {ran.output}"
    assert "Traceback" not in ran.output, f"{where}: {ran.output}"
    assert _source_reconnects(harness) == len(ended) == 1, where
    duplicates = harness.assert_delivered(0, where)
    harness.results.record(
        "source_terminated",
        kind,
        lost=0,
        duplicates=duplicates,
        reconnects=len(ended),
        seed=SEED,
    )


def test_source_connection_terminated_while_the_server_computes_rows_is_read_on(harness):
    """The session ended between two of COPY's messages, while the server works out rows (here
    a gateway view that takes a millisecond a row, all of them before the first is sent, as
    the read is by id): the reader gets the server's own FATAL, not a broken stream, and reads
    on just the same. (Mid-read, about one cut in 40 lands between two messages: CI saw one
    fail the sync before this was handled.)"""
    rows = 1500
    _slow_gateway(harness)
    hour = _traffic_hour(harness)
    harness.traffic.add(rows, hour)
    proc = harness.start_sync()
    deadline = time.monotonic() + SYNC_TIMEOUT
    with _admin() as conn:
        while not (computing := _readers(conn, harness.source_url, ("PgSleep",))):
            assert proc.poll() is None, "the sync ended before its read could be cut"
            assert time.monotonic() < deadline, "the read was never seen computing rows"
            time.sleep(0.01)
    _terminate_backend(computing[0])
    ran = harness.finish(proc)
    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output, ran.output
    assert _source_reconnects(harness) == 1
    assert harness.assert_delivered(0, "the read cut while the server computed rows") == 0


@pytest.mark.parametrize("kind", cases("source_lost_repeatedly"))
def test_source_connection_lost_past_the_reconnects_fails_clearly_and_the_next_sync_catches_up(
    harness, kind
):
    """The read cut once mid-read, then each reconnect's read cut while the server is still
    working out its rows (``_slow_gateway``), until the reconnects are spent. Each reconnect's
    read is cut before it sends a row: cut in the middle of sending instead, every cut let the
    sync take the rows already in the socket's buffers (300–400 rows here), and a loaded CI
    machine saw the read end after 3 of the 5 cuts."""
    _slow_gateway(harness)
    hour = _traffic_hour(harness)
    harness.traffic.add(ROWS, hour, padding=PADDING)
    proc = harness.start_sync()
    _wait_for_batches(harness, proc, harness.rng.randint(1, 5))
    ended: set[int] = set()
    for _ in range(RECONNECTS + 1):
        _end_the_read(harness, proc, hour, ended, waiting_on=("ClientWrite", "PgSleep"))
    failed = harness.finish(proc)
    where = f"{kind}, the reading connection ended {len(ended)} times (seed {SEED})"
    assert failed.code == 1, f"{where}: {failed.output}"
    assert "Traceback" not in failed.output, f"{where}: {failed.output}"
    operator = BY_NAME["source_lost_repeatedly"].operator
    assert operator.message in failed.err, f"{where}: {failed.output}"
    status = harness.status()
    assert status["status"] == operator.status, f"{where}: {status}"
    cursor = harness.cursors().get(f"{hour:%Y-%m-%d-%H:%M}", 0)
    assert cursor < ROWS, f"{where}: the failed sync recorded every row (cursor {cursor})"
    harness.traffic.add(50)
    ran = harness.sync()
    assert ran.code == 0, f"{where}: {ran.output}"
    duplicates = harness.assert_delivered(1, where)
    harness.results.record(
        "source_lost_repeatedly",
        kind,
        lost=0,
        duplicates=duplicates,
        message=failed.err.strip().splitlines()[-1],
        status=status["status"],
        seed=SEED,
    )


@pytest.mark.parametrize("kind", BY_NAME["state_unreachable"].types)
def test_state_database_unreachable_mid_run_fails_and_the_next_sync_redoes_the_open_batch(
    harness, kind
):
    harness.configure(batch_rows=BATCH_ROWS)
    harness.traffic.add(ROWS)
    proc = harness.start_sync()
    _wait_for_batches(harness, proc, harness.rng.randint(2, 6))
    try:
        _terminate(harness.state_url, refuse=True)
        failed = harness.finish(proc)
    finally:
        _allow_connections(harness.state_url)
    where = f"{kind}, state database refused mid-run (seed {SEED})"
    assert failed.code == 1, f"{where}: {failed.output}"
    assert "Traceback" not in failed.output, f"{where}: {failed.output}"
    assert BY_NAME["state_unreachable"].operator.message in failed.err, f"{where}: {failed.output}"
    harness.let_leases_run_out()  # the failed run could not release its lease
    harness.traffic.add(50)
    ran = harness.sync()
    assert ran.code == 0, f"{where}: {ran.output}"
    duplicates = harness.assert_delivered(1, where)
    harness.results.record(
        "state_unreachable",
        kind,
        lost=0,
        duplicates=duplicates,
        message=failed.err.strip().splitlines()[-1] if failed.err.strip() else "",
        seed=SEED,
    )
