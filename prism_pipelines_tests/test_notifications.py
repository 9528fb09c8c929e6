"""The run-failure sensor: every failed sync in its log, and one webhook message per Error, posted
to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from dagster import build_sensor_context
from sqlalchemy import update

from prism_pipelines.cli import main
from prism_pipelines.dagster_defs import checks
from prism_pipelines.dagster_defs.status import ACTIVE, ERROR
from prism_pipelines.hours import partition_key
from prism_pipelines.notifications import notified
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.test_status import local as local_from_now
from prism_pipelines_tests.test_status import status_of

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"


def local(path, name: str = "archive", **settings) -> dict:
    """A local integration whose partitions reach back to this file's fixed hours."""
    return local_from_now(path, name, **{"history": {"since": "2026-11-21T00:00:00Z"}, **settings})


TOKEN = "T000/B000/s3cr3t-webhook-token"


class Receiver:
    """An incoming-webhook endpoint: keeps what it is sent, answers ``status``."""

    def __init__(self):
        self.messages: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.messages.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv("PRISM_TEST_WEBHOOK", receiver.url)
    yield receiver
    receiver.close()


class FailureSensor:
    """``prism_sync_failures`` as the daemon runs it: tick after tick, with its cursor. Its log
    (the tick's log in the UI) goes to stderr here: ``log`` keeps it."""

    def __init__(self, prism, capfd):
        self.prism = prism
        self.capfd = capfd
        self.cursor = None
        self.log = ""
        self.tick()  # the first tick only marks where the sensor starts reading runs

    def tick(self):
        repository = self.prism.defs.get_repository_def()
        context = build_sensor_context(
            instance=self.prism.instance, cursor=self.cursor, repository_def=repository
        )
        self.capfd.readouterr()
        result = repository.get_sensor_def("prism_sync_failures").evaluate_tick(context)
        self.log += self.capfd.readouterr().err
        self.cursor = result.cursor
        return result


def configure(prism, path, **settings):
    return prism.configure(
        local(path, **settings), notifications={"webhook_url": {"env": "PRISM_TEST_WEBHOOK"}}
    )


def test_failed_sync_posts_once_per_error_and_once_more_after_an_hour(
    prism, gateway, tmp_path, receiver, capfd
):
    (tmp_path / "a_file").write_text("not a folder")
    gateway.insert_rows([gateway_rows(H, 10), gateway_rows(H + timedelta(hours=1), 10)])
    configure(prism, tmp_path / "a_file" / "bucket")
    sensor = FailureSensor(prism, capfd)

    first = prism.sync("archive", KEY, raise_on_error=False)
    sensor.tick()

    assert len(receiver.messages) == 1
    text = receiver.messages[0]["text"]
    assert "archive" in text and "(local)" in text and "*Error*" in text
    assert KEY in text and "Not a directory" in text and first.result.run_id in text
    assert f"sync of {KEY} failed" in sensor.log  # the sensor's own log, for the UI
    assert TOKEN not in sensor.log

    # Failing again, on another hour, within the hour: the same Error, not posted again.
    prism.sync("archive", "2026-11-22-15:00", raise_on_error=False)
    sensor.tick()
    assert len(receiver.messages) == 1
    assert "already notified" in sensor.log

    # Still in Error more than an hour later: one reminder, then quiet.
    with prism.ledger.engine.begin() as conn:
        conn.execute(update(notified).values(error_since=datetime.now(UTC) - timedelta(minutes=61)))
    for _ in range(2):
        prism.sync("archive", KEY, raise_on_error=False)
        sensor.tick()
    assert len(receiver.messages) == 2
    assert "still in *Error*" in receiver.messages[1]["text"]
    assert "3 failed syncs" in receiver.messages[1]["text"]

    # Fixed, then broken again: a new Error, a new message.
    configure(prism, tmp_path / "bucket")
    prism.sync("archive", KEY)
    sensor.tick()
    assert len(receiver.messages) == 2  # a successful run is not a failure
    (tmp_path / "bucket").rename(tmp_path / "elsewhere")
    (tmp_path / "bucket").write_text("a file where the folder was")
    prism.sync("archive", "2026-11-22-15:00", raise_on_error=False)
    sensor.tick()
    assert len(receiver.messages) == 3
    assert "2026-11-22-15:00" in receiver.messages[2]["text"]


