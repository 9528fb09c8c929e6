"""Status as the spec names it (Active, Syncing, Paused, Error), the status check in the UI, and
the ``status`` / ``history`` commands, through Dagster on the PostgreSQL gateway."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
from click.testing import CliRunner

from prism_pipelines.cli import main
from prism_pipelines.dagster_defs import checks
from prism_pipelines.dagster_defs.status import ACTIVE, ERROR, PAUSED, SYNCING, integration_status
from prism_pipelines.hours import floor_hour, utcnow
from prism_pipelines.sinks.storage.local import LocalSink
from prism_pipelines.source import GatewaySource
from prism_pipelines_tests.factories import gateway_rows

# Status reads the look-back window behind "now" (pending rows, lag): the hour under test is
# taken from the clock, three closed hours back, so the test means the same on every date.
# The partitions start at a fixed past day (test_checks and test_notifications use its hours).
SINCE = "2026-11-22T00:00:00Z"
H = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
KEY = H.strftime("%Y-%m-%d-%H:00")


def local(path: Path, name: str = "archive", **settings) -> dict:
    return {
        "name": name,
        "type": "local",
        "path": str(path),
        "history": {"since": SINCE},
        **settings,
    }


def status_of(prism, gateway, name: str = "archive"):
    return integration_status(
        prism.config.get(name),
        instance=prism.instance,
        ledger=prism.ledger,
        source=gateway,
    )


def test_rows_of_the_current_hour_are_pending_on_sqlite_as_on_postgresql(prism, gateway, tmp_path):
    """SQLite's window once ended at the current hour's start, PostgreSQL's at now."""
    sqlite = GatewaySource(f"sqlite:///{tmp_path}/gateway.db")
    sqlite.create_table()
    this_hour = floor_hour(utcnow())
    prism.configure(local(tmp_path / "bucket"))
    for source in (gateway, sqlite):
        source.insert_rows([gateway_rows(this_hour, 1) + gateway_rows(H, 2)])
        assert status_of(prism, source).pending_rows == 3, source.engine.dialect.name


