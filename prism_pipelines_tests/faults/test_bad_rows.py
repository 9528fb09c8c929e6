"""One bad row never blocks or silently changes an hour (docs/reliability.md, "Bad rows").

Bad rows are written with raw SQL into the real gateway databases (PostgreSQL, SQLite), synced
through Dagster, and read back from the destination: the local archive's files, or the strict
Datadog stand-in (which refuses NaN and Infinity in JSON with 400, as Datadog does).
"""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from prism_pipelines.source import INSERT_COLUMNS, GatewaySource
from prism_pipelines_tests.datadog_intake import API_KEY
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.test_checks import evaluation
from prism_pipelines_tests.test_datadog import datadog, recent_rows
from prism_pipelines_tests.test_late_data_sensor import THIS_HOUR, hours_ago, key, tick
from prism_pipelines_tests.test_status import status_of


@pytest.fixture
def intake(datadog_intake, monkeypatch):
    datadog_intake.reset()
    monkeypatch.setenv("DD_TEST_API_KEY", API_KEY)
    return datadog_intake


@pytest.fixture
def sqlite_gateway(tmp_path, monkeypatch) -> GatewaySource:
    """The embedded default: the gateway table in an SQLite file."""
    url = f"sqlite:///{tmp_path}/gateway.db"
    monkeypatch.setenv("PRISM_SOURCE_URL", url)
    source = GatewaySource(url)
    source.create_table()
    yield source
    source.engine.dispose()


def archive(tmp_path: Path) -> dict:
    return {
        "name": "archive",
        "type": "local",
        "path": str(tmp_path / "bucket"),
        "history": {"since": hours_ago(8).isoformat()},
    }


def archived(tmp_path: Path) -> dict[str, dict]:
    """Every record in the archive's files, by request id."""
    return {
        record["request_id"]: record
        for path in (tmp_path / "bucket").rglob("*.jsonl.gz")
        for record in map(orjson.loads, gzip.open(path).read().splitlines())
    }


def update_row(source: GatewaySource, request_id: str, params=None, **expressions: str) -> None:
    """Set columns of one row to SQL ``expressions``, as a writer with bad data would."""
    assignments = ", ".join(f"{column} = {sql}" for column, sql in expressions.items())
    with source.engine.begin() as conn:
        conn.execute(
            text(f"UPDATE prism_request_logs SET {assignments} WHERE request_id = :id"),
            {"id": request_id, **(params or {})},
        )


# -- numbers a destination cannot hold ----------------------------------------------------------


def test_a_nan_cost_does_not_block_datadog_and_is_counted(prism, gateway, intake):
    prism.configure(datadog(intake))
    hour, rows = recent_rows(30)
    gateway.insert_rows([rows])
    update_row(gateway, rows[7][0], cost="'NaN'")

    run = prism.sync("dd", key(hour))

    assert run.success and run.metadata["records"] == 30 and run.metadata["rejects"] == 0
    assert run.metadata["costs_not_finite_sent_as_null"] == 1
    assert intake.recorded("metrics", 400) == [] and intake.recorded("logs", 400) == []
    logs = {entry["request_id"]: entry for entry in intake.logs}
    assert len(logs) == 30 and logs[rows[7][0]]["cost"] is None
    points = [p["value"] for s in intake.series for p in s["points"]]
    assert points and all(math.isfinite(v) for v in points)
    # The next sync has nothing left to re-send.
    assert prism.sync("dd", key(hour)).metadata["records"] == 0


def test_non_finite_costs_reach_files_as_null_and_are_counted(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path))
    hour = hours_ago(2)
    rows = gateway_rows(hour, 10)
    gateway.insert_rows([rows])
    for row, value in zip(rows[:3], ("NaN", "Infinity", "-Infinity"), strict=False):
        update_row(gateway, row[0], cost=f"'{value}'")

    run = prism.sync("archive", key(hour))

    assert run.metadata["records"] == 10 and run.metadata["costs_not_finite_sent_as_null"] == 3
    records = archived(tmp_path)
    assert [records[row[0]]["cost"] for row in rows[:3]] == [None, None, None]
    assert records[rows[3][0]]["cost"] == rows[3][INSERT_COLUMNS.index("cost")]


