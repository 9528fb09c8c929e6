"""OpenTelemetry traces (``type: otlp``), end to end through Dagster: spans as Datadog's APM test
agent (a real OTLP/HTTP receiver, services.py) decodes them, in protobuf and OTLP/JSON, gzip or
not; its 1 MiB body limit for the 413 split; the fault proxy in front of it for throttling,
server errors and a lost answer; validation; the integrations file's messages.

A refused credential, a ``partial_success`` and a 400 are the answers the agent cannot give:
those tests use ``otlp_receiver.StrictReceiver``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from prism_pipelines.errors import IntegrationsFileError
from prism_pipelines.integrations import load_integrations
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.faults.proxy import FaultProxy
from prism_pipelines_tests.otlp_receiver import StrictReceiver

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"
NAME = "traces"
COLUMN = {name: i for i, name in enumerate(INSERT_COLUMNS)}
W3C = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT, ERROR = 3, 2  # SpanKind.SPAN_KIND_CLIENT, Status.STATUS_CODE_ERROR


@pytest.fixture
def agent(apm_agent):
    apm_agent.clear()
    return apm_agent


def otlp(endpoint: str, **settings) -> dict:
    return {
        "name": NAME,
        "type": "otlp",
        "endpoint": endpoint,
        "history": {"since": "2026-11-20T00:00:00Z"},
        **settings,
    }


def with_values(row: tuple, **values) -> tuple:
    row = list(row)
    for name, value in values.items():
        row[COLUMN[name]] = value
    return tuple(row)


def request_id(row: tuple) -> str:
    return row[COLUMN["request_id"]]


def nanos(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) * 1_000_000


@dataclass(frozen=True)
class SpanView:
    """One received span, as plain values."""

    service: str
    trace_id: str
    span_id: str
    name: str
    kind: int
    start: int
    end: int
    attributes: dict
    status: tuple[int, str]
    events: tuple


def _values(key_values) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in key_values}


def received_requests(agent) -> list[ExportTraceServiceRequest]:
    """What the agent took, one message per request. It hands protobuf back through protobuf's
    JSON mapping (field names, ids in base64) and OTLP/JSON as it was sent: that is parsed
    strictly (unknown names fail), its ids read as hex (anything else fails)."""
    requests = []
    for body in agent.traces():
        if "resourceSpans" in body:
            for resource_spans in body["resourceSpans"]:
                for scope_spans in resource_spans["scopeSpans"]:
                    for span in scope_spans["spans"]:
                        for key in ("traceId", "spanId"):
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
        requests.append(json_format.ParseDict(body, ExportTraceServiceRequest()))
    return requests


def spans_of(requests: list[ExportTraceServiceRequest]) -> dict[str, list[SpanView]]:
    """request id → every span received for it (more than one: a re-send)."""
    found: dict[str, list[SpanView]] = {}
    for request in requests:
        for resource_spans in request.resource_spans:
            service = _values(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = _values(span.attributes)
                    found.setdefault(attributes["prism.request_id"], []).append(
                        SpanView(
                            service,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.name,
                            span.kind,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            attributes,
                            (span.status.code, span.status.message),
                            tuple(
                                (e.name, e.time_unix_nano, _values(e.attributes))
                                for e in span.events
                            ),
                        )
                    )
    return found


def received(agent) -> dict[str, list[SpanView]]:
    return spans_of(received_requests(agent))


def crafted_rows() -> list[tuple]:
    """Four requests that cover every rule of the mapping."""
    rows = gateway_rows(H, 4)
    at = H + timedelta(minutes=22, seconds=10, milliseconds=123)
    return [
        with_values(  # a client's W3C trace id; every field set
            rows[0], timestamp=at, ingested_at=at + timedelta(seconds=1), trace_id=W3C,
            session_id="sess_42", user_id="user_7", model="gpt-4o", model_requested="gpt-4o",
            provider="openai", latency_ms=842, input_tokens=1200, output_tokens=323,
            total_tokens=1523, cost=0.02, status_code=200, is_error=False, cache_hit=True,
            cache_status="hit", guardrail_triggered=False, routing_strategy="Least Latency",
            fallback_used=False, is_stream=True, event_type="request",
        ),
        with_values(  # an error, a fallback, two guardrails, a trace id that is not W3C
            rows[1], trace_id="trace_000001", model="claude-sonnet-4",
            model_requested="claude-opus-4", provider="anthropic", status_code=429,
            is_error=True, error_message="Rate limit reached for requests", latency_ms=120,
            guardrail_triggered=True, fallback_used=True,
            guardrail_results='[{"name": "pii", "action": "flag", "score": 0.92},'
            ' {"name": "toxicity", "action": "block", "score": 0.1}]',
        ),
        with_values(  # nulls: no trace id, user, session, requested model, cost, cache status
            rows[2], trace_id=None, user_id=None, session_id=None, model_requested=None,
            cost=None, cache_status=None, model="gemini-2.5-flash", provider="google",
        ),
        with_values(rows[3], trace_id="0" * 32),  # all zeros: no valid W3C id
    ]  # fmt: skip


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


# -- the span --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, compression",
    [("protobuf", "none"), ("json", "none"), ("protobuf", "gzip"), ("json", "gzip")],
)
def test_each_record_becomes_a_genai_span_with_the_contract_fields(
    prism, gateway, agent, encoding, compression
):
    rows = crafted_rows()
    gateway.insert_rows([rows])
    prism.configure(otlp(agent.url, encoding=encoding, compression=compression))

    run = prism.sync(NAME, KEY)

    assert run.metadata["records"] == 4 and run.metadata["span_requests"] == 1
    spans = received(agent)
    assert sorted(spans) == sorted(request_id(r) for r in rows)
    first, error, nulls, zeros = (spans[request_id(r)][0] for r in rows)
    start = nanos(rows[0][COLUMN["timestamp"]])
    assert (
        first
        == SpanView(
            service="prism-gateway",
            trace_id=W3C,  # the client's own trace: the span joins it
            span_id=sha256(request_id(rows[0]))[:8].hex(),
            name="chat gpt-4o",
            kind=CLIENT,
            start=start,
            end=start + 842_000_000,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 323,
                "gen_ai.conversation.id": "sess_42",
                "session.id": "sess_42",
                "user.id": "user_7",
                "http.response.status_code": 200,
                "prism.request_id": request_id(rows[0]),
                "prism.latency_ms": 842,
                "prism.total_tokens": 1523,
                "prism.cost": 0.02,
                "prism.is_error": False,
                "prism.cache_hit": True,
                "prism.guardrail_triggered": False,
                "prism.routing_strategy": "Least Latency",
                "prism.timestamp": "2026-11-22T14:22:10.123Z",
                "prism.event_type": "request",
                "prism.trace_id": W3C,
                "prism.cache_status": "hit",
                "prism.fallback_used": False,
                "prism.is_stream": True,
            },
            status=(0, ""),
            events=(),
        )
    )

    assert error.trace_id == sha256("trace_000001")[:16].hex()  # hashed, the same every time
    assert error.name == "chat claude-opus-4"  # what the client asked for
    assert error.attributes["gen_ai.request.model"] == "claude-opus-4"
    assert error.attributes["gen_ai.response.model"] == "claude-sonnet-4"
    assert error.status == (ERROR, "Rate limit reached for requests")
    assert error.attributes["error.type"] == "429"
    assert error.attributes["prism.error_message"] == "Rate limit reached for requests"
    assert error.end - error.start == 120_000_000
    assert error.events == (
        ("guardrail", error.start, {"guardrail.name": "pii", "guardrail.action": "flag",
                                    "guardrail.score": 0.92}),
        ("guardrail", error.start, {"guardrail.name": "toxicity", "guardrail.action": "block",
                                    "guardrail.score": 0.1}),
    )  # fmt: skip

    # No trace id: the trace is the request's own (the first 16 bytes of its SHA-256).
    assert nulls.trace_id == sha256(request_id(rows[2]))[:16].hex()
    assert nulls.name == "chat gemini-2.5-flash"
    assert nulls.attributes["gen_ai.request.model"] == "gemini-2.5-flash"
    left_out = {"user.id", "session.id", "gen_ai.conversation.id", "prism.cost"}
    left_out |= {"prism.cache_status", "prism.trace_id", "prism.error_message", "error.type"}
    assert not left_out & set(nulls.attributes)
    assert zeros.trace_id == sha256("0" * 32)[:16].hex()

    [sent] = agent.requests()
    content_type = {"protobuf": "application/x-protobuf", "json": "application/json"}[encoding]
    assert sent["headers"]["Content-Type"] == content_type
    assert sent["headers"].get("Content-Encoding") == ("gzip" if compression == "gzip" else None)


def test_otlp_json_is_the_specifications_mapping(prism, gateway, agent):
    rows = crafted_rows()
    gateway.insert_rows([rows])
    prism.configure(otlp(agent.url, encoding="json"))

    prism.sync(NAME, KEY)

    [body] = agent.traces()  # the JSON as sent
    [resource_spans] = body["resourceSpans"]
    span = next(
        s
        for s in resource_spans["scopeSpans"][0]["spans"]
        if s["traceId"] == W3C  # hex, not base64
    )
    assert span["spanId"] == sha256(request_id(rows[0]))[:8].hex()
    assert span["kind"] == CLIENT  # enums as integers
    assert span["startTimeUnixNano"] == str(nanos(rows[0][COLUMN["timestamp"]]))  # 64-bit: text
    tokens = next(a for a in span["attributes"] if a["key"] == "gen_ai.usage.input_tokens")
    assert tokens == {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}}
    assert resource_spans["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "prism-gateway"}}
    ]


def test_narrowed_fields_narrow_the_attributes_not_the_span(prism, gateway, agent):
    rows = crafted_rows()
    gateway.insert_rows([rows])
    prism.configure(
        otlp(agent.url, fields=["request_id", "model", "cost"], service_name="llm-gateway")
    )

    prism.sync(NAME, KEY)

    first = received(agent)[request_id(rows[0])][0]
    assert first.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o",
        "prism.request_id": request_id(rows[0]),
        "prism.cost": 0.02,
    }
    assert (first.trace_id, first.name, first.service) == (W3C, "chat gpt-4o", "llm-gateway")
    assert first.end - first.start == 842_000_000


# -- requests and the receiver's answers -----------------------------------------------------------


def test_a_413_splits_the_request_and_delivers_every_span_once(prism, gateway, agent):
    # 400 spans with 2 kB error messages (in the status and an attribute): about 2 MB in one
    # request, over the agent's 1 MiB; half of it is under.
    rows = gateway_rows(H, 400, is_error=True, error_message="e" * 2000)
    gateway.insert_rows([rows])
    prism.configure(otlp(agent.url))

    run = prism.sync(NAME, KEY)

    requests = received_requests(agent)
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in requests] == [200, 200]
    assert all(r.ByteSize() < 1 << 20 for r in requests)
    spans = received(agent)
    assert Counter({k: len(v) for k, v in spans.items()}) == Counter(map(request_id, rows))
    assert run.metadata["span_requests_split"] == 1 and run.metadata["span_requests"] == 2
    assert run.metadata["records"] == 400 and run.metadata["rejects"] == 0


def test_requests_stay_within_the_span_count_and_byte_limits(prism, gateway, agent):
    rows = gateway_rows(H, 250, is_error=True, error_message="e" * 1000)
    rows[0] = with_values(rows[0], error_message="x" * 300_000)  # alone over the limit
    gateway.insert_rows([rows])
    prism.configure(otlp(agent.url, spans_per_request=100, max_request_bytes=200_000))

    run = prism.sync(NAME, KEY)

    requests = received_requests(agent)
    assert all(len(r.resource_spans[0].scope_spans[0].spans) <= 100 for r in requests)
    assert all(r.ByteSize() <= 200_000 for r in requests)
    assert sum(len(v) for v in received(agent).values()) == 249
    assert run.metadata["records"] == 249 and run.metadata["rejects"] == 1
    [reject] = prism.ledger.rejects(NAME, H)
    assert reject["request_id"] == request_id(rows[0])
    assert reject["reason"].startswith("too large: the span is ")
    assert "over max_request_bytes (200000)" in reject["reason"]


def test_throttling_and_server_errors_are_retried_honouring_retry_after(prism, gateway, agent):
    rows = gateway_rows(H, 30)
    gateway.insert_rows([rows])
    proxy = FaultProxy(("127.0.0.1", int(agent.url.rsplit(":", 1)[1])))
    proxy.answer(1, 429, {"Retry-After": "2"})
    proxy.answer(2, 503)
    prism.configure(otlp(proxy.url))
    try:
        began = time.monotonic()
        run = prism.sync(NAME, KEY)
        took = time.monotonic() - began
    finally:
        proxy.close()

    assert proxy.injected == ["answered 429", "answered 503", "answered 503"]
    assert took >= 2.0  # the Retry-After was waited for
    assert run.metadata["retries"] == 3 and run.metadata["throttled_429"] == 1
    spans = received(agent)
    assert Counter({k: len(v) for k, v in spans.items()}) == Counter(map(request_id, rows))


def test_a_redone_batch_resends_the_same_ids(prism, gateway, agent):
    rows = gateway_rows(H, 30)
    gateway.insert_rows([rows])
    proxy = FaultProxy(("127.0.0.1", int(agent.url.rsplit(":", 1)[1])))
    prism.configure(otlp(proxy.url, batch_rows=10))
    # The first batch goes through; the second reaches the agent but its answer is lost, and
    # the retry is answered 404: the run fails with the second batch open.
    proxy.pass_through(1)
    proxy.reset(1, after_forwarding=True)
    proxy.answer(1, 404)
    try:
        crashed = prism.sync(NAME, KEY, raise_on_error=False)
        cursor = prism.ledger.cursor(NAME, H)
        run = prism.sync(NAME, KEY)
    finally:
        proxy.close()

    assert not crashed.success and "answered 404" in crashed.error
    assert cursor == 10  # the first batch's ids: 1 to 10
    assert run.metadata["records"] == 20  # the open batch again, then the last one
    spans = received(agent)
    twice = {k for k, v in spans.items() if len(v) == 2}
    assert twice == {request_id(r) for r in rows[10:20]}  # duplicates: the batch in flight
    assert all(len(v) in (1, 2) for v in spans.values()) and len(spans) == 30
    for key in twice:
        again, first = spans[key]
        assert again == first  # same trace id, span id, times and attributes


def test_a_backfilled_day_delivers_each_hour_once(prism, gateway, agent):
    day = datetime(2026, 11, 21, tzinfo=UTC)
    hours = [day + timedelta(hours=h) for h in range(24)]
    gateway.insert_rows([gateway_rows(hour, 5) for hour in hours])
    prism.configure(otlp(agent.url))

    runs = prism.backfill(NAME, [h.strftime("%Y-%m-%d-%H:%M") for h in hours])

    assert all(r.success and r.metadata["records"] == 5 for r in runs.values())
    spans = received(agent)
    assert len(spans) == 120 and all(len(v) == 1 for v in spans.values())
    for hour in hours:
        ids = [request_id(r) for r in gateway_rows(hour, 5)]
        starts = [spans[i][0].start for i in ids]
        assert all(nanos(hour) <= s < nanos(hour + timedelta(hours=1)) for s in starts)


def test_a_refused_header_fails_the_run_and_leaves_the_cursor(prism, gateway, monkeypatch):
    receiver = StrictReceiver(token="right-token")
    rows = gateway_rows(H, 20)
    gateway.insert_rows([rows[:10]])
    headers = {"authorization": {"env": "PRISM_TEST_OTLP_AUTH"}, "x-scope-orgid": "tenant-1"}
    monkeypatch.setenv("PRISM_TEST_OTLP_AUTH", "Bearer right-token")
    prism.configure(otlp(receiver.url, headers=headers))
    try:
        prism.sync(NAME, KEY)
        cursor = prism.ledger.cursor(NAME, H)
        gateway.insert_rows([rows[10:]])
        monkeypatch.setenv("PRISM_TEST_OTLP_AUTH", "Bearer revoked-token")

        refused = prism.sync(NAME, KEY, raise_on_error=False)

        assert not refused.success
        assert (
            "the OTLP receiver at" in refused.error
            and "refused the credentials (401" in refused.error
        )
        assert (
            "check the header(s) authorization (from the environment variable "
            "PRISM_TEST_OTLP_AUTH)" in refused.error
        )
        assert "revoked-token" not in refused.error
        assert prism.ledger.cursor(NAME, H) == cursor
        assert "refused the credentials" in prism.ledger.partition_state(NAME, H).last_error

        monkeypatch.setenv("PRISM_TEST_OTLP_AUTH", "Bearer right-token")
        again = prism.sync(NAME, KEY)
    finally:
        receiver.close()
    assert again.metadata["records"] == 10
    assert sorted(_values(s.attributes)["prism.request_id"] for s in receiver.spans) == sorted(
        map(request_id, rows)
    )


def sync_to_strict_receiver(prism, gateway, monkeypatch, rows, **receiver_settings):
    """Sync ``rows`` to a ``StrictReceiver`` (bearer token ``t``) with ``receiver_settings``;
    the run and what the receiver took."""
    receiver = StrictReceiver(token="t", **receiver_settings)
    gateway.insert_rows([rows])
    monkeypatch.setenv("PRISM_TEST_OTLP_AUTH", "Bearer t")
    prism.configure(otlp(receiver.url, headers={"authorization": {"env": "PRISM_TEST_OTLP_AUTH"}}))
    try:
        return prism.sync(NAME, KEY, raise_on_error=False), receiver
    finally:
        receiver.close()


def test_spans_the_receiver_refuses_go_to_the_rejects_with_its_message(prism, gateway, monkeypatch):
    def refuse(span) -> str | None:
        if _values(span.attributes).get("user.id") == "user_0":
            return "user.id user_0 is blocked by policy"
        return None

    rows = gateway_rows(H, 40)
    run, _ = sync_to_strict_receiver(prism, gateway, monkeypatch, rows, refuse=refuse)
    assert run.success, run.error

    refused = sum(1 for r in rows if r[COLUMN["user_id"]] == "user_0")
    assert refused == 3
    assert run.metadata["records"] == 40 - refused and run.metadata["rejects"] == refused
    assert run.metadata["reject_reasons"] == {"refused by the receiver (partial success)": 3}
    rejects = prism.ledger.rejects(NAME, H)
    assert len(rejects) == refused
    assert all("user.id user_0 is blocked by policy" in r["reason"] for r in rejects)
    assert all("OTLP does not say which" in r["reason"] for r in rejects)
    assert prism.ledger.cursor(NAME, H) > 0  # refused for good: recorded, not retried


def test_a_400_rejects_only_the_spans_the_receiver_cannot_take(prism, gateway, monkeypatch):
    def bad_data(span) -> str | None:
        if _values(span.attributes).get("user.id") == "user_0":
            return "invalid attribute user.id"
        return None

    rows = gateway_rows(H, 40)
    run, receiver = sync_to_strict_receiver(prism, gateway, monkeypatch, rows, bad_data=bad_data)
    assert run.success, run.error

    bad = {request_id(r) for r in rows if r[COLUMN["user_id"]] == "user_0"}
    assert len(bad) == 3
    assert run.metadata["records"] == 37 and run.metadata["rejects"] == 3
    taken = [_values(s.attributes)["prism.request_id"] for s in receiver.spans]
    assert sorted(taken) == sorted(set(map(request_id, rows)) - bad)  # each once
    rejects = prism.ledger.rejects(NAME, H)
    assert {r["request_id"] for r in rejects} == bad
    assert {r["reason"] for r in rejects} == {
        "refused by the receiver (400): invalid attribute user.id"
    }


def test_a_receiver_that_refuses_every_span_stops_the_run(prism, gateway, monkeypatch):
    run, _ = sync_to_strict_receiver(
        prism, gateway, monkeypatch, gateway_rows(H, 10), bad_data=lambda span: "cannot decode span"
    )

    assert not run.success
    assert "refuses every span as bad data (400 Bad Request: cannot decode span)" in run.error
    assert prism.ledger.cursor(NAME, H) == 0 and prism.ledger.rejects(NAME, H) == []


# -- Validate & Continue and the integrations file -------------------------------------------------


def test_validate_posts_an_empty_request_and_explains_what_is_wrong(prism, agent, monkeypatch):
    prism.configure(otlp(agent.url, encoding="json", compression="gzip"))
    ok, message = prism.validate(NAME)
    assert ok, message
    assert f"the OTLP receiver at {agent.url}/v1/traces accepted an empty export request" in message
    assert received_requests(agent) == [ExportTraceServiceRequest()]

    prism.configure(otlp(agent.url + "/otlp"))  # a path the agent does not serve
    ok, message = prism.validate(NAME)
    assert not ok and f"no OTLP trace receiver at {agent.url}/otlp/v1/traces (404" in message
    assert "endpoint is the receiver's base URL" in message

    prism.configure(otlp("http://127.0.0.1:9"))  # nothing listens
    ok, message = prism.validate(NAME)
    assert not ok and "failed 3 times, last with cannot connect" in message

    receiver = StrictReceiver(token="right")
    monkeypatch.setenv("PRISM_TEST_OTLP_AUTH", "Bearer wrong")
    prism.configure(otlp(receiver.url, headers={"authorization": {"env": "PRISM_TEST_OTLP_AUTH"}}))
    try:
        ok, message = prism.validate(NAME)
    finally:
        receiver.close()
    assert (
        not ok and "refused the credentials (401 Unauthorized: invalid or missing token)" in message
    )


def test_a_wrong_otlp_entry_gets_one_line_per_problem(tmp_path):
    path = tmp_path / "integrations.yaml"
    path.write_text(
        """
