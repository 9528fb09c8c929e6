"""Fencing, with real processes: a sync stalled (SIGSTOP, as a paused VM or a long GC would)
past its lease once it has written a batch's file (before its batch is opened in the ledger,
inside the transaction that opens it, and after, as it publishes) cannot replace what the run
that took the partition over published, nor keep that run waiting; a sync killed mid-batch
leaves nothing behind once the next sync ran; and lease expiry follows the state database's
clock, not the host's.

Each test drives ``prism-pipelines sync`` as a subprocess against the real stand-ins (a local
folder, S3 on moto, Azure Blob on Azurite, GCS on fake-gcs-server) with PostgreSQL for the
gateway and the state, and reads the destination back with the provider's official client.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import time_machine
import yaml
from sqlalchemy import text

from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow
from prism_pipelines.ledger import Ledger, PartitionBusy
from prism_pipelines.source import GatewaySource
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.storage_helpers import AzureStore, GcsStore, S3Store

#: the partition under test: a closed hour, so every row is settled
HOUR_UNDER_TEST = floor_hour(utcnow()) - 3 * HOUR
KEY = partition_key(HOUR_UNDER_TEST)
#: one batch, and the rows the run that takes over finds besides
FIRST_ROWS, LATER_ROWS = 30_000, 10_000
LEASE_SECONDS = 3
CLI = Path(sys.executable).with_name("prism-pipelines")


class LocalStore:
    """The local folder archive, read back from disk."""

    def __init__(self, folder: Path):
        self.folder = folder

    def integration(self, **settings) -> dict:
        return {"name": "archive", "type": "local", "path": str(self.folder), **settings}

    def object_keys(self) -> list[str]:
        files = (p for p in self.folder.rglob("*") if p.is_file())
        return sorted(str(p.relative_to(self.folder)) for p in files)

    def read(self, key: str) -> bytes:
        return (self.folder / key).read_bytes()


@pytest.fixture(params=["local", "s3", "azure_blob", "gcs"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStore(tmp_path / "archive")
    if request.param == "s3":
        return S3Store(request.getfixturevalue("moto_server"), monkeypatch)
    if request.param == "azure_blob":
        return AzureStore(request.getfixturevalue("azurite"), monkeypatch)
    return GcsStore(request.getfixturevalue("fake_gcs"))


@pytest.fixture
def env(store, pg_url, gateway, tmp_path) -> dict[str, str]:
    """The environment of every ``prism-pipelines`` process of a test (the gateway and the
    state in one PostgreSQL database: the state's tables are prism_*)."""
    path = tmp_path / "integrations.yaml"
    integration = store.integration(batch_rows=FIRST_ROWS + LATER_ROWS)
    integration["history"] = {"since": (HOUR_UNDER_TEST - HOUR).isoformat()}
    path.write_text(yaml.safe_dump({"integrations": [integration]}))
    return {
        **os.environ,
        "PRISM_INTEGRATIONS": str(path),
        "PRISM_SOURCE_URL": pg_url,
        "PRISM_STATE_URL": pg_url,
        "PRISM_LEASE_SECONDS": str(LEASE_SECONDS),
    }


def own_home(env: dict[str, str]) -> dict[str, str]:
    """A Dagster instance per process, as on separate hosts: a stopped process must not hold
    the others up on its instance's SQLite storage."""
    return {**env, "DAGSTER_HOME": tempfile.mkdtemp(prefix="dagster_home_")}


def start_sync(env: dict[str, str], stop_at: str | None = None) -> subprocess.Popen:
    """A sync of the partition; ``stop_at`` names the stop point where it stops itself
    (``PRISM_STOP_AT``, prism_pipelines/stop_points.py)."""
    return subprocess.Popen(
        [str(CLI), "sync", "archive", "--partition", KEY],
        env={**own_home(env), **({"PRISM_STOP_AT": stop_at} if stop_at else {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sync(env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), "sync", "archive", "--partition", KEY],
        env=own_home(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until_stopped(process: subprocess.Popen) -> None:
    """Until the process has stopped itself at its stop point (state T in /proc)."""
    deadline = time.monotonic() + 120
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sync never reached its stop point"
        time.sleep(0.01)


def delivered_ids(store) -> Counter:
    """Request ids in the hour's data files, counted (each must be 1)."""
    ids: Counter = Counter()
    for key in store.object_keys():
        if key.rsplit("/", 1)[-1].startswith("batch_"):
            for line in gzip.decompress(store.read(key)).splitlines():
                ids[orjson.loads(line)["request_id"]] += 1
    return ids


#: where the stalled run stops, and what it says when it wakes to find the partition taken over
STALLS = {
    # its file written, its batch not yet opened: the ledger refuses to open it
    "open_batch": "was taken over by another run after this run's lease ran out",
    # its batch opened, its file not yet published: the destination refuses the write
    "publish_file": "published by another run meanwhile",
    # inside the ledger transaction that opens its batch, the lease's row locked until it
    # commits: the state database ends that transaction once it is idle for the lease's length,
    # so the run that takes over is not left waiting on the lock (ledger/state.py)
    "lease_renewed": "was taken over by another run after this run's lease ran out",
}


@pytest.mark.parametrize("stop_at", STALLS)
def test_a_stalled_sync_cannot_replace_what_the_run_that_took_over_delivered(
    store, env, gateway: GatewaySource, pg_url, stop_at
):
    gateway.insert_rows([gateway_rows(HOUR_UNDER_TEST, FIRST_ROWS)])
    stalled = start_sync(env, stop_at)
    try:
        wait_until_stopped(stalled)
        gateway.insert_rows([gateway_rows(HOUR_UNDER_TEST, LATER_ROWS, start=FIRST_ROWS)])
        time.sleep(LEASE_SECONDS + 1)  # the stalled run's lease runs out

        takeover = sync(env, timeout=120)  # not left waiting on anything the stalled run holds
        assert takeover.returncode == 0, takeover.stderr
        assert f"{FIRST_ROWS + LATER_ROWS:,} records" in takeover.stdout
    finally:
        stalled.send_signal(signal.SIGCONT)
    _, stalled_err = stalled.communicate(timeout=300)

    assert stalled.returncode != 0
    assert STALLS[stop_at] in stalled_err
    assert "Traceback" not in stalled_err
    ids = delivered_ids(store)
    assert len(ids) == FIRST_ROWS + LATER_ROWS and set(ids.values()) == {1}
    ledger = Ledger(pg_url)
    state = ledger.partition_state("archive", HOUR_UNDER_TEST)
    assert state.delivered == sum(ids.values())
    assert state.cursor == gateway_max_id(gateway)
    again = sync(env)
    assert again.returncode == 0, again.stderr
    assert delivered_ids(store) == ids


def gateway_max_id(gateway: GatewaySource) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(text("SELECT max(id) FROM prism_request_logs")).scalar_one()


@pytest.mark.parametrize(
    "store", ["local", "s3"], indirect=True
)  # Azure's uncommitted blocks and GCS's resumable sessions expire by themselves
def test_a_sync_killed_mid_batch_leaves_nothing_behind_after_the_next_sync(
    store, env, gateway: GatewaySource, pg_url
):
    gateway.insert_rows([gateway_rows(HOUR_UNDER_TEST, FIRST_ROWS)])
    leftover_upload = None
    if isinstance(store, S3Store):
        # What a run killed during a multipart upload leaves (moto is too quick to catch one).
        folder = f"logs/{HOUR_UNDER_TEST:%Y/%m/%d}/hour={HOUR_UNDER_TEST:%H}"
        leftover_upload = store.client.create_multipart_upload(
            Bucket=store.bucket, Key=f"{folder}/batch_000000000000.jsonl.gz"
        )["UploadId"]
    killed = start_sync(env, "open_batch")  # its file written, not yet published
    wait_until_stopped(killed)
    if isinstance(store, LocalStore):
        assert [k for k in store.object_keys() if k.endswith(".tmp")], store.object_keys()
    killed.kill()
    killed.communicate()
    time.sleep(LEASE_SECONDS + 1)  # the killed run's lease and temporary files grow stale

    clean = sync(env)

    assert clean.returncode == 0, clean.stderr
    ids = delivered_ids(store)
    assert len(ids) == FIRST_ROWS and set(ids.values()) == {1}
    assert Ledger(pg_url).partition_state("archive", HOUR_UNDER_TEST).delivered == FIRST_ROWS
    assert [k for k in store.object_keys() if k.endswith(".tmp")] == []
    if leftover_upload is not None:
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_lease_expiry_follows_the_state_database_clock_not_the_hosts(pg_url, monkeypatch, gateway):
    """A host whose clock runs two hours fast must not take over a live lease; a lease that ran
    out by the database's clock is free, whatever the host's clock says. The host's clock is
    this process's own, moved by time-machine for every reader of it (``datetime.now``,
    ``time.time``), so whichever clock the lease code might read, the test moves it."""
    monkeypatch.setenv("PRISM_LEASE_SECONDS", "3600")  # no renewal while the test runs
    ledger = Ledger(pg_url)
    with ledger.lease("archive", HOUR_UNDER_TEST, "the first run"):
        with (
            time_machine.travel(utcnow() + timedelta(hours=2), tick=True),
            pytest.raises(PartitionBusy),
            ledger.lease("archive", HOUR_UNDER_TEST, "a fast host"),
        ):
            pass
        with ledger.engine.begin() as conn:
            conn.execute(text("UPDATE prism_leases SET expires_at = now() - interval '1 second'"))
        with (
            time_machine.travel(utcnow() - timedelta(hours=2), tick=True),
            ledger.lease("archive", HOUR_UNDER_TEST, "a slow host"),
        ):
            pass
