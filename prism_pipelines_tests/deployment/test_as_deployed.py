"""prism-pipelines as deployed: gRPC code server, daemon and webserver on PostgreSQL, 1-minute
schedules and live traffic (conftest.py). The tests share the processes and run in file order,
like a day of operating it: the pause at the start spans the tests until the resume.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow
from prism_pipelines.ledger import Ledger, PartitionBusy
from prism_pipelines_tests.deployment.conftest import (
    HISTORY_HOURS,
    LOCATION,
    SCHEDULED_RUN_SECONDS,
    Deployment,
    past_hours,
)
from prism_pipelines_tests.services import wait_for

SCHEDULED = SCHEDULED_RUN_SECONDS
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""

BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status partitionNames error { message }
                               runs { runId status allPools tags { key value } } }
    ... on PythonError { message }
  }
}"""


RUN_LOG = """
query ($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { ... on MessageEvent { message } } }
  }
}"""

INSTIGATOR_STATES = """
query ($schedule: ScheduleSelector!, $lateData: SensorSelector!, $history: SensorSelector!) {
  scheduleOrError(scheduleSelector: $schedule) { ... on Schedule { scheduleState { status } } }
  lateData: sensorOrError(sensorSelector: $lateData) { ... on Sensor { sensorState { status } } }
  history: sensorOrError(sensorSelector: $history) { ... on Sensor { sensorState { status } } }
}"""


def instigator_states(deployment: Deployment, name: str) -> list[str]:
    """The status of the integration's schedule and its two sensors, as the UI shows them."""
    where = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
    data = deployment.graphql(
        INSTIGATOR_STATES,
        schedule={**where, "scheduleName": f"{name}_schedule"},
        lateData={**where, "sensorName": f"{name}_late_data"},
        history={**where, "sensorName": f"{name}_history"},
    )
    return [
        data["scheduleOrError"]["scheduleState"]["status"],
        data["lateData"]["sensorState"]["status"],
        data["history"]["sensorState"]["status"],
    ]


def run_log(deployment: Deployment, run_id: str) -> str:
    events = deployment.graphql(RUN_LOG, runId=run_id)["logsForRun"]["events"]
    return "\n".join(event.get("message") or "" for event in events)


def missing_or_doubled(deployment: Deployment, name: str, expected: set[str]) -> dict:
    """What is wrong with ``name``'s archive for ``expected``: rows not delivered, rows
    delivered more than once; empty when each expected row is there exactly once."""
    delivered = deployment.delivered(name)
    return {
        key: value
        for key, value in {
            "missing": sorted(expected - set(delivered))[:5],
            "missing_count": len(expected - set(delivered)),
            "doubled": sorted(i for i, n in delivered.items() if n > 1)[:5],
        }.items()
        if value
    }


def test_pause_from_the_command_line(deployment):
    result = deployment.cli("pause", "pausable")
    assert result.returncode == 0, result.stderr
    deployment.paused_at["pausable"] = time.time()
    assert f"code location {LOCATION}" in result.stdout, result.stdout
    # The state the daemon and the UI read, in the deployment's own code location.
    assert instigator_states(deployment, "pausable") == ["STOPPED"] * 3
    # Syncing only while runs queued before the pause finish
    assert deployment.status("pausable")["status"] in ("Paused", "Syncing")


def test_refused_destination_puts_the_integration_in_error(deployment):
    """The archive's folder is a file: the next scheduled sync fails, and `status` says why."""
    wait_for(
        "a failed sync of 'broken'",
        lambda: [r for r in deployment.runs("broken") if r["status"] == "FAILURE"],
        SCHEDULED,
    )
    status = deployment.status("broken")
    assert status["status"] in ("Error", "Syncing"), status  # Syncing: the next try is running
    assert "not_a_folder" in status["error"], status
    assert "Traceback" not in status["error"], status
    # The operator fixes the destination; test_fixed_destination_recovers checks what follows.
    folder = Path(deployment.integrations["broken"]["path"])
    folder.unlink()
    folder.mkdir()
    deployment.fixed_at = time.time()


def test_two_runs_of_one_integration_at_once_deliver_each_row_once(deployment):
    """Runs of one integration's different hours, launched together, each deliver their hour."""
    hours = [deployment.hour - HOUR, deployment.hour - 2 * HOUR]
    run_ids = [
        deployment.client.submit_job_execution(
            "manual_sync",
            repository_location_name=LOCATION,
            tags={"dagster/partition": partition_key(hour)},
        )
        for hour in hours
    ]

    first, second = wait_for(
        "both runs finished",
        lambda: [r for r in deployment.runs("manual") if r["runId"] in run_ids],
        SCHEDULED,
        until=lambda runs: all(r["status"] in FINISHED for r in runs),
    )
    # Whether they overlap in time is the run queue's call (a run of 40 rows takes about a
    # second, the daemon launches one run at a time): what must hold is that both deliver.
    assert [first["status"], second["status"]] == ["SUCCESS", "SUCCESS"], (first, second)
    expected = deployment.source_ids(min(hours), max(hours) + HOUR)
    assert not missing_or_doubled(deployment, "manual", expected)