def cli(prism, *args: str):
    """``prism-pipelines ARGS`` on the test's Dagster instance and integrations file."""
    result = CliRunner().invoke(
        main, list(args), env={"DAGSTER_HOME": str(prism.instance.root_directory)}
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_refused_write_puts_the_integration_in_error_until_a_sync_succeeds(
    prism, gateway, tmp_path
):
    (tmp_path / "a_file").write_text("not a folder")
    gateway.insert_rows([gateway_rows(H, 40)])
    prism.configure(local(tmp_path / "a_file" / "bucket"))

    failed = prism.sync("archive", KEY, raise_on_error=False)

    assert not failed.success
    status = status_of(prism, gateway)
    assert status.status == ERROR
    assert "integration 'archive'" in status.error and "Not a directory" in status.error
    assert status.error_partition == KEY
    assert datetime.now(UTC) - status.since < timedelta(minutes=1)
    assert status.last_success_at is None and status.pending_rows == 40
    evaluation, run_id = checks.latest_evaluation(prism.instance, "archive", checks.STATUS)
    assert not evaluation.passed and run_id == failed.result.run_id
    assert "Not a directory" in evaluation.description
    table = cli(prism, "status")
    assert "archive" in table and "Error" in table and "Not a directory" in table

    prism.configure(local(tmp_path / "bucket"))  # the fix: a folder that can be written
    fixed = prism.sync("archive", KEY)

    status = status_of(prism, gateway)
    assert status.status == ACTIVE and status.error is None
    assert status.delivered_today == 40 and status.pending_rows == 0
    assert status.since >= status.last_success_at - timedelta(seconds=5)
    assert status.lag_seconds > 0  # the newest record delivered is from hour H
    evaluation, run_id = checks.latest_evaluation(prism.instance, "archive", checks.STATUS)
    assert evaluation.passed and run_id == fixed.result.run_id
    table = cli(prism, "status", "archive")
    assert "Active" in table and "Not a directory" not in table

    # late rows of the delivered hour, and an hour not synced yet: pending until delivered
    gateway.insert_rows([gateway_rows(H, 7, start=100)])
    gateway.insert_rows([gateway_rows(H - timedelta(hours=1), 5, start=200)])
    assert status_of(prism, gateway).pending_rows == 12

    history = cli(prism, "history", "archive")
    lines = history.splitlines()
    assert lines[1].split()[3] == "SUCCESS" and " 40 " in lines[1]
    assert lines[2].split()[3] == "FAILURE"
    assert "Not a directory" in history


def test_s3_without_its_credentials_is_in_error_until_they_are_set(
    prism, gateway, moto_server, monkeypatch
):
    monkeypatch.delenv("PRISM_OPS_S3_KEY", raising=False)
    monkeypatch.delenv("PRISM_OPS_S3_SECRET", raising=False)
    moto_server.client("s3").create_bucket(Bucket="prism-ops-status")
    gateway.insert_rows([gateway_rows(H, 25)])
    prism.configure(
        {
            "name": "lake",
            "type": "s3",
            "bucket": "prism-ops-status",
            "region": "us-east-1",
            "endpoint_url": moto_server.endpoint_url,
            "access_key_id": {"env": "PRISM_OPS_S3_KEY"},
            "secret_access_key": {"env": "PRISM_OPS_S3_SECRET"},
            "history": {"since": SINCE},
        }
    )

    assert not prism.sync("lake", KEY, raise_on_error=False).success

    status = status_of(prism, gateway, "lake")
    assert status.status == ERROR
    assert "PRISM_OPS_S3_KEY" in status.error and "not set" in status.error

    monkeypatch.setenv("PRISM_OPS_S3_KEY", "testing")
    monkeypatch.setenv("PRISM_OPS_S3_SECRET", "testing")
    assert prism.sync("lake", KEY).metadata["records"] == 25

    assert status_of(prism, gateway, "lake").status == ACTIVE
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert s3.list_objects_v2(Bucket="prism-ops-status")["KeyCount"] == 1


def test_integration_is_syncing_while_its_run_is_in_progress(prism, gateway, tmp_path, monkeypatch):
    gateway.insert_rows([gateway_rows(H, 30)])
    prism.configure(local(tmp_path / "bucket"))
    entered, release, real_put = threading.Event(), threading.Event(), LocalSink.put

    def slow_put(self, *args, **kwargs):  # a slow destination, held until the test looked
        entered.set()
        assert release.wait(60)
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(LocalSink, "put", slow_put)
    runs = []
    worker = threading.Thread(target=lambda: runs.append(prism.sync("archive", KEY)))
    worker.start()
    try:
        assert entered.wait(60)
        status = status_of(prism, gateway)
        assert status.status == SYNCING and status.run_id
        assert "Syncing" in cli(prism, "status")
    finally:
        release.set()
        worker.join(60)

    assert runs[0].metadata["records"] == 30
    assert status_of(prism, gateway).status == ACTIVE


def test_pause_and_resume_work_on_a_fresh_instance_without_a_daemon(prism, gateway, tmp_path):
    """No daemon or UI ever recorded the schedule: pause and resume still work, and each resume
    starts a fresh "Active since"."""
    prism.configure(local(tmp_path / "bucket"))
    assert prism.instance.all_instigator_state() == []

    assert "Paused" in cli(prism, "pause", "archive")
    assert "Paused" in cli(prism, "status", "archive")
    stopped = {s.name: s.is_running for s in prism.instance.all_instigator_state()}
    assert stopped == dict.fromkeys(
        ["archive_schedule", "archive_late_data", "archive_history"], False
    )

    before = datetime.now(UTC)
    assert "resumed" in cli(prism, "resume", "archive")
    assert status_of(prism, gateway).status == ACTIVE
    assert status_of(prism, gateway).since >= before - timedelta(seconds=1)
    cli(prism, "pause", "archive")
    assert status_of(prism, gateway).status == PAUSED

    before = datetime.now(UTC)  # the second resume is the one a stale "since" would show
    cli(prism, "resume", "archive")
    status = status_of(prism, gateway)
    assert status.status == ACTIVE and status.since >= before - timedelta(seconds=1)


def test_a_pause_that_lands_inside_a_daemon_tick_is_not_undone(prism, gateway, tmp_path):
    """Dagster's daemon reads a sensor's state at a tick and writes it back with the tick's data
    milliseconds later: a stop between the two is overwritten with "running" (a CI run saw the
    late-data sensor keep running after ``pause``). Here that tick is held open until the stop
    has landed, then written back, as the daemon would: ``pause`` still leaves all three
    stopped."""
    prism.configure(local(tmp_path / "bucket"))
    cli(prism, "pause", "archive")
    cli(prism, "resume", "archive")
    instance = prism.instance
    running = {s.name: s for s in instance.all_instigator_state()}
    ticked = running["archive_late_data"]
    assert ticked.is_running

    def daemon_tick():
        while any(s.is_running for s in instance.all_instigator_state() if s.name == ticked.name):
            time.sleep(0.02)
        instance.update_instigator_state(ticked)  # the state the tick read, written back

    tick = threading.Thread(target=daemon_tick)
    tick.start()
    assert "Paused" in cli(prism, "pause", "archive")
    tick.join(5)
    assert not tick.is_alive()
    states = {s.name: s.is_running for s in instance.all_instigator_state()}
    assert states == dict.fromkeys(list(running), False)
    assert status_of(prism, gateway).status == PAUSED


def test_rejects_says_how_many_there_are_and_how_to_see_the_rest(prism, gateway, tmp_path):
    prism.configure(local(tmp_path / "bucket"))
    gateway.insert_rows([gateway_rows(H, 3), gateway_rows(H, 12, start=3, guardrail_results="{")])
    assert prism.sync("archive", KEY).metadata["rejects"] == 12

    def rejects(*args: str):
        result = CliRunner().invoke(
            main,
            ["rejects", "archive", *args],
            env={"DAGSTER_HOME": str(prism.instance.root_directory)},
        )
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines(), result.stderr

    listed, note = rejects("--limit", "5")
    assert len(listed) == 5 and all("malformed row" in line for line in listed)
    assert "showing 5 of 12 rejects" in note and "--limit 12 or --all" in note
    assert [len(rejects(*args)[0]) for args in ((), ("--all",), ("--limit", "12"))] == [12] * 3
    assert rejects("--all")[1] == rejects()[1] == ""