def test_metric_points_datadog_refuses_are_counted_and_the_logs_delivered(prism, gateway, intake):
    prism.configure(datadog(intake))
    hour, rows = recent_rows(30)
    gateway.insert_rows([rows])
    intake.refuse_series_where(
        lambda s: "Point value is out of range" if s["metric"].endswith(".cost") else None
    )

    run = prism.sync("dd", key(hour))

    assert run.success and run.metadata["records"] == 30
    assert len({e["request_id"] for e in intake.logs}) == 30
    refused = run.metadata["refused_by_destination"]
    [(reason, count)] = refused.items()
    assert "refused by Datadog (400): Point value is out of range" in reason
    sent = {(p["timestamp"], tuple(s["tags"])) for s in intake.series for p in s["points"]}
    assert count == len(sent) > 0  # one cost point per window and model
    assert {s["metric"].rsplit(".", 1)[-1] for s in intake.series} >= {"requests", "errors"}
    assert not any(s["metric"].endswith(".cost") for s in intake.series)
    assert prism.sync("dd", key(hour)).metadata["records"] == 0  # nothing held back for them


# -- rows that would stall an hour -----------------------------------------------------------------


@pytest.mark.parametrize("ingested_at", ["2099-01-01 00:00:00+00", "infinity"])
def test_a_row_ingested_in_the_future_does_not_hold_back_its_hour(
    prism, gateway, tmp_path, ingested_at
):
    prism.configure(archive(tmp_path))
    hour = hours_ago(2)
    rows = gateway_rows(hour, 10)
    gateway.insert_rows([rows])
    update_row(gateway, rows[3][0], {"at": ingested_at}, ingested_at="CAST(:at AS timestamptz)")

    run = prism.sync("archive", key(hour))

    assert run.metadata["records"] == 10
    assert run.metadata["held_back_unsettled_rows"] is False
    assert set(archived(tmp_path)) == {row[0] for row in rows}


def test_rows_just_ingested_by_the_databases_clock_are_still_held_back(prism, gateway, tmp_path):
    """The settle delay still protects out-of-order commits, measured by the database's clock."""
    prism.configure(archive(tmp_path), source={"settle_seconds": 600})
    hour = hours_ago(1)
    rows = gateway_rows(hour, 5)
    gateway.insert_rows([rows])
    update_row(gateway, rows[2][0], ingested_at="now()")

    run = prism.sync("archive", key(hour))

    assert run.metadata["records"] == 2 and run.metadata["held_back_unsettled_rows"] is True


def test_sqlite_text_that_is_not_utf8_rejects_its_row_only(prism, sqlite_gateway, tmp_path):
    prism.configure({**archive(tmp_path), "batch_rows": 4})  # rows read 4 at a time
    hour = hours_ago(2)
    rows = gateway_rows(hour, 12)
    sqlite_gateway.insert_rows([rows])
    update_row(
        sqlite_gateway,
        rows[5][0],
        model="CAST(X'6770742D34FF6F' AS TEXT)",
        error_message="CAST(X'7365637265742DFE' AS TEXT)",
    )
    update_row(sqlite_gateway, rows[10][0], user_id="CAST(X'FF' AS TEXT)")

    run = prism.sync("archive", key(hour))

    assert run.success and run.metadata["records"] == 10 and run.metadata["rejects"] == 2
    reasons = {r["request_id"]: r["reason"] for r in prism.ledger.rejects("archive")}
    assert reasons == {
        rows[5][0]: "malformed row: model, error_message is not UTF-8 text",
        rows[10][0]: "malformed row: user_id is not UTF-8 text",
    }
    records = archived(tmp_path)
    assert set(records) == {row[0] for row in rows} - set(reasons)
    assert evaluation(prism, "reconciliation", key(hour)).passed


