"""The late-data sensor and pause / resume, through Dagster: hours are placed relative to now,
as the sensor and the schedule see them. Every test starts at the same moment of the clock
(``NOW``, half past an hour, travelled to with the clock running), so which hour is the
current one does not depend on when in the suite, or how close to an hour's end, it runs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import time_machine
import yaml
from dagster import DagsterRunStatus, build_schedule_context, build_sensor_context
from sqlalchemy import text

from prism_pipelines.dagster_defs.status import ACTIVE, PAUSED
from prism_pipelines.hours import floor_hour, utcnow
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.test_status import cli, status_of

# Never after the real time (the database's clock decides which rows are settled, and rows
# stamped a minute before NOW must be), and half an hour before the next hour begins: the last
# half past an hour (imported at 14:27, NOW is 13:30, not 14:30, three minutes ahead).
NOW = floor_hour(datetime.now(UTC) - timedelta(minutes=30)) + timedelta(minutes=30)
THIS_HOUR = floor_hour(NOW)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=True):
        yield


def hours_ago(n: int) -> datetime:
    return THIS_HOUR - timedelta(hours=n)


def key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def archive(tmp_path: Path, **settings) -> dict:
    return {
        "name": "archive",
        "type": "local",
        "path": str(tmp_path / "bucket"),
        "history": {"since": hours_ago(8).isoformat()},
        **settings,
    }


def tick(prism, cursor: str | None = None, name: str = "archive_late_data"):
    repository = prism.defs.get_repository_def()
    context = build_sensor_context(
        instance=prism.instance, cursor=cursor, repository_def=repository
    )
    return repository.get_sensor_def(name).evaluate_tick(context)


def serve(prism, location: str = "prism_export", name: str = "archive") -> None:
    """What a user's toggles in the UI do: stop the integration's schedule and sensor through
    ``dagster`` (a separate process loading the code location from a workspace whose location
    is not named as in the project's workspace.yaml), so the instance holds their states."""
    workspace = prism.folder / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "prism_pipelines.definitions",
                            "location_name": location,
                        }
                    }
                ]
            }
        )
    )
    dagster = str(Path(sys.executable).parent / "dagster")
    env = {**os.environ, "DAGSTER_HOME": str(prism.instance.root_directory)}
    for kind, instigator in (("schedule", f"{name}_schedule"), ("sensor", f"{name}_late_data")):
        done = subprocess.run(
            [dagster, kind, "stop", instigator, "-w", str(workspace)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def delivered_ids(folder: Path) -> Counter:
    return Counter(
        orjson.loads(line)["request_id"]
        for path in folder.rglob("*.jsonl.gz")
        for line in gzip.open(path).read().splitlines()
    )


def test_late_data_sensor_requests_exactly_the_hours_with_undelivered_rows(
    prism, gateway, tmp_path
):
    prism.configure(archive(tmp_path))
    for n in (6, 5, 4, 3):
        gateway.insert_rows([gateway_rows(hours_ago(n), 20)])
        prism.sync("archive", key(hours_ago(n)))
    late = {
        5: gateway_rows(hours_ago(5), 3, start=20, ingested_at=NOW - timedelta(minutes=1)),
        3: gateway_rows(hours_ago(3), 1, start=20, ingested_at=NOW - timedelta(minutes=1)),
    }
    gateway.insert_rows(late.values())
    gateway.insert_rows([gateway_rows(hours_ago(7), 4)])  # never synced: a failed or missed hour
    # Rows still in the schedule's hands (the current hour) are not the sensor's business.
    gateway.insert_rows([gateway_rows(THIS_HOUR, 2, ingested_at=THIS_HOUR)])

    first = tick(prism)

    requested = sorted(r.partition_key for r in first.run_requests)
    assert requested == [key(hours_ago(7)), key(hours_ago(5)), key(hours_ago(3))]
    assert all(r.tags["prism/trigger"] == "late_data" for r in first.run_requests)
    second = tick(prism, first.cursor)
    assert second.run_requests == [] and "delivered or requested" in second.skip_message

    for partition in requested:
        prism.sync("archive", partition)
    third = tick(prism, second.cursor)
    assert third.run_requests == []
    assert json.loads(third.cursor)["requested"] == {}  # caught up: nothing left to remember
    ids = delivered_ids(tmp_path / "bucket")
    assert set(ids.values()) == {1}
    assert all(row[0] in ids for rows in late.values() for row in rows)

    # The source moves past what was requested: asked again, once.
    gateway.insert_rows(
        [gateway_rows(hours_ago(5), 1, start=30, ingested_at=NOW - timedelta(minutes=1))]
    )
    fourth = tick(prism, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == [key(hours_ago(5))]
    assert tick(prism, fourth.cursor).run_requests == []


def test_hour_still_behind_an_hour_after_its_request_is_requested_again(prism, gateway, tmp_path):
    """Its run failed (or never ran): the sensor asks again, but not on every tick."""
    prism.configure(archive(tmp_path))
    gateway.insert_rows([gateway_rows(hours_ago(4), 5)])
    first = tick(prism)
    assert [r.partition_key for r in first.run_requests] == [key(hours_ago(4))]
    assert tick(prism, first.cursor).run_requests == []

    cursor = json.loads(first.cursor)
    max_id, rows, _ = cursor["requested"][key(hours_ago(4))]
    cursor["requested"][key(hours_ago(4))] = [max_id, rows, (NOW - timedelta(hours=2)).isoformat()]
    again = tick(prism, json.dumps(cursor))
    assert [r.partition_key for r in again.run_requests] == [key(hours_ago(4))]


def test_hour_whose_run_failed_is_requested_again_once_the_destination_is_back(
    prism, gateway, tmp_path
):
    """Not an hour later: as soon as a sync of the integration succeeded after the failure."""
    (tmp_path / "a_file").write_text("not a folder")
    prism.configure(archive(tmp_path, path=str(tmp_path / "a_file" / "bucket")))
    gateway.insert_rows([gateway_rows(hours_ago(4), 5)])
    first = tick(prism)
    assert [r.partition_key for r in first.run_requests] == [key(hours_ago(4))]
    assert not prism.sync("archive", key(hours_ago(4)), raise_on_error=False).success
    still_broken = tick(prism, first.cursor)
    assert still_broken.run_requests == []  # failing again would change nothing

    prism.configure(archive(tmp_path))  # the operator fixed the destination
    gateway.insert_rows([gateway_rows(THIS_HOUR, 2, ingested_at=NOW - timedelta(minutes=1))])
    prism.sync("archive", key(THIS_HOUR))  # the schedule's next run succeeds
    again = tick(prism, still_broken.cursor)
    assert [r.partition_key for r in again.run_requests] == [key(hours_ago(4))]
    prism.sync("archive", key(hours_ago(4)))
    assert tick(prism, again.cursor).run_requests == []


def test_rows_committed_below_the_cursor_are_found_and_delivered(prism, gateway, tmp_path):
    """No new highest id, only more rows than the ledger accounts for."""
    prism.configure(archive(tmp_path))
    rows = gateway_rows(hours_ago(3), 30)
    gateway.insert_rows([rows[:10]])
    with gateway.engine.begin() as conn:  # leave a hole at ids 11..15 for a slow transaction
        conn.execute(text("SELECT setval('prism_request_logs_id_seq', 15)"))
    gateway.insert_rows([rows[10:]])
    prism.sync("archive", key(hours_ago(3)))
    first_look = tick(prism)
    assert first_look.run_requests == []

    slow = gateway_rows(hours_ago(3), 1, start=30)[0]
    with gateway.engine.begin() as conn:
        conn.execute(
            gateway.table.insert().values(
                id=12, **dict(zip(gateway.table.c.keys()[1:], slow, strict=True))
            )
        )
    # Committed below the watermark, slower than the settle delay: not among the rows that
    # arrived since the last tick, so found by the next full look, within the hour.
    quiet = tick(prism, first_look.cursor)
    assert quiet.run_requests == []
    cursor = json.loads(quiet.cursor)
    cursor["full_look_at"] = (NOW - timedelta(minutes=61)).isoformat()
    found = tick(prism, json.dumps(cursor))
    assert [r.partition_key for r in found.run_requests] == [key(hours_ago(3))]
    prism.sync("archive", key(hours_ago(3)))

    assert tick(prism, found.cursor).run_requests == []
    ids = delivered_ids(tmp_path / "bucket")
    assert ids[slow[0]] == 1 and sum(ids.values()) == 31


def test_between_full_looks_new_rows_are_found_in_their_hour_whatever_its_age(
    prism, gateway, tmp_path, monkeypatch
):
    """Between full looks the sensor reads only the rows that arrived since its last tick (a
    primary-key range, not the look-back window): a late row is found in its hour even past the
    look-back, and an hour caught up is not compared again."""
    monkeypatch.setenv("PRISM_LATE_DATA_LOOKBACK_HOURS", "2")
    prism.configure(archive(tmp_path), source={"settle_seconds": 0})
    gateway.insert_rows([gateway_rows(hours_ago(6), 10)])
    prism.sync("archive", key(hours_ago(6)))
    first = tick(prism)  # a full look: the two hours before the grace period, nothing behind
    assert first.run_requests == []

    late = gateway_rows(hours_ago(6), 2, start=10, ingested_at=NOW - timedelta(minutes=1))
    gateway.insert_rows([late])
    found = tick(prism, first.cursor)
    assert [r.partition_key for r in found.run_requests] == [key(hours_ago(6))]
    assert key(hours_ago(6)) in json.loads(found.cursor)["watched"]
    assert tick(prism, found.cursor).run_requests == []  # requested already

    prism.sync("archive", key(hours_ago(6)))
    caught_up = tick(prism, found.cursor)
    assert caught_up.run_requests == []
    assert key(hours_ago(6)) not in json.loads(caught_up.cursor)["watched"]
    assert json.loads(caught_up.cursor)["requested"] == {}
    ids = delivered_ids(tmp_path / "bucket")
    assert set(ids.values()) == {1} and all(row[0] in ids for row in late)


def test_paused_integration_catches_up_every_hour_after_resume(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path), source={"settle_seconds": 0})
    gateway.insert_rows([gateway_rows(hours_ago(5), 10)])
    prism.sync("archive", key(hours_ago(5)))
    serve(prism)  # stopped in the UI, in a location not named as in workspace.yaml
    assert status_of(prism, gateway).status == PAUSED
    assert "code location prism_export" in cli(prism, "resume", "archive")
    assert status_of(prism, gateway).status == ACTIVE

    assert "Paused" in cli(prism, "pause", "archive")
    assert status_of(prism, gateway).status == PAUSED
    assert "paused" in tick(prism).skip_message
    # Traffic goes on while the export is paused.
    during = [
        gateway_rows(hours_ago(4), 15),
        gateway_rows(hours_ago(2), 12),
        gateway_rows(THIS_HOUR, 5, timestamp=THIS_HOUR, ingested_at=THIS_HOUR),
    ]
    gateway.insert_rows(during)
    assert "paused" in tick(prism).skip_message

    assert "resumed" in cli(prism, "resume", "archive")
    assert status_of(prism, gateway).status == ACTIVE
    caught_up = tick(prism)
    scheduled = (
        prism.defs.get_repository_def()
        .get_schedule_def("archive_schedule")
        .evaluate_tick(
            build_schedule_context(
                instance=prism.instance,
                scheduled_execution_time=NOW,
                repository_def=prism.defs.get_repository_def(),
            )
        )
    )
    requested = {r.partition_key for r in caught_up.run_requests}
    assert requested == {key(hours_ago(4)), key(hours_ago(2))}
    for partition in requested | {r.partition_key for r in scheduled.run_requests}:
        prism.sync("archive", partition)

    ids = delivered_ids(tmp_path / "bucket")
    assert set(ids.values()) == {1}
    assert sum(ids.values()) == 10 + 15 + 12 + 5
    assert tick(prism, caught_up.cursor).run_requests == []
    assert status_of(prism, gateway).pending_rows == 0


def test_historical_data_is_requested_once_and_again_when_since_moves_earlier(prism, tmp_path):
    """No manual backfill: the hours from ``history.since`` to where the late-data sensor's
    look-back begins, in runs of at most a day, requested once."""
    prism.configure(archive(tmp_path, history={"since": hours_ago(100).isoformat()}))
    first = tick(prism, name="archive_history")
    end = floor_hour(NOW - timedelta(minutes=15)) - timedelta(hours=48)

    def ranges(result) -> list[tuple[str, str]]:
        assert all(r.tags["prism/trigger"] == "history" for r in result.run_requests)
        return [
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in result.run_requests
        ]

    requested = ranges(first)
    assert requested[0][0] == key(hours_ago(100))
    assert requested[-1][1] == key(end - timedelta(hours=1))
    hours = [datetime.strptime(k, "%Y-%m-%d-%H:%M") for pair in requested for k in pair]
    assert all(b - a <= timedelta(hours=23) for a, b in zip(hours[::2], hours[1::2], strict=True))
    assert all(b - a == timedelta(hours=1) for a, b in zip(hours[1::2], hours[2::2], strict=False))
    assert tick(prism, first.cursor, name="archive_history").run_requests == []

    # Moved earlier: only the new hours, once.
    prism.configure(archive(tmp_path, history={"since": hours_ago(130).isoformat()}))
    earlier = tick(prism, first.cursor, name="archive_history")
    assert ranges(earlier) == [
        (key(hours_ago(130)), key(hours_ago(107))),
        (key(hours_ago(106)), key(hours_ago(101))),
    ]
    assert tick(prism, earlier.cursor, name="archive_history").run_requests == []


def test_history_span_counts_back_from_the_hour_first_configured(prism, gateway, tmp_path):
    """``since: -100h``: the 100 hours before the integration was first configured, requested
    once; the partitions' start stays put as time passes (the ledger remembers that hour)."""
    span = timedelta(hours=100)
    before = floor_hour(utcnow())
    prism.configure(archive(tmp_path, history={"since": "-100h"}))
    start = prism.job("archive_sync").partitions_def.start
    assert start in {before - span, floor_hour(utcnow()) - span}  # not yet configured: now
    tick(prism)  # the late-data sensor records the hour first configured: not the start
    assert prism.ledger.configured_at("archive") == start + span

    # Configured 30 hours earlier: the history reaches back from that hour, and is requested.
    first = start + span - timedelta(hours=30)
    with prism.ledger.engine.begin() as conn:
        conn.execute(
            text("UPDATE prism_integrations SET first_configured_at = :at WHERE name = 'archive'"),
            {"at": first},
        )
    prism.configure(archive(tmp_path, history={"since": "-100h"}))
    assert prism.job("archive_sync").partitions_def.start == first - span
    requested = tick(prism, name="archive_history").run_requests
    assert requested[0].tags["dagster/asset_partition_range_start"] == key(first - span)


def run_in_progress(prism, **tags) -> object:
    """A sync run in progress, as the instance records it (its process is elsewhere)."""
    return prism.instance.create_run_for_job(
        prism.job("archive_sync"),
        tags={"prism/integration": "archive", **tags},
        status=DagsterRunStatus.STARTED,
    )


def test_sensors_do_not_request_an_hour_a_queued_or_running_run_covers(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path), source={"settle_seconds": 0})
    gateway.insert_rows([gateway_rows(hours_ago(5), 10), gateway_rows(hours_ago(3), 10)])
    running = run_in_progress(prism, **{"dagster/partition": key(hours_ago(5))})

    first = tick(prism)
    assert {r.partition_key for r in first.run_requests} == {key(hours_ago(3))}
    # Once that run is over, the hour is requested.
    prism.instance.report_run_canceled(running)
    assert {r.partition_key for r in tick(prism, first.cursor).run_requests} == {key(hours_ago(5))}

    # The history sensor leaves the hours of a running range to it, and splits around them.
    prism.configure(archive(tmp_path, history={"since": hours_ago(100).isoformat()}))
    run_in_progress(
        prism,
        **{
            "dagster/asset_partition_range_start": key(hours_ago(90)),
            "dagster/asset_partition_range_end": key(hours_ago(80)),
        },
    )
    history = tick(prism, name="archive_history")
    ranges = [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in history.run_requests
    ]
    assert ranges[:2] == [
        (key(hours_ago(100)), key(hours_ago(91))),
        (key(hours_ago(79)), key(hours_ago(56))),
    ]


def test_hour_its_run_skipped_as_busy_is_requested_again_at_the_next_tick(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path), source={"settle_seconds": 0})
    gateway.insert_rows([gateway_rows(hours_ago(5), 10)])
    first = tick(prism)
    assert [r.partition_key for r in first.run_requests] == [key(hours_ago(5))]
    with prism.ledger.lease("archive", hours_ago(5), "a CLI sync on another host"):
        skipped = prism.sync("archive", key(hours_ago(5)))
        assert skipped.success and skipped.metadata == {}
        # Not an hour's wait (as after a failed run): its run left it to another.
        again = tick(prism, first.cursor)
        assert [r.partition_key for r in again.run_requests] == [key(hours_ago(5))]
    assert prism.sync("archive", key(hours_ago(5))).metadata["records"] == 10
    assert tick(prism, again.cursor).run_requests == []
    assert sum(delivered_ids(tmp_path / "bucket").values()) == 10
