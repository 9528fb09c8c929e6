"""Properties, over any input hypothesis finds: the checks and the encoders turn any reader row
into one JSON line a strict parser reads back with the contract's fields and types (the same
bytes whether written from the columns or record by record, and the same values in Parquet's
columns), or into a reject with its reason; the SQS request builder never builds a request SQS
refuses (≤ 10 entries, ids unique and valid, no message over the queue's MaximumMessageSize,
no request over the smaller of the request limit and that size — 256 KiB for a queue left at
256 KiB) and accounts for every record."""

from __future__ import annotations

import json
import re
from datetime import datetime

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism_pipelines.batch import Chunk
from prism_pipelines.integrations import IntegrationsFile
from prism_pipelines.records import EXPORTED_FIELDS, check_chunk, rows_to_batch
from prism_pipelines.sinks.sqs import SqsSink
from prism_pipelines.sinks.storage.parquet import SCHEMA
from prism_pipelines_tests.faults.conftest import SEED

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TEXT = {"request_id", "model", "provider", "routing_strategy", "event_type", "trace_id"}
TEXT |= {"session_id", "user_id", "model_requested", "cache_status", "error_message"}
INTEGER = {"latency_ms", "input_tokens", "output_tokens", "total_tokens", "status_code"}
BOOLEAN = {"is_error", "cache_hit", "guardrail_triggered", "fallback_used", "is_stream"}
REQUIRED = {"request_id", "model", "provider"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
#: a SendMessageBatch entry id: alphanumerics, hyphens and underscores, 1 to 80 characters
ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
DEDUPLICATION_ID = re.compile(r"^[!-~]{1,128}$")
KIB = 1024


def _strict(line: bytes) -> dict:
    """json.loads that refuses what JSON does not have (NaN, Infinity)."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def _maybe(strategy):
    return st.one_of(st.none(), strategy)


#: SQLite's canonical UTC text, as the reader selects it (``source.sqlite_utc``); or no time
_stamps = st.one_of(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda t: t.isoformat(sep=" ", timespec="milliseconds")
    ),
    st.none(),
)
_json_text = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
).map(lambda value: json.dumps(value))
_values = {
    **{name: _maybe(st.text()) for name in TEXT},
    **{name: _maybe(st.integers(-(2**31), 2**31 - 1)) for name in INTEGER},
    **{name: _maybe(st.booleans()) for name in BOOLEAN},
    "cost": _maybe(st.floats()),
    "timestamp": _stamps,
    # the gateway's JSON text, or text that is not JSON at all
    "guardrail_results": _maybe(st.one_of(_json_text, st.text())),
}
_row = st.tuples(*(_values[name] for name in EXPORTED_FIELDS))


@PROPERTY
@given(st.lists(_row, min_size=1, max_size=20))
def test_any_row_becomes_a_strict_json_record_of_the_contract_or_a_reject(rows):
    names = [*EXPORTED_FIELDS, "id"]
    checked = check_chunk(rows_to_batch([(*row, 1000 + i) for i, row in enumerate(rows)], names))
    chunk = Chunk(checked)
    records, rejects, ids = chunk.records, checked.rejects, chunk.ids
    assert len(records) + len(rejects) == len(rows), f"seed {SEED}: a row vanished"
    assert sorted(ids + [r.source_id for r in rejects]) == [1000 + i for i in range(len(rows))]
    for reject in rejects:
        assert reject.reason.startswith("malformed row: "), reject.reason
    jsonl = b"".join(chunk.jsonl())
    assert jsonl == b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
    lines = jsonl.split(b"\n")
    assert lines.pop() == b"" and len(lines) == len(records)
    for line, source_id in zip(lines, ids, strict=True):
        record = _strict(line)
        row = dict(zip(EXPORTED_FIELDS, rows[source_id - 1000], strict=True))
        assert list(record) == list(EXPORTED_FIELDS)
        for name, value in record.items():
            if name in REQUIRED:
                assert isinstance(value, str) and value == row[name]
            elif name in TEXT:
                assert value is None or isinstance(value, str)
            elif name in INTEGER:
                assert value is None or (isinstance(value, int) and not isinstance(value, bool))
            elif name in BOOLEAN:
                assert value is None or isinstance(value, bool)
            elif name == "cost":
                assert value is None or isinstance(value, int | float)
            elif name == "timestamp":
                assert TIMESTAMP.match(value), value
                assert value[:23] == row[name].replace(" ", "T"), (value, row[name])
            else:  # guardrail_results: the gateway's JSON, parsed
                assert row[name] is None or value == _strict(row[name].encode())
    # Parquet's columns hold the same values (guardrail results: the JSON text)
    columns = chunk.table().cast(SCHEMA, safe=False).to_pydict()
    for i, record in enumerate(records):
        for name, value in record.items():
            stored = columns[name][i]
            if name == "guardrail_results":
                assert (stored is None and value is None) or _strict(stored.encode()) == value
            elif name == "timestamp":
                assert stored.isoformat(timespec="milliseconds")[:23] + "Z" == value
            else:
                assert stored == value or value is None is stored


def _sqs_sink(fifo: bool, max_message_bytes: int) -> SqsSink:
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/logs" + (".fifo" if fifo else "")
    entry = {
        "name": "queue",
        "type": "sqs",
        "queue_url": url,
        "region": "us-east-1",
        **({"group_id_field": "user_id"} if fifo else {}),
    }
    sink = SqsSink(IntegrationsFile.model_validate({"integrations": [entry]}).integrations[0])
    sink.max_message_bytes = max_message_bytes
    return sink


def _chunk(records: list[dict]) -> Chunk:
    """A checked chunk whose records (narrowed to the strategy's fields) are ``records``."""
    required = {"model": "m", "provider": "p", "timestamp": "2026-03-31 14:22:10.000"}
    rows = [
        (*(r.get(f, required.get(f)) for f in EXPORTED_FIELDS), n)
        for n, r in enumerate(records, start=1)
    ]
    return Chunk(check_chunk(rows_to_batch(rows, [*EXPORTED_FIELDS, "id"])), _RECORD_FIELDS)


#: the fields of ``_record``, an integration's narrowed list
_RECORD_FIELDS = ("request_id", "user_id", "error_message", "cost")
_record = st.fixed_dictionaries(
    {
        "request_id": st.one_of(st.text(min_size=1, max_size=200), st.just("req_1")),
        "user_id": _maybe(st.text(max_size=200)),
        "error_message": st.integers(0, 300 * KIB).map(lambda n: "e" * n) | st.text(),
        "cost": _maybe(st.floats(allow_nan=False)),
    }
)


@PROPERTY
@given(
    records=st.lists(_record, min_size=1, max_size=40),
    fifo=st.booleans(),
    max_message_bytes=st.sampled_from([1 * KIB, 64 * KIB, 256 * KIB, 1024 * KIB]),
)
def test_sqs_requests_keep_to_the_service_limits_and_account_for_every_record(
    records, fifo, max_message_bytes
):
    sink = _sqs_sink(fifo, max_message_bytes)
    chunk = _chunk(records)
    rejects = []
    entries = sink._entries(chunk, rejects)
    requests = list(sink._requests(entries))
    sent = [entry for request in requests for entry in request]
    assert [e.source_id for e in sent] == [e.source_id for e in entries], "order or loss"
    assert sorted([e.source_id for e in sent] + [r.source_id for r in rejects]) == chunk.ids
    request_limit = min(1024 * KIB, max_message_bytes)
    for request in requests:
        assert 1 <= len(request) <= 10
        ids = [e.entry["Id"] for e in request]
        assert len(set(ids)) == len(ids) and all(ENTRY_ID.match(i) for i in ids), ids
        total = 0
        for e in request:
            message = e.entry
            size = len(message["MessageBody"].encode()) + sum(
                len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
                for name, a in message["MessageAttributes"].items()
            )
            assert size <= max_message_bytes, f"a {size}-byte message for a {max_message_bytes}"
            total += size
            if fifo:
                assert DEDUPLICATION_ID.match(message["MessageDeduplicationId"])
                assert DEDUPLICATION_ID.match(message["MessageGroupId"])
        assert total <= request_limit, f"a {total}-byte request (limit {request_limit})"
    for reject in rejects:
        assert reject.reason.startswith(("too large for SQS", "invalid characters for SQS"))


def test_sqs_limits_are_the_services():
    """256 KiB for a queue at the old default, 1 MiB at most since August 2025."""
    sink = _sqs_sink(False, 256 * KIB)
    big = {"request_id": "req_big", "error_message": "x" * (200 * KIB)}
    entries = sink._entries(_chunk([big] * 3), [])
    assert [len(r) for r in sink._requests(entries)] == [1, 1, 1]
