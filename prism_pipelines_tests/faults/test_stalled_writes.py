"""A sync stopped exactly at a write that a takeover makes stale, on every storage type in both
layouts: where a redone batch whose rows left the gateway empties its file (the write that used
to be a delete), and where the hour's manifest is written. Another sync takes the partition
over meanwhile and publishes newer versions; the stopped one wakes up (SIGCONT) and must neither
destroy the newer file nor replace the newer manifest with its stale list. And a sync killed
(SIGKILL) as it publishes a file in a `layout: hive`, `format: parquet` archive leaves nothing
behind once the next sync ran.

The stop is the process's own (``PRISM_STOP_AT``, prism_pipelines/stop_points.py), so it lands
in the branch under test every time, whatever the machine's load.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest

from prism_pipelines_tests.faults.conftest import SEED
from prism_pipelines_tests.faults.destinations import NAME, STORAGE
from prism_pipelines_tests.faults.matrix import BY_NAME

LAYOUTS = ("spec", "hive")
ROWS, LATE_ROWS = 300, 40


def closed_hour(harness):
    """An hour well past its grace period, so its manifest is due once it is delivered."""
    return (harness.traffic.now - timedelta(hours=3)).replace(minute=0, second=0)


def folder(hour, layout: str) -> str:
    day = f"date={hour:%Y-%m-%d}" if layout == "hive" else f"{hour:%Y/%m/%d}"
    return f"logs/{day}/hour={hour:%H}"


def configure(harness, hour, **settings):
    harness.configure(
        history={"since": f"{hour - timedelta(hours=1):%Y-%m-%dT%H:00:00Z}"}, **settings
    )
    return f"{hour:%Y-%m-%d-%H:00}"


def stalled_then_taken_over(harness, key: str, stop_at: str, takeover, *args: str):
    """Start a sync of ``key`` that stops itself at ``stop_at``; once its lease ran out, call
    ``takeover()`` (which changes the gateway) and sync again; then wake the stopped one.
    Returns (the takeover's run, the woken run's)."""
    stalled = harness.start("sync", NAME, "--partition", key, *args, stop_at=stop_at)
    harness.wait_until_stopped(stalled)
    try:
        harness.let_leases_run_out()
        takeover()
        took_over = harness.run("sync", NAME, "--partition", key, *args)
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    return took_over, harness.finish(stalled)


def check_outcome(harness, fault: str, kind: str, took_over, woke, where: str) -> None:
    seen = f"{where} (seed {SEED})"
    assert took_over.code == 0, f"{seen}: the run that took over: {took_over.output}"
    assert woke.code == 1, f"{seen}: the stalled run: {woke.output}"
    assert BY_NAME[fault].operator.message in woke.err, f"{seen}: {woke.output}"
    assert "Traceback" not in woke.err, f"{seen}: {woke.output}"
    harness.assert_delivered(0, where)
    harness.results.record(
        fault, kind, lost=0, duplicates=0, message=woke.err.strip().splitlines()[-1], seed=SEED
    )


def check_manifest(harness, hour, layout: str, records: int, where: str) -> dict:
    """The hour's manifest lists exactly the folder's data files, with ``records`` in all."""
    manifest = harness.destination.manifest(folder(hour, layout))
    assert manifest is not None, f"{where}: no manifest"
    files = {
        key.rsplit("/", 1)[1]
        for key in harness.destination.objects()
        if key.startswith(folder(hour, layout) + "/batch_")
    }
    assert {f["name"] for f in manifest["files"]} == files, f"{where}: {manifest}"
    assert manifest["records"] == records == sum(f["records"] for f in manifest["files"]), where
    return manifest


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", STORAGE)
def test_a_run_stalled_as_it_empties_a_redone_file_cannot_destroy_the_newer_file(
    harness, kind, layout
):
    hour = closed_hour(harness)
    key = configure(harness, hour, layout=layout, manifest=True)
    harness.traffic.add(ROWS, hour)
    first = harness.run("sync", NAME, "--partition", key)
    assert first.code == 0, first.output
    # The hour's rows leave the gateway: a full re-delivery finds the batch empty and stops just
    # before it writes the empty file over the one recorded (what used to be a delete).
    harness.set_rows_aside(hour)

    took_over, woke = stalled_then_taken_over(
        harness, key, "publish_file", harness.restore_rows, "--full"
    )

    where = f"{kind}, layout {layout}: stalled while emptying a redone file"
    check_outcome(harness, "stall_emptying", kind, took_over, woke, where)
    check_manifest(harness, hour, layout, ROWS, where)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", STORAGE)
def test_a_run_stalled_as_it_writes_the_manifest_cannot_replace_the_newer_one(
    harness, kind, layout
):
    hour = closed_hour(harness)
    key = configure(harness, hour, layout=layout, manifest=True)
    harness.traffic.add(ROWS, hour)

    took_over, woke = stalled_then_taken_over(
        harness, key, "publish_manifest", lambda: harness.traffic.add(LATE_ROWS, hour)
    )

    where = f"{kind}, layout {layout}: stalled while writing the manifest"
    check_outcome(harness, "stall_manifest", kind, took_over, woke, where)
    newer = check_manifest(harness, hour, layout, ROWS + LATE_ROWS, where)
    # The hour is recorded done with the newer manifest: the next sync leaves it as it is.
    again = harness.run("sync", NAME, "--partition", key)
    assert again.code == 0, again.output
    assert harness.destination.manifest(folder(hour, layout)) == newer, where


@pytest.mark.parametrize("kind", STORAGE)
def test_kill_9_as_a_hive_parquet_file_is_published_leaves_nothing_behind(harness, kind):
    hour = closed_hour(harness)
    key = configure(harness, hour, layout="hive", format="parquet")
    harness.traffic.add(ROWS, hour)
    if kind == "s3":
        # What a run killed during a multipart upload leaves in the hour's hive folder (only a
        # file over 8 MiB goes up in parts, and moto completes one too fast to catch).
        harness.destination.client.create_multipart_upload(
            Bucket=harness.destination.bucket, Key=f"{folder(hour, 'hive')}/batch_killed.parquet"
        )
    killed = harness.start("sync", NAME, "--partition", key, stop_at="publish_file")
    harness.wait_until_stopped(killed)
    if kind == "local":  # the staged file, beside its final name
        staged = list((harness.destination.folder / folder(hour, "hive")).glob(".*.tmp"))
        assert staged, "the killed sync had no temporary file"
    os.killpg(killed.pid, signal.SIGKILL)
    harness.finish(killed, killed=True)
    harness.let_leases_run_out()

    ran = harness.run("sync", NAME, "--partition", key)

    where = f"{kind}: killed as it published a hive/parquet file"
    assert ran.code == 0, f"{where} (seed {SEED}): {ran.output}"
    harness.assert_delivered(1, where)  # every row once, and no leftovers of any kind
    harness.results.record("kill_publishing", kind, lost=0, duplicates=0, seed=SEED)
