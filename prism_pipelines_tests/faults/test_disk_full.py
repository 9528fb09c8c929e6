"""The local archive's disk full: a 2 MB tmpfs, filled up. The sync fails with a message that
says so, the cursor does not move, and once space is freed the next sync delivers every row
exactly once, with no temporary file left behind."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from prism_pipelines_tests.faults import destinations as dest
from prism_pipelines_tests.faults.conftest import SEED
from prism_pipelines_tests.faults.matrix import BY_NAME


@pytest.fixture
def small_disk(tmp_path):
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


def _fill(folder) -> None:
    """Take every free byte of the file system."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while filler.write(b"\0" * size):
                    pass


def test_full_disk_fails_clearly_keeps_the_cursor_and_recovers_once_space_is_freed(
    harness, small_disk
):
    harness.destination = dest.Local(small_disk / "bucket")
    harness.configure(batch_rows=200)
    harness.traffic.add(1000)
    _fill(small_disk)
    failed = harness.sync()
    where = f"full disk (seed {SEED})"
    operator = BY_NAME["disk_full"].operator
    assert failed.code == 1, f"{where}: {failed.output}"
    assert operator.message in failed.err, f"{where}: {failed.output}"
    assert "Traceback" not in failed.output, f"{where}: {failed.output}"
    assert harness.cursors() == {}, f"{where}: the cursor moved past undelivered rows"
    status = harness.status()
    assert status["status"] == operator.status, f"{where}: {status}"
    assert operator.message in status["error"], f"{where}: {status}"

    (small_disk / "filler").unlink()
    ran = harness.sync()
    assert ran.code == 0, f"{where}, space freed: {ran.output}"
    harness.assert_delivered(0, where)
    harness.results.record(
        "disk_full",
        "local",
        lost=0,
        duplicates=0,
        message=failed.err.strip().splitlines()[-1],
        status=status["status"],
        seed=SEED,
    )
