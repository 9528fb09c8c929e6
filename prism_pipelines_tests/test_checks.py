"""Asset checks of each synced partition: reconciliation, the gateway alerts, freshness —
evaluated by the sync runs (and the late-data sensor) and stored in the Dagster instance, where
the UI reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import AssetCheckKey, AssetCheckSeverity
from sqlalchemy import delete, text, update

from prism_pipelines.dagster_defs import checks
from prism_pipelines.dagster_defs.assets import asset_key
from prism_pipelines.ledger import batches, partitions
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.test_late_data_sensor import hours_ago, tick
from prism_pipelines_tests.test_late_data_sensor import key as key_of
from prism_pipelines_tests.test_status import local as local_from_now

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"


def local(path, name: str = "archive", **settings) -> dict:
    """A local integration whose partitions reach back to this file's fixed hours."""
    return local_from_now(path, name, **{"history": {"since": "2026-11-21T00:00:00Z"}, **settings})


def evaluation(prism, check: str, partition: str):
    """The latest evaluation of a per-partition check, as the partition's check view shows it."""
    records = prism.instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(asset_key("archive"), check), limit=50
    )
    for record in records:
        data = record.event.dagster_event.event_specific_data if record.event else None
        if record.partition == partition and hasattr(data, "passed"):
            return data
    raise AssertionError(f"no evaluation of {check} for {partition}")


def numbers(result) -> dict:
    return {k: v.value for k, v in result.metadata.items()}


def test_reconciliation_fails_loudly_when_the_ledger_lost_a_batch(prism, gateway, tmp_path):
    prism.configure(local(tmp_path / "bucket", batch_rows=100))
    gateway.insert_rows([gateway_rows(H, 300)])
    prism.sync("archive", KEY)
    assert evaluation(prism, "reconciliation", KEY).passed

    with prism.ledger.engine.begin() as conn:  # the injected gap: the middle batch is forgotten
        conn.execute(
            delete(batches).where(
                (batches.c.integration == "archive") & (batches.c.after_id == 100)
            )
        )
    prism.sync("archive", KEY)

    result = evaluation(prism, "reconciliation", KEY)
    assert not result.passed and result.severity == AssetCheckSeverity.ERROR
    assert numbers(result) == {
        "source_rows": 300,
        "delivered": 200,
        "rejected": 0,
        "difference": 100,
        "cursor": 300,
        "rows_after_cursor": 0,
    }
    assert "GAP in partition 2026-11-22-14:00" in result.description
    assert "--full" in result.description  # says what to do


def test_rows_inserted_below_the_cursor_are_a_gap_until_synced(prism, gateway, tmp_path):
    prism.configure(local(tmp_path / "bucket"))
    rows = gateway_rows(H, 20)
    gateway.insert_rows([rows[:10]])  # ids 1..10
    with gateway.engine.begin() as conn:  # ids 11..15 are held by slow transactions
        conn.execute(text("SELECT setval('prism_request_logs_id_seq', 15)"))
    gateway.insert_rows([rows[15:]])  # ids 16..20
    prism.sync("archive", KEY)
    assert checks.reconcile(gateway, prism.ledger, "archive", H).passed

    with gateway.engine.begin() as conn:  # the slow transactions commit, below the cursor
        for row_id, row in zip(range(11, 16), rows[10:15], strict=True):
            values = dict(zip(gateway.table.c.keys()[1:], row, strict=True))
            conn.execute(gateway.table.insert().values(id=row_id, **values))

    gap = checks.reconcile(gateway, prism.ledger, "archive", H)
    assert not gap.passed
    assert (gap.source_rows, gap.delivered, gap.difference) == (20, 15, 5)
    assert gap.rows_after_cursor == 0
    prism.sync("archive", KEY)  # the sync redoes the batch whose range gained rows
    assert evaluation(prism, "reconciliation", KEY).passed
    assert numbers(evaluation(prism, "reconciliation", KEY))["delivered"] == 20


def test_check_whose_query_fails_is_reported_failed_until_it_runs_again(
    prism, gateway, tmp_path, monkeypatch
):
    prism.configure(local(tmp_path / "bucket"))
    gateway.insert_rows([gateway_rows(H, 20)])
    prism.sync("archive", KEY)
    assert evaluation(prism, "reconciliation", KEY).passed

    def terminated(source, ledger, name, hour):  # the server ends the check's session mid-query
        with source.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    with monkeypatch.context() as patch:
        patch.setattr(checks, "reconcile", terminated)
        assert prism.sync("archive", KEY).success  # the delivery itself is not undone
    failed = evaluation(prism, "reconciliation", KEY)
    assert not failed.passed and failed.severity == AssetCheckSeverity.WARN
    assert failed.description.startswith("not evaluated: OperationalError")
    assert "connection" in failed.description  # the driver's first line
    assert numbers(failed)["evaluated"] is False
    assert evaluation(prism, "error_rate", KEY).passed  # its own queries ran

    prism.sync("archive", KEY)  # nothing new to deliver: evaluated again all the same
    assert evaluation(prism, "reconciliation", KEY).passed


