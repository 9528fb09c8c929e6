"""A sync stalled past its lease (stopped as it publishes a batch, as a long GC pause or a frozen
VM would stop it):
another sync takes the partition over and delivers more rows; then the stalled one wakes up
(SIGCONT). Its late write must not replace the newer file, and nothing may be lost."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest

from prism_pipelines_tests.faults.conftest import SEED
from prism_pipelines_tests.faults.matrix import BY_NAME, cases

ROWS = 8000


@pytest.mark.parametrize("kind", cases("stall"))
def test_stalled_run_woken_after_a_takeover_does_not_overwrite_the_newer_file(harness, kind):
    harness.configure(batch_rows=ROWS * 2)
    # One partition holds every row, whatever the time of the hour: one batch, which the run
    # that takes over delivers whole, with the rows added meanwhile.
    hour = (harness.traffic.now - timedelta(hours=1)).replace(minute=0, second=0)
    harness.traffic.add(ROWS, hour)
    # Stopped with its batch opened and its file written, just before it publishes it (a stop
    # before the batch is opened: test_fencing.py).
    stalled = harness.start_sync(stop_at="publish_file")
    harness.wait_until_stopped(stalled)
    try:
        harness.let_leases_run_out()
        harness.traffic.add(harness.rng.randint(100, 300), hour)
        took_over = harness.sync()
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    woke = harness.finish(stalled)
    where = f"{kind}: stalled run woken after a takeover (seed {SEED})"
    assert took_over.code == 0, f"{where}: the run that took over: {took_over.output}"
    assert woke.code == 1, f"{where}: the stalled run: {woke.output}"
    assert BY_NAME["stall"].operator.message in woke.err, f"{where}: {woke.output}"
    ran = harness.sync()
    assert ran.code == 0, f"{where}: {ran.output}"
    harness.assert_delivered(0, where)
    harness.results.record(
        "stall", kind, lost=0, duplicates=0, message=woke.err.strip().splitlines()[-1], seed=SEED
    )