def test_backfill_launched_over_graphql_delivers_old_hours(deployment):
    start, end = past_hours(deployment)
    keys = [partition_key(start + n * HOUR) for n in range(HISTORY_HOURS)]
    launched = deployment.graphql(
        LAUNCH_BACKFILL,
        params={"assetSelection": [{"path": ["prism", "manual"]}], "partitionNames": keys},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    backfill = wait_for(
        f"backfill {backfill_id}",
        lambda: deployment.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"],
        SCHEDULED,
        until=lambda found: found.get("status", "REQUESTED") != "REQUESTED",
    )
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    deployment.backfilled = deployment.source_ids(start, end)
    assert not missing_or_doubled(deployment, "manual", deployment.backfilled)
    # Its runs are Dagster's asset job, without our tags, and still in the integration's pool:
    # the run queue held them to the pool's limit, which deploy/dagster.yaml's default set.
    assert all(run["allPools"] == ["prism_manual"] for run in backfill["runs"]), backfill["runs"]
    pool = deployment.graphql(
        'query { instance { concurrencyLimit(concurrencyKey: "prism_manual") { slotCount } } }'
    )["instance"]["concurrencyLimit"]
    assert pool["slotCount"] == 3, pool
    # A backfill from the UI is in the integration's sync history like any other sync.
    run_ids = {run["runId"] for run in backfill["runs"]}
    history = deployment.cli("history", "manual", "--json")
    assert history.returncode == 0, history.stderr
    listed = {json.loads(line)["run_id"] for line in history.stdout.splitlines() if line}
    assert run_ids <= listed, (run_ids, listed)


def test_schedule_delivers_new_rows(deployment):
    new = deployment.traffic.insert(utcnow(), 3)
    wait_for(
        "the new rows in the archive",
        lambda: set(new) - set(deployment.delivered("live")),
        SCHEDULED,
        until=lambda missing: not missing,
    )
    scheduled = [
        run
        for run in deployment.runs("live")
        if run["tags"].get("dagster/schedule_name") == "live_schedule"
    ]
    assert any(run["status"] == "SUCCESS" for run in scheduled), scheduled


@contextmanager
def holding(ledger: Ledger, name: str, hours: list, holder: str):
    """The hours' leases, each taken as soon as the deployment's own runs leave it (its 1-minute
    schedule may be delivering the hour right now)."""
    with ExitStack() as stack:
        for hour in hours:
            deadline = time.monotonic() + SCHEDULED
            while True:
                try:
                    stack.enter_context(ledger.lease(name, hour, holder))
                    break
                except PartitionBusy:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        yield


def test_overlapping_runs_of_one_hour_leave_the_integration_active_without_a_notification(
    deployment,
):
    """Another run (here the test's own sync, holding the hours' leases) delivers the current
    hour and a closed hour with late rows while the schedule's run and the late-data sensor's run
    reach them: they skip them and succeed; no Error, no webhook message; once the hours are free
    every row is delivered once. The next hour is held too: should the hour end while the test
    waits, the schedule's runs reach that one, and find it busy as well."""
    name, hour = "overlap", floor_hour(utcnow())
    closed = hour - HOUR
    ledger = Ledger(deployment.env["PRISM_STATE_URL"])
    holder = "a CLI sync on another host"
    with holding(ledger, name, [hour, closed, hour + HOUR], holder):
        held_at = time.time()
        late = deployment.traffic.insert(closed + timedelta(minutes=30), 5)

        def skipped_runs():
            return {
                run["tags"].get("prism/trigger") or "schedule": run
                for run in deployment.runs(name)
                if run["creationTime"] > held_at
                and run["status"] in FINISHED
                and "skipped" in run_log(deployment, run["runId"])
            }

        runs = wait_for(
            "a scheduled run and a late-data run that found their hour busy",
            skipped_runs,
            SCHEDULED,
            until=lambda found: {"schedule", "late_data"} <= set(found),
        )
        for trigger in ("schedule", "late_data"):
            run = runs[trigger]
            assert run["status"] == "SUCCESS", run
            assert holder in run_log(deployment, run["runId"])
        status = deployment.status(name)
        assert status["status"] in ("Active", "Syncing") and not status["error"], status
    failed = [r for r in deployment.runs(name) if r["status"] == "FAILURE"]
    assert not failed, failed
    wait_for(
        "the held hours delivered once they are free",
        lambda: missing_or_doubled(deployment, name, deployment.source_ids(closed, hour)),
        SCHEDULED,
        until=lambda problems: not problems,
    )
    assert set(late) <= set(deployment.delivered(name))
    assert not [m for m in deployment.webhook.messages if f"*{name}*" in m["text"]]
    ledger.engine.dispose()


def test_late_rows_in_a_closed_hour_are_delivered_by_the_sensor(deployment):
    """Rows that arrive in an hour past its grace period, after the hour was delivered."""
    hour = deployment.hour - 2 * HOUR
    wait_for(
        f"{partition_key(hour)} delivered",
        lambda: missing_or_doubled(deployment, "live", deployment.source_ids(hour, hour + HOUR)),
        SCHEDULED,
        until=lambda problems: not problems,
    )
    inserted_at = time.time()
    late = deployment.traffic.insert(hour + timedelta(minutes=30), 5)
    wait_for(
        "the late rows in the archive",
        lambda: set(late) - set(deployment.delivered("live")),
        SCHEDULED,
        until=lambda missing: not missing,
    )
    late_runs = [
        run
        for run in deployment.runs("live")
        if run["tags"].get("prism/trigger") == "late_data" and run["creationTime"] >= inserted_at
    ]
    assert late_runs, "no late-data run delivered them"
    assert not missing_or_doubled(deployment, "live", deployment.source_ids(hour, hour + HOUR))


def test_fixed_destination_recovers_without_a_backfill(deployment):
    wait_for(
        "a successful sync of 'broken' since the fix",
        lambda: [
            r
            for r in deployment.runs("broken")
            if r["status"] == "SUCCESS" and r["creationTime"] > deployment.fixed_at
        ],
        SCHEDULED,
    )
    status = deployment.status("broken")
    assert status["status"] in ("Active", "Syncing") and not status["error"], status
    # Every row of the hours it failed on is there once: the schedule and the late-data sensor
    # caught up, no one launched a backfill.
    expected = deployment.source_ids(deployment.hour) - deployment.source_ids(
        datetime.fromtimestamp(deployment.fixed_at, UTC)
    )
    wait_for(
        "every row of its hours, once",
        lambda: missing_or_doubled(deployment, "broken", expected),
        SCHEDULED,
        until=lambda problems: not problems,
    )
    assert not [r for r in deployment.runs("broken") if "dagster/backfill" in r["tags"]]


def test_history_moved_earlier_is_backfilled_without_a_manual_step(deployment):
    start, end = past_hours(deployment)
    deployment.integrations["grown"]["history"] = {"since": start.isoformat()}
    deployment.write_integrations()
    reloaded = deployment.client.reload_repository_location(LOCATION)
    assert reloaded.status.value == "SUCCESS", reloaded.message
    wait_for(
        f"'grown' history from {start:%Y-%m-%d %H:%M} delivered",
        lambda: missing_or_doubled(deployment, "grown", deployment.source_ids(start, end)),
        240,
        until=lambda problems: not problems,
    )


def test_resume_catches_up_what_accrued_while_paused(deployment):
    paused_at = deployment.paused_at.get("pausable")
    if paused_at is None:
        pytest.fail("'pausable' was not paused (test_pause_from_the_command_line failed)")
    # At least one tick of its 1-minute schedule falls in the pause.
    wait_for("a minute of pause", lambda: time.time() - paused_at > 75, 90)
    started = [r for r in deployment.runs("pausable") if r["creationTime"] > paused_at + 2]
    assert not started, f"runs started while paused: {started}"
    resumed_at = utcnow()
    result = deployment.cli("resume", "pausable")
    assert result.returncode == 0, result.stderr
    accrued = deployment.source_ids(deployment.hour) - deployment.source_ids(resumed_at)
    wait_for(
        "what accrued while paused, delivered once",
        lambda: missing_or_doubled(deployment, "pausable", accrued),
        SCHEDULED,
        until=lambda problems: not problems,
    )
    assert instigator_states(deployment, "pausable") == ["RUNNING"] * 3
    status = deployment.status("pausable")
    assert status["status"] in ("Active", "Syncing"), status
    if status["status"] == "Active":  # since the resume, not since the tier started
        assert datetime.fromisoformat(status["since"]) >= resumed_at - timedelta(seconds=1)


def test_every_source_row_lands_exactly_once(deployment):
    deployment.traffic.stop()
    assert deployment.traffic.error is None, deployment.traffic.error
    start, now = past_hours(deployment)[0], deployment.hour
    expected = {
        "live": deployment.source_ids(start),
        "pausable": deployment.source_ids(now),
        "broken": deployment.source_ids(now),
        # its schedule is every 5 minutes: its history is what it is here for
        "grown": deployment.source_ids(start, now),
    }

    def wrong():
        return {
            name: problem
            for name, ids in expected.items()
            if (problem := missing_or_doubled(deployment, name, ids))
        }

    wait_for("every integration complete", wrong, SCHEDULED, until=lambda problems: not problems)
    # 'manual' is paused: exactly what its backfill delivered (not the late rows inserted since),
    # nothing twice.
    assert not missing_or_doubled(deployment, "manual", deployment.backfilled)
    assert set(deployment.delivered("manual")) == deployment.backfilled


def test_no_schedule_or_sensor_tick_failed(deployment):
    ticks = deployment.ticks()
    failed = [tick for tick in ticks if tick["status"] == "FAILURE"]
    assert not failed, "\n".join(
        f"{tick['name']} at {tick['timestamp']:.0f}: {tick['error']['message']}" for tick in failed
    )
    ticked = {tick["name"] for tick in ticks}
    assert {"live_schedule", "live_late_data"} <= ticked, ticked
