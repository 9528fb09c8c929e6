"""``kill -9`` of a real ``prism-pipelines sync`` process at seeded random moments, rows added
between attempts, then a clean sync: storage has each row in exactly one file, queues and
Datadog have every row at least once with duplicates bounded by the batch in flight."""

from __future__ import annotations

import pytest

from prism_pipelines_tests.faults.conftest import SEED
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
    ran = harness.sync()
    assert ran.code == 0, f"clean sync after {landed} kills (seed {SEED}): {ran.output}"
    duplicates = harness.assert_delivered(landed, f"{kind}: after {landed} kills")
    harness.results.record(
        "kill", kind, lost=0, duplicates=duplicates, kills_landed=landed, seed=SEED
    )