def test_sqlite_timestamps_in_every_text_form_are_exported_reconciled_and_sensed(
    prism, sqlite_gateway, tmp_path
):
    # 22:00 UTC (the latest at least 3 hours back, within the sensor's 48-hour look), so that
    # the same moment written at +02:00 starts with the date of the day after the hour's end,
    # whenever the test runs; the integration's history starts with it
    hour = hours_ago(3 + (THIS_HOUR.hour - 25) % 24)
    prism.configure({**archive(tmp_path), "history": {"since": hour.isoformat()}})
    day, hh = f"{hour:%Y-%m-%d}", f"{hour:%H}"
    ahead = hour + timedelta(hours=2)
    assert f"{ahead:%Y-%m-%d}" != day
    forms = {
        f"{day} {hh}:05:00": f"{day}T{hh}:05:00.000Z",  # SQLAlchemy without microseconds
        f"{day} {hh}:10:00.250000": f"{day}T{hh}:10:00.250Z",  # SQLAlchemy's own
        f"{day}T{hh}:20:00": f"{day}T{hh}:20:00.000Z",
        f"{day}T{hh}:30:00.5Z": f"{day}T{hh}:30:00.500Z",
        f"{day}T{hh}:40:00+00:00": f"{day}T{hh}:40:00.000Z",
        f"{ahead:%Y-%m-%dT%H}:50:00+02:00": f"{day}T{hh}:50:00.000Z",
    }
    rows = gateway_rows(hour, len(forms))
    sqlite_gateway.insert_rows([rows])
    for row, stamp in zip(rows, forms, strict=True):
        update_row(sqlite_gateway, row[0], {"ts": stamp}, timestamp=":ts", ingested_at=":ts")

    run = prism.sync("archive", key(hour))

    assert run.metadata["records"] == len(forms)
    records = archived(tmp_path)
    assert [records[row[0]]["timestamp"] for row in rows] == list(forms.values())
    assert evaluation(prism, "reconciliation", key(hour)).passed
    error_rate = evaluation(prism, "error_rate", key(hour)).metadata
    assert error_rate["requests"].value == len(forms)  # the alerts count every form too
    newest = datetime.now(UTC) - timedelta(seconds=status_of(prism, sqlite_gateway).lag_seconds)
    assert abs(newest - (hour + timedelta(minutes=50))) < timedelta(minutes=1)  # status's lag

    # A late row in the T form: the late-data sensor sees its hour behind.
    [late] = gateway_rows(hour, 1, start=100)
    sqlite_gateway.insert_rows([[late]])
    a_minute_ago = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    update_row(
        sqlite_gateway,
        late[0],
        {"ts": f"{day}T{hh}:55:00Z", "at": a_minute_ago},
        timestamp=":ts",
        ingested_at=":at",
    )
    assert [r.partition_key for r in tick(prism).run_requests] == [key(hour)]
    assert prism.sync("archive", key(hour)).metadata["records"] == 1


def test_sqlite_impossible_timestamp_is_rejected_and_its_hour_delivered(
    prism, sqlite_gateway, tmp_path
):
    # every window is judged, even one request's (the bad row's has no minute, so no window)
    prism.configure({**archive(tmp_path), "alerts": {"error_rate_min_requests": 1}})
    hour = hours_ago(2)
    rows = gateway_rows(hour, 8)
    sqlite_gateway.insert_rows([rows])
    update_row(sqlite_gateway, rows[4][0], {"ts": f"{hour:%Y-%m-%d %H}:75:00"}, timestamp=":ts")

    run = prism.sync("archive", key(hour))

    assert run.success and run.metadata["records"] == 7 and run.metadata["rejects"] == 1
    [reject] = prism.ledger.rejects("archive")
    assert reject["request_id"] == rows[4][0]
    assert reject["reason"] == "malformed row: timestamp is null or not a valid time"
    assert evaluation(prism, "reconciliation", key(hour)).passed
    error_rate = evaluation(prism, "error_rate", key(hour))
    assert error_rate.passed and error_rate.metadata["requests"].value == 8