def test_webhook_failure_is_logged_without_the_url_and_retried_on_the_next_failure(
    prism, gateway, tmp_path, receiver, capfd
):
    (tmp_path / "a_file").write_text("not a folder")
    gateway.insert_rows([gateway_rows(H, 10)])
    configure(prism, tmp_path / "a_file" / "bucket")
    sensor = FailureSensor(prism, capfd)
    receiver.status = 500

    prism.sync("archive", KEY, raise_on_error=False)
    sensor.tick()

    assert "notification not sent" in sensor.log and "HTTP 500" in sensor.log
    assert TOKEN not in sensor.log and receiver.url not in sensor.log
    receiver.status = 200
    prism.sync("archive", KEY, raise_on_error=False)
    sensor.tick()
    assert len(receiver.messages) == 2  # the refused one, then the retry that got through


def test_run_that_dies_before_its_asset_reports_still_turns_the_status_check_red(
    prism, gateway, tmp_path, monkeypatch, capfd
):
    """e.g. the sink cannot even be built: the failure sensor records the status check."""
    import prism_pipelines.dagster_defs.assets as assets_module

    gateway.insert_rows([gateway_rows(H, 10)])
    prism.configure(local(tmp_path / "bucket"))
    sensor = FailureSensor(prism, capfd)

    def no_sink(integration):
        raise RuntimeError("the sink could not start")

    monkeypatch.setattr(assets_module, "build_sink", no_sink)
    failed = prism.sync("archive", KEY, raise_on_error=False)
    sensor.tick()

    evaluation, run_id = checks.latest_evaluation(prism.instance, "archive", checks.STATUS)
    assert not evaluation.passed and run_id == ""
    assert "the sink could not start" in evaluation.description
    assert evaluation.metadata["run_id"].value == failed.result.run_id
    status = status_of(prism, gateway)
    assert status.status == ERROR and "RuntimeError: the sink could not start" in status.error


def test_hour_another_run_is_delivering_is_skipped_without_error_or_notification(
    prism, gateway, tmp_path, receiver, capfd
):
    """The normal overlap (the schedule's grace-period run beside the late-data sensor's, a
    backfill beside the schedule): the hour is left to the run that holds it, and nothing says
    Error."""
    before, after = H - timedelta(hours=1), H + timedelta(hours=1)
    gateway.insert_rows([gateway_rows(hour, 10) for hour in (before, H, after)])
    configure(prism, tmp_path / "bucket")
    sensor = FailureSensor(prism, capfd)
    keys = [partition_key(hour) for hour in (before, H, after)]
    with prism.ledger.lease("archive", H, "the schedule's run"):
        runs = prism.backfill("archive", keys)
        cli = CliRunner().invoke(
            main,
            ["sync", "archive", "--partition", KEY],
            env={"DAGSTER_HOME": str(prism.instance.root_directory)},
        )
    sensor.tick()

    run = runs[KEY].result
    assert run.success and cli.exit_code == 0, cli.output
    assert f"{KEY}: skipped: " in cli.output and "the schedule's run" in cli.output
    # The two free hours are delivered and materialized; the busy one is only observed.
    assert {key: r.metadata.get("records") for key, r in runs.items()} == {
        keys[0]: 10,
        KEY: None,
        keys[2]: 10,
    }
    (observed,) = run.get_asset_observation_events()
    assert observed.partition == KEY
    assert observed.asset_observation_data.asset_observation.metadata["skipped"].value == "busy"
    logged = [e.message for e in prism.instance.all_logs(run.run_id) if e.message]
    assert any(f"partition {KEY}: skipped" in m and "the schedule's run" in m for m in logged)
    # No failure: no notification, the status check green, the integration Active.
    assert receiver.messages == [] and "failed" not in sensor.log
    evaluation, _ = checks.latest_evaluation(prism.instance, "archive", checks.STATUS)
    assert evaluation.passed
    assert status_of(prism, gateway).status == ACTIVE
    # Nothing lost: once the holder is done, the hour is delivered.
    assert prism.sync("archive", KEY).metadata["records"] == 10
