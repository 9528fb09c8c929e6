"""The databases failing under a running sync: the gateway database ending the sync's connection
mid-read (``pg_terminate_backend`` from a second connection), and the state database refusing
connections mid-run. The sync fails with a message, nothing moves past undelivered rows, and the
next sync delivers every row by the destination's rules."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from prism_pipelines_tests.faults.conftest import PG_SERVER, SEED, SYNC_TIMEOUT
from prism_pipelines_tests.faults.matrix import BY_NAME, cases

BATCH_ROWS = 50
#: enough rows that the sync is still reading when the fault comes; the queue type here is
#: Datadog, as moto walks the whole queue on every SQS send (slow for thousands of messages)
ROWS = 3000


def _terminate(url: str, refuse: bool = False) -> int:
    """End every session on the database of ``url`` (and with ``refuse``, take no new ones)."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
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
    finally:
        admin.dispose()


def _allow_connections(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()


def _wait_for_batches(harness, proc, count: int) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT
    while proc.poll() is None and harness.batches_recorded() < count:
        assert time.monotonic() < deadline, "the sync never got going"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "kind",
    cases("source_terminated"),
)
def test_source_connection_terminated_mid_read_fails_clearly_and_the_next_sync_catches_up(
    harness, kind
):
    harness.configure(batch_rows=BATCH_ROWS)
    harness.traffic.add(ROWS)
    proc = harness.start_sync()
    _wait_for_batches(harness, proc, harness.rng.randint(2, 6))
    ended = _terminate(harness.source_url)
    failed = harness.finish(proc)
    where = f"{kind}, {ended} source sessions ended (seed {SEED})"
    assert ended and failed.code == 1, f"{where}: {failed.output}"
    assert "Traceback" not in failed.output, f"{where}: {failed.output}"
    operator = BY_NAME["source_terminated"].operator
    assert operator.message in failed.err, f"{where}: {failed.output}"
    status = harness.status()
    assert status["status"] == operator.status, f"{where}: {status}"
    harness.traffic.add(50)
    ran = harness.sync()
    assert ran.code == 0, f"{where}: {ran.output}"
    duplicates = harness.assert_delivered(1, where)
    harness.results.record(
        "source_terminated",
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
