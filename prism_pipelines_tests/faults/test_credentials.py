"""Credentials the destination refuses, on every type whose stand-in can refuse them (moto's IAM
check for S3 and SQS, Azurite with a wrong account key, the Datadog stand-in with a revoked API
key): the sync fails with a message naming what to fix, the status is Error, the cursor does not
move, and with the right credentials again the next sync delivers everything. Local folders,
fake-gcs-server and the Pub/Sub emulator have no credentials to refuse (see the fault matrix)."""

from __future__ import annotations

import pytest

from prism_pipelines_tests.faults.conftest import SEED
from prism_pipelines_tests.faults.matrix import BY_NAME, cases


@pytest.mark.parametrize("kind", cases("credentials"))
def test_refused_credentials_put_the_integration_in_error_and_move_no_cursor(harness, kind):
    harness.configure(batch_rows=100)
    harness.traffic.add(300)
    with harness.destination.refused_credentials():
        failed = harness.sync()
    where = f"{kind} with refused credentials (seed {SEED})"
    operator = BY_NAME["credentials"].operator
    assert failed.code == 1, f"{where}: {failed.output}"
    assert operator.message in failed.err, f"{where}: {failed.output}"
    assert "Traceback" not in failed.output, f"{where}: {failed.output}"
    assert harness.cursors() == {}, f"{where}: the cursor moved"
    status = harness.status()
    assert status["status"] == operator.status, f"{where}: {status}"
    assert operator.message in status["error"], f"{where}: {status}"

    ran = harness.sync()
    assert ran.code == 0, f"{where}, credentials fixed: {ran.output}"
    duplicates = harness.assert_delivered(1, where)
    harness.results.record(
        "credentials",
        kind,
        lost=0,
        duplicates=duplicates,
        message=failed.err.strip().splitlines()[-1],
        status=status["status"],
        seed=SEED,
    )
