"""Datadog, end to end through Dagster: logs and metrics as the stand-in intake receives them
through the official client (gzip, limits, Datadog's error answers), validation and the
dashboard template."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from prism_pipelines.records import EXPORTED_FIELDS
from prism_pipelines.sinks.datadog import metrics as datadog_metrics
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines_tests.datadog_intake import API_KEY, APP_KEY
from prism_pipelines_tests.factories import gateway_rows

RESERVED = {"ddsource", "service", "status", "ddtags", "message"}
COLUMN = {name: i for i, name in enumerate(INSERT_COLUMNS)}
WINDOW = 300  # the default sync interval, 5 minutes


@pytest.fixture
def intake(datadog_intake, monkeypatch):
    datadog_intake.reset()
    monkeypatch.setenv("DD_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("DD_TEST_APP_KEY", APP_KEY)
    return datadog_intake


def datadog(intake, **settings) -> dict:
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:00:00Z")
    return {
        "name": "dd",
        "type": "datadog",
        "api_key": {"env": "DD_TEST_API_KEY"},
        "endpoint_url": intake.url,
        "tags": ["env:test"],
        "history": {"since": since},
        **settings,
    }


def key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def recent_rows(count: int, **overrides) -> tuple[datetime, list[tuple]]:
    """``count`` rows of one hour, all in the last 45 minutes (so Datadog takes their metric
    points) and settled (ingested a second after their event, at least a minute ago)."""
    now = datetime.now(UTC).replace(microsecond=0)
    hour = (now - timedelta(minutes=16)).replace(minute=0, second=0)
    start, end = (
        max(hour, now - timedelta(minutes=45)),
        min(hour + timedelta(hours=1), now - timedelta(minutes=1)),
    )
    rows = gateway_rows(hour, count, **overrides)
    step = (end - start) / count
    return hour, [at(row, start + i * step) for i, row in enumerate(rows)]


def at(row: tuple, when: datetime) -> tuple:
    row = list(row)
    row[COLUMN["timestamp"]] = when
    row[COLUMN["ingested_at"]] = when + timedelta(seconds=1)
    return tuple(row)


def with_values(row: tuple, **values) -> tuple:
    row = list(row)
    for name, value in values.items():
        row[COLUMN[name]] = value
    return tuple(row)


def frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(INSERT_COLUMNS))
    epoch = df["timestamp"].map(lambda t: int(t.timestamp()))
    df["window"] = epoch - epoch % WINDOW
    return df


def points_by_window(series: list[dict]) -> dict[tuple, list[dict]]:
    """(metric, model, provider, window start) → the points Datadog received for it."""
    found = defaultdict(list)
    for s in series:
        tags = dict(t.split(":", 1) for t in s["tags"])
        for p in s["points"]:
            window = p["timestamp"] - p["timestamp"] % WINDOW
            found[(s["metric"], tags["model"], tags["provider"], window)].append(p)
    return found


# -- logs ------------------------------------------------------------------------------------------


def test_each_record_becomes_a_tagged_log_entry_at_its_event_time(prism, gateway, intake):
    hour, rows = recent_rows(30)
    rows[0] = with_values(
        rows[0], model="gpt-4o", provider="openai", status_code=200, latency_ms=842,
        input_tokens=1200, output_tokens=323, total_tokens=1523, cost=0.02, is_error=False,
        cache_hit=True, cache_status="hit", guardrail_triggered=False, routing_strategy="",
    )  # fmt: skip
    rows[1] = with_values(
        rows[1], model="claude-sonnet-4", provider="anthropic", status_code=429, latency_ms=120,
        input_tokens=100, output_tokens=0, total_tokens=100, cost=0.0001, is_error=True,
        error_message="Rate limit reached for requests", cache_hit=False, cache_status="miss",
        guardrail_triggered=True, guardrail_results='[{"name": "pii", "action": "flag"}]',
        routing_strategy="Least Latency", model_requested="claude-opus-4", fallback_used=True,
    )  # fmt: skip
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))

    run = prism.sync("dd", key(hour))

    assert run.metadata["records"] == 30 and run.metadata["rejects"] == 0
    logs = {e["request_id"]: e for e in intake.logs}
    assert len(intake.logs) == len(logs) == 30
    first = logs[rows[0][COLUMN["request_id"]]]
    assert first["message"] == "[openai] gpt-4o status=200 latency=842ms tokens=1523 cost=$0.02"
    assert first["status"] == "info"
    assert first["ddsource"] == "futureagi" and first["service"] == "prism-gateway"
    assert first["ddtags"] == (
        "model:gpt-4o,provider:openai,status_code:200,gateway:prism,error:false,cache:hit,"
        "guardrail:false,routing:none,env:test"
    )
    assert first["timestamp"] == rows[0][COLUMN["timestamp"]].strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert set(first) == RESERVED | set(EXPORTED_FIELDS)  # the record's fields are attributes
    assert (first["latency_ms"], first["cost"], first["cache_hit"]) == (842, 0.02, True)

    error = logs[rows[1][COLUMN["request_id"]]]
    assert error["status"] == "error"
    assert error["message"] == (
        "[anthropic] claude-sonnet-4 status=429 latency=120ms tokens=100 cost=$0.0001 "
        "error: Rate limit reached for requests"
    )
    assert error["ddtags"] == (
        "model:claude-sonnet-4,provider:anthropic,status_code:429,gateway:prism,error:true,"
        "cache:miss,guardrail:true,routing:least_latency,env:test"
    )
    assert error["guardrail_results"] == [{"name": "pii", "action": "flag"}]
    assert error["model_requested"] == "claude-opus-4" and error["fallback_used"] is True

    request = intake.recorded("logs")[0]
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["dd-api-key"] == API_KEY
    assert len(request.raw) < request.decoded_size  # compressed on the wire


def test_log_requests_respect_the_entry_count_and_byte_limits(prism, gateway, intake):
    hour, rows = recent_rows(460)
    # Twelve rows with 600 kB error messages: 5 MB holds eight of them, not twelve.
    big = "x" * 600_000
    for i in range(12):
        rows[i] = with_values(rows[i], is_error=True, error_message=big)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake, logs_per_request=100))

    run = prism.sync("dd", key(hour))

    accepted = intake.recorded("logs", 202)
    assert run.metadata["records"] == 460
    assert len(intake.logs) == 460 and len({e["request_id"] for e in intake.logs}) == 460
    assert all(len(r.body) <= 100 for r in accepted)
    assert all(r.decoded_size <= 5_000_000 for r in accepted)
    assert max(r.decoded_size for r in accepted) > 4_000_000  # the byte limit did the cutting
    assert [len(r.body) for r in accepted] == [8, 100, 100, 100, 100, 52]
    assert run.metadata["log_requests"] == len(accepted) == len(intake.recorded("logs"))


def test_a_record_over_1mb_is_trimmed_and_says_so(prism, gateway, intake):
    hour, rows = recent_rows(3)
    rows[1] = with_values(rows[1], is_error=True, error_message="é" * 400_000)  # 2.4 MB as JSON
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))

    run = prism.sync("dd", key(hour))

    entry = next(e for e in intake.logs if e["request_id"] == rows[1][COLUMN["request_id"]])
    assert entry["truncated_fields"] == ["error_message"]
    assert entry["original_size_bytes"] > 2_000_000
    assert entry["error_message"].startswith("éééé") and entry["error_message"].endswith(
        "[trimmed]"
    )
    assert intake.recorded("logs")[0].decoded_size < 1_000_000 + 2 * 2_000
    assert run.metadata["records"] == 3 and run.metadata["logs_trimmed_over_1mb"] == 1


def test_a_413_splits_the_request_and_delivers_every_record_once(prism, gateway, intake):
    hour, rows = recent_rows(40)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    intake.fail_next("logs", 413)

    run = prism.sync("dd", key(hour))

    statuses = [(r.status, len(r.body)) for r in intake.recorded("logs")]
    assert statuses == [(413, 40), (202, 20), (202, 20)]
    assert sorted(e["request_id"] for e in intake.logs) == sorted(r[0] for r in rows)
    assert run.metadata["records"] == 40 and run.metadata["log_requests_split"] == 1


def test_a_429_waits_for_the_rate_limit_reset_then_delivers(prism, gateway, intake):
    hour, rows = recent_rows(20)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    intake.throttle_next("logs", reset_seconds=1)

    run = prism.sync("dd", key(hour))

    throttled, accepted = intake.recorded("logs")
    assert (throttled.status, accepted.status) == (429, 202)
    assert 1.0 <= accepted.at - throttled.at < 3.0  # waited for X-RateLimit-Reset, no longer
    assert run.metadata["retries"] == 1 and run.metadata["throttled_429"] == 1
    assert len(intake.logs) == 20


def test_server_errors_are_retried_with_backoff(prism, gateway, intake):
    hour, rows = recent_rows(10)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    intake.fail_next("logs", 503, times=2)
    intake.fail_next("metrics", 500)

    run = prism.sync("dd", key(hour))

    assert [r.status for r in intake.recorded("logs")] == [503, 503, 202]
    assert [r.status for r in intake.recorded("metrics")] == [500, 202]
    assert run.metadata["retries"] == 3 and len(intake.logs) == 10


def test_a_400_rejects_only_the_refused_entries_with_datadogs_text(prism, gateway, intake):
    hour, rows = recent_rows(16)
    bad = rows[5][COLUMN["request_id"]]
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    intake.refuse_logs_where(
        lambda e: "attribute user_id has an invalid value" if e["request_id"] == bad else None
    )

    run = prism.sync("dd", key(hour))

    assert run.metadata["records"] == 15 and run.metadata["rejects"] == 1
    assert bad not in {e["request_id"] for e in intake.logs} and len(intake.logs) == 15
    [reason] = [r for r in run.metadata["reject_reasons"]]
    assert reason == "refused by Datadog (400)"
    [reject] = prism.ledger.rejects("dd", hour)
    assert reject["request_id"] == bad
    assert reject["reason"] == "refused by Datadog (400): attribute user_id has an invalid value"


def test_a_revoked_key_fails_the_run_and_leaves_the_cursor(prism, gateway, intake):
    hour, rows = recent_rows(30)
    gateway.insert_rows([rows[:20]])
    prism.configure(datadog(intake))
    prism.sync("dd", key(hour))
    cursor = prism.ledger.cursor("dd", hour)
    gateway.insert_rows([rows[20:]])
    intake.api_keys = {"some-other-key"}  # the key was revoked

    run = prism.sync("dd", key(hour), raise_on_error=False)

    assert not run.success
    assert "Datadog refused the API key (403" in run.error
    assert "check the key and the site: this key is not valid on datadoghq.com" in run.error
    assert API_KEY not in run.error
    assert prism.ledger.cursor("dd", hour) == cursor
    assert "check the key and the site" in prism.ledger.partition_state("dd", hour).last_error
    assert intake.recorded("metrics", 403) == []  # nothing sent past the refusal

    intake.api_keys = {API_KEY}  # a new key is in place
    again = prism.sync("dd", key(hour))
    assert again.metadata["records"] == 10
    assert Counter(e["request_id"] for e in intake.logs) == Counter(r[0] for r in rows)


def test_logs_older_than_18_hours_are_rejected_or_sent_with_the_current_time(
    prism, gateway, intake
):
    hour = (datetime.now(UTC) - timedelta(hours=20)).replace(minute=0, second=0, microsecond=0)
    rows = gateway_rows(hour, 12)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake), datadog(intake, name="dd_now", old_logs="send_now"))

    run = prism.sync("dd", key(hour))

    assert run.metadata["records"] == 0 and run.metadata["rejects"] == 12
    assert run.metadata["reject_reasons"] == {"log older than 18 h": 12}
    assert run.metadata["logs_rejected_too_old"] == 12
    assert run.metadata["metric_points_skipped_older_than_1h"] == 12 * 7  # a row per window
    assert intake.requests == []
    [reject, *_] = prism.ledger.rejects("dd", hour)
    assert reject["reason"].startswith("log older than 18 h: its event time ")
    assert prism.ledger.cursor("dd", hour) > 0  # refused for good: recorded, not retried

    before = datetime.now(UTC) - timedelta(seconds=1)
    run = prism.sync("dd_now", key(hour))

    assert run.metadata["records"] == 12 and run.metadata["logs_sent_with_current_time"] == 12
    for entry, row in zip(sorted(intake.logs, key=lambda e: e["request_id"]), rows, strict=True):
        assert datetime.fromisoformat(entry["timestamp"]) >= before
        assert entry["original_timestamp"] == row[COLUMN["timestamp"]].strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        )


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_equal_the_aggregates_of_the_source_rows(prism, gateway, intake):
    hour, rows = recent_rows(600)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))

    run = prism.sync("dd", key(hour))

    df = frame(rows)
    expected = df.groupby(["model", "provider", "window"]).agg(
        requests=("request_id", "count"),
        errors=("is_error", "sum"),
        latency_ms=("latency_ms", "mean"),
        p95=("latency_ms", lambda s: s.quantile(0.95)),
        input_tokens=("input_tokens", "sum"),
        output_tokens=("output_tokens", "sum"),
        cost=("cost", "sum"),
    )
    got = points_by_window(intake.series)
    names = {
        "requests": "requests", "errors": "errors", "latency_ms": "latency_ms",
        "p95": "latency_ms.p95", "input_tokens": "input_tokens",
        "output_tokens": "output_tokens", "cost": "cost",
    }  # fmt: skip
    for (model, provider, window), row in expected.iterrows():
        for column, metric in names.items():
            points = got.pop((f"prism.gateway.{metric}", model, provider, window))
            assert len(points) == 1
            assert points[0]["value"] == pytest.approx(row[column]), (metric, model, window)
    assert got == {}  # nothing else was sent
    types = {s["metric"]: (s["type"], s.get("interval")) for s in intake.series}
    assert types["prism.gateway.requests"] == (1, WINDOW)
    assert types["prism.gateway.latency_ms.p95"] == (3, None)
    assert all("env:test" in s["tags"] for s in intake.series)
    assert run.metadata["metric_points"] == len(expected) * 7


def test_a_late_row_adds_to_its_window_instead_of_replacing_it(prism, gateway, intake):
    hour, rows = recent_rows(60)
    gateway.insert_rows([rows[:-1]])
    prism.configure(datadog(intake))
    prism.sync("dd", key(hour))
    # The last row arrives late, for a window that was already sent.
    late = with_values(
        rows[-1], **{n: rows[0][COLUMN[n]] for n in ("timestamp", "model", "provider")}
    )
    gateway.insert_rows([[late]])

    prism.sync("dd", key(hour))

    window = int(rows[0][COLUMN["timestamp"]].timestamp()) // WINDOW * WINDOW
    model, provider = rows[0][COLUMN["model"]], rows[0][COLUMN["provider"]]
    points = points_by_window(intake.series)[("prism.gateway.requests", model, provider, window)]
    assert len({p["timestamp"] for p in points}) == 2  # two seconds: the second adds
    in_window = frame(rows[:-1] + [late]).query("window == @window and model == @model")
    assert sum(p["value"] for p in points) == len(in_window)
    # Across both syncs, no series ever received two points for the same second.
    seen = Counter(
        (s["metric"], tuple(s["tags"]), p["timestamp"]) for s in intake.series for p in s["points"]
    )
    assert max(seen.values()) == 1


def test_a_redone_batch_rewrites_its_own_metric_points(prism, gateway, intake):
    hour, rows = recent_rows(20)
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    prism.sync("dd", key(hour))
    first = {(s["metric"], tuple(s["tags"])): s["points"] for s in intake.series}
    intake.reset()

    prism.sync("dd", key(hour), full=True)

    again = {(s["metric"], tuple(s["tags"])): s["points"] for s in intake.series}
    assert again == first  # same seconds, same values: replaced, not added
    assert len(intake.logs) == 20  # logs are at least once


def test_no_traffic_sends_no_metrics(prism, gateway, intake):
    hour, _ = recent_rows(1)
    prism.configure(datadog(intake))

    run = prism.sync("dd", key(hour))

    assert run.success and intake.requests == []


def test_metric_payloads_stay_under_the_size_limits(prism, gateway, intake, monkeypatch):
    hour, rows = recent_rows(300)
    rows = [with_values(r, model=f"model-{i:04d}") for i, r in enumerate(rows)]
    gateway.insert_rows([rows])
    prism.configure(datadog(intake))
    # Smaller limits, so a test-sized batch needs several payloads.
    monkeypatch.setattr(datadog_metrics, "MAX_PAYLOAD_DECOMPRESSED", 60_000)
    monkeypatch.setattr(datadog_metrics, "MAX_PAYLOAD_COMPRESSED", 3_000)
    intake.fail_next("metrics", 413)  # and Datadog refuses the first one anyway

    run = prism.sync("dd", key(hour))

    accepted = intake.recorded("metrics", 202)
    assert intake.recorded("metrics")[0].status == 413
    assert len(accepted) > 4
    assert all(len(r.raw) <= 3_000 and r.decoded_size <= 60_000 for r in accepted)
    assert {r.headers["content-encoding"] for r in accepted} == {"gzip"}
    requests = points_by_window(s for s in intake.series if s["metric"].endswith(".requests"))
    assert sum(p["value"] for points in requests.values() for p in points) == 300
    assert run.metadata["metric_points"] == 300 * 7


# -- validate and dashboard ------------------------------------------------------------------------


def test_validate_checks_both_keys_and_names_the_site_when_refused(prism, intake):
    prism.configure(datadog(intake, app_key={"env": "DD_TEST_APP_KEY"}))

    ok, message = prism.validate("dd")
    assert ok, message
    assert "API key is valid on datadoghq.com" in message and "application key is valid" in message
    assert [r.path for r in intake.requests] == ["/api/v1/validate", "/api/v1/dashboard"]

    intake.api_keys = {"another-key"}
    ok, message = prism.validate("dd")
    assert not ok
    assert "check the key and the site: this key is not valid on datadoghq.com" in message

    intake.api_keys, intake.app_keys = {API_KEY}, set()
    ok, message = prism.validate("dd")
    assert not ok and "Datadog refused the application key (403" in message

    prism.configure(datadog(intake, endpoint_url="http://127.0.0.1:9"))  # nothing listens
    ok, message = prism.validate("dd")
    assert not ok and "failed 3 times, last with cannot connect" in message


def test_create_dashboard_twice_keeps_one_dashboard(prism, intake):
    prism.configure(datadog(intake, app_key={"env": "DD_TEST_APP_KEY"}))
    job = prism.job("dd_create_dashboard")

    first = job.execute_in_process(instance=prism.instance)
    second = job.execute_in_process(instance=prism.instance)

    [dashboard] = intake.dashboards.values()
    assert dashboard["title"] == "Prism Gateway (dd)"
    assert "created dashboard 'Prism Gateway (dd)'" in first.output_for_node(
        "dd_create_dashboard_op"
    )
    assert (
        f"updated dashboard 'Prism Gateway (dd)' (id {dashboard['id']})"
        in second.output_for_node("dd_create_dashboard_op")
    )
    queries = [
        r.get("q") or r["query"]["query_string"]
        for w in dashboard["widgets"]
        for r in w["definition"]["requests"]
    ]
    assert "sum:prism.gateway.requests{$model,$provider} by {model}.as_count()" in queries
    assert "sum:prism.gateway.errors{$model,$provider} by {model}.as_count()" in queries
    assert "max:prism.gateway.latency_ms.p95{$model,$provider} by {model}" in queries
    assert "sum:prism.gateway.cost{$model,$provider} by {provider}.as_count()" in queries
    assert any(q.startswith("source:futureagi service:prism-gateway") for q in queries)


def test_create_dashboard_without_an_app_key_says_one_is_needed(prism, intake):
    prism.configure(datadog(intake))

    result = prism.job("dd_create_dashboard").execute_in_process(
        instance=prism.instance, raise_on_error=False
    )

    assert not result.success and intake.requests == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert (
        "needs a Datadog application key" in failure.step_failure_data.user_failure_data.description
    )