def test_gateway_alerts_trip_on_crafted_traffic_and_stay_green_on_normal_traffic(
    prism, gateway, tmp_path
):
    prism.configure(
        local(
            tmp_path / "bucket",
            alerts={
                "error_rate": 0.1,
                "error_rate_window_minutes": 10,
                "error_rate_min_requests": 20,
                "p95_latency_ms": 2_500,
                "hourly_budget_usd": 1.0,
                "budget_warn_percent": 80,
                "max_guardrail_triggers": 2,
            },
        )
    )
    normal, spiky = H, H + timedelta(hours=1)
    # Normal: 2 % errors (every 50th), latency 200..1999 ms, $0.41, no guardrail.
    gateway.insert_rows([gateway_rows(normal, 200)])
    # Crafted: a 10-minute window where 30 of 50 requests fail, slow and expensive requests,
    # three guardrail triggers.
    window = spiky + timedelta(minutes=20)
    gateway.insert_rows(
        [
            gateway_rows(spiky, 100, latency_ms=3_000),
            [
                r[:1] + (window + timedelta(seconds=i), window + timedelta(seconds=i + 1)) + r[3:]
                for i, r in enumerate(gateway_rows(spiky, 30, start=100, is_error=True))
            ],
            [
                r[:1] + (window + timedelta(seconds=i), window + timedelta(seconds=i + 1)) + r[3:]
                for i, r in enumerate(gateway_rows(spiky, 20, start=130))
            ],
            gateway_rows(spiky, 3, start=150, guardrail_triggered=True, cost=0.3),
        ]
    )
    prism.backfill("archive", [KEY, "2026-11-22-15:00"])

    for check in ("error_rate", "p95_latency", "budget", "guardrails"):
        result = evaluation(prism, check, KEY)
        assert result.passed, (check, result.description)
    assert numbers(evaluation(prism, "budget", KEY))["percent_of_budget"] < 80

    error_rate = evaluation(prism, "error_rate", "2026-11-22-15:00")
    assert not error_rate.passed and error_rate.severity == AssetCheckSeverity.ERROR
    tripped = numbers(error_rate)
    assert tripped["worst_window_start"] == "2026-11-22T15:20:00Z"
    assert tripped["worst_window_requests"] >= 50 and tripped["worst_window_errors"] >= 30
    assert tripped["worst_window_error_rate"] > 0.1 and tripped["threshold"] == 0.1

    latency = evaluation(prism, "p95_latency", "2026-11-22-15:00")
    assert not latency.passed and numbers(latency)["p95_latency_ms"] == 3_000
    assert numbers(latency)["threshold_ms"] == 2_500

    budget = evaluation(prism, "budget", "2026-11-22-15:00")
    spend = numbers(budget)
    assert not budget.passed and budget.severity == AssetCheckSeverity.ERROR
    assert spend["spend_usd"] > 1.0 and spend["percent_of_budget"] > 100

    guardrails = evaluation(prism, "guardrails", "2026-11-22-15:00")
    assert not guardrails.passed
    assert numbers(guardrails)["guardrail_triggers"] == 3
    assert len(numbers(guardrails)["sample_request_ids"]) == 3


def test_budget_warns_before_it_is_exceeded(prism, gateway, tmp_path):
    prism.configure(local(tmp_path / "bucket", alerts={"hourly_budget_usd": 0.5}))
    gateway.insert_rows([gateway_rows(H, 10, cost=0.045)])  # $0.45: 90 % of the budget

    prism.sync("archive", KEY)

    budget = evaluation(prism, "budget", KEY)
    assert not budget.passed and budget.severity == AssetCheckSeverity.WARN
    assert numbers(budget)["percent_of_budget"] == 90.0


def test_freshness_turns_red_when_the_integration_stops_syncing(prism, gateway, tmp_path):
    prism.configure(
        local(tmp_path / "bucket", history={"since": hours_ago(3).isoformat()}),
    )
    prism.sync("archive", key_of(hours_ago(1)))
    fresh, _ = checks.latest_evaluation(prism.instance, "archive", checks.FRESHNESS)
    assert fresh.passed

    with prism.ledger.engine.begin() as conn:  # no successful sync for 40 minutes
        conn.execute(
            update(partitions).values(last_success_at=datetime.now(UTC) - timedelta(minutes=40))
        )
    first = tick(prism)
    stale, run_id = checks.latest_evaluation(prism.instance, "archive", checks.FRESHNESS)
    assert not stale.passed and run_id == ""  # reported by the sensor, between runs
    assert "stale" in stale.description and stale.metadata["allowed_minutes"].value == 10
    tick(prism, first.cursor)  # reported once, not on every tick
    history = prism.instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(asset_key("archive"), checks.FRESHNESS), limit=10
    )
    assert sum(1 for r in history if r.run_id == "") == 1
