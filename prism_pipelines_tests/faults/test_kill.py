"""``kill -9`` of a real ``prism-pipelines sync`` process at seeded random moments, rows added
between attempts, then a clean sync: storage has each row in exactly one file, queues and
Datadog have every row at least once with duplicates bounded by the batch in flight."""

from __future__ import annotations

import os
import signal
import time

import pytest

from prism_pipelines_tests.faults.conftest import SEED, SYNC_TIMEOUT
from prism_pipelines_tests.faults.destinations import TYPES

KILLS = 2
BATCH_ROWS = 40


@pytest.mark.parametrize("kind", TYPES)
def test_kill_9_mid_sync_loses_nothing_and_duplicates_at_most_the_batch_in_flight(harness, kind):
    harness.configure(batch_rows=BATCH_ROWS)
    harness.traffic.add(400)
    landed = 0
    for attempt in range(KILLS):
        proc = harness.start_sync()
        killed = harness.kill_mid_delivery(proc, window=1.5)
        ran = harness.finish(proc, killed)
        if not killed:
            assert ran.code == 0, f"attempt {attempt} (seed {SEED}): {ran.output}"
        landed += killed
        if killed:
            harness.let_leases_run_out()
        harness.traffic.add(harness.rng.randint(20, 120))
        if not harness.destination.storage:
            harness.destination.received()  # a consumer reading along keeps moto's queue short
    ran = harness.sync()
    assert ran.code == 0, f"clean sync after {landed} kills (seed {SEED}): {ran.output}"
    duplicates = harness.assert_delivered(landed, f"{kind}: after {landed} kills")
    harness.results.record(
        "kill", kind, lost=0, duplicates=duplicates, kills_landed=landed, seed=SEED
    )


def test_kill_9_while_a_file_is_written_leaves_no_temporary_file(harness):
    """The kill lands while the local archive's temporary file exists (it is watched for), so
    what a crash mid-write leaves behind is seen every time, not only when the dice say so."""
    harness.configure(batch_rows=30_000)
    harness.traffic.add(30_000)
    proc = harness.start_sync()
    folder = harness.destination.folder
    deadline = time.monotonic() + SYNC_TIMEOUT
    while not any(p.name.endswith(".tmp") for p in folder.rglob(".*")):
        assert proc.poll() is None, f"the sync ended before writing (seed {SEED})"
        assert time.monotonic() < deadline, "the sync never started writing"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    harness.finish(proc, killed=True)
    harness.let_leases_run_out()
    ran = harness.sync()
    assert ran.code == 0, f"clean sync after a kill mid-write (seed {SEED}): {ran.output}"
    harness.assert_delivered(1, "local: killed while writing a file")