integrations:
  - name: no_endpoint
    type: otlp
  - name: bad_encoding
    type: otlp
    endpoint: http://collector:4318
    encoding: xml
    compression: brotli
  - name: inline_key
    type: otlp
    endpoint: https://otlp.example.com
    headers: {dd-api-key: 0123456789abcdef, dd-otlp-source: llmobs}
  - name: full_path
    type: otlp
    endpoint: http://collector:4318/v1/traces
"""
    )
    with pytest.raises(IntegrationsFileError) as raised:
        load_integrations(path)
    problems = raised.value.problems
    assert "integration 'no_endpoint': endpoint: Field required" in problems
    assert (
        "integration 'bad_encoding': encoding: must be protobuf or json (protobuf, the default, "
        "or OTLP/JSON)" in problems
    )
    assert (
        "integration 'bad_encoding': compression: must be none or gzip (none, the default, or "
        "gzip)" in problems
    )
    assert (
        "integration 'inline_key': headers: dd-api-key: a credential header is never written "
        "inline: write it as {env: VAR_NAME}" in problems
    )
    assert (
        "integration 'full_path': endpoint: is the receiver's base URL: leave out /v1/traces, "
        "which is added to it" in problems
    )
    assert "0123456789abcdef" not in str(raised.value)
    assert len(problems) == 5
