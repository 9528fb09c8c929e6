"""The exported record: the spec's fifteen fields first, then the extended ones, and its encoding.

This is the hot path of every export. The reader (``source.GatewaySource.stream_rows``) hands
over rows already in the record's shape: the exported fields in order, ``timestamp`` already
formatted, ``cost`` already a float, then the source id. ``check_rows`` keeps the rows that can
be exported; only the few rows that need it (guardrail results to parse, a required value
missing, a cost that is not a finite number) cost any per-row Python, and the checks that find
them are per chunk, at C speed. A sink then takes the checked rows in the shape it sends:
records (one dict display per row: JSON lines, queue messages, Datadog) or columns (one
transposition of the chunk: Parquet), and pays only for that one. What happens to which bad
row is in docs/reliability.md, "Bad rows".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress, repeat
from operator import is_not, itemgetter

import orjson

SPEC_FIELDS = (
    "request_id",
    "model",
    "provider",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost",
    "status_code",
    "is_error",
    "cache_hit",
    "guardrail_triggered",
    "routing_strategy",
    "timestamp",
    "event_type",
)
EXTENDED_FIELDS = (
    "trace_id",
    "session_id",
    "user_id",
    "model_requested",
    "cache_status",
    "fallback_used",
    "is_stream",
    "error_message",
    "guardrail_results",
)
EXPORTED_FIELDS = SPEC_FIELDS + EXTENDED_FIELDS
#: the exported fields that are not text, by type; the rest are text (``timestamp`` formatted,
#: ``guardrail_results`` the gateway's JSON)
INTEGER_FIELDS = ("latency_ms", "input_tokens", "output_tokens", "total_tokens", "status_code")
FLOAT_FIELDS = ("cost",)
BOOLEAN_FIELDS = ("is_error", "cache_hit", "guardrail_triggered", "fallback_used", "is_stream")

# Positions in a reader row: the exported fields in order, then the source id, then (when the
# reader was given a settle time) whether the row is younger than that.
ROW_ID = len(EXPORTED_FIELDS)
ROW_UNSETTLED = ROW_ID + 1
ROW_TIMESTAMP = EXPORTED_FIELDS.index("timestamp")
_ROW_GUARDRAILS = EXPORTED_FIELDS.index("guardrail_results")
_ROW_COST = EXPORTED_FIELDS.index("cost")
_ROW_REQUIRED = tuple(
    (EXPORTED_FIELDS.index(f), problem)
    for f, problem in (
        ("request_id", "request_id is null"),
        ("model", "model is null"),
        ("provider", "provider is null"),
        ("timestamp", "timestamp is null or not a valid time"),
    )
)
#: a field's position in a reader row
_POSITION = {f: i for i, f in enumerate(EXPORTED_FIELDS)}
#: the run-metadata counter of costs sent as null (JSON has no NaN or Infinity)
COSTS_NOT_FINITE = "costs_not_finite_sent_as_null"


class MalformedRows(list):
    """A chunk of reader rows some of which could not be read whole (text that is not UTF-8):
    ``malformed`` maps a row's position to what is wrong; ``build_records`` rejects them."""

    def __init__(self):
        super().__init__()
        self.malformed: dict[int, str] = {}


@dataclass(frozen=True, slots=True)
class Reject:
    """A row a destination will never take, kept with its reason instead of being dropped."""

    source_id: int
    request_id: str | None
    reason: str
    record: dict | None = None


def format_timestamp(value: datetime) -> str:
    """``2026-03-31T14:22:10.000Z``; naive values (SQLite) are UTC already."""
    text = value.isoformat(timespec="milliseconds")
    if len(text) == 23:
        return text + "Z"
    if not text.endswith("+00:00"):
        text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text[:23] + "Z"


def check_rows(
    rows: list[tuple], counters: Counter | None = None
) -> tuple[list[tuple], list[int], list[Reject], dict[int, object]]:
    """The rows of a chunk that can be exported, with their source ids, the rows that cannot (a
    required value missing, unreadable text or guardrail results) as rejects, and the exported
    rows' guardrail results parsed, by position. A cost that is NaN or infinite becomes null
    in its row (JSON has no NaN or Infinity), counted in ``counters``."""
    bad = {i: f"malformed row: {problem}" for i, problem in getattr(rows, "malformed", {}).items()}
    if any(None in map(itemgetter(position), rows) for position, _ in _ROW_REQUIRED):
        for i, row in enumerate(rows):
            missing = [problem for position, problem in _ROW_REQUIRED if row[position] is None]
            if missing and i not in bad:
                bad[i] = f"malformed row: {', '.join(missing)}"
    # NaN and infinities make the sum non-finite: one C-level pass finds whether to look.
    if not math.isfinite(sum(filter(None, map(itemgetter(_ROW_COST), rows)))):
        rows = list(rows)  # the reader's list stays as read (its ``malformed`` is kept above)
        not_finite = 0
        for i, row in enumerate(rows):
            cost = row[_ROW_COST]
            if cost is not None and not math.isfinite(cost):
                rows[i] = (*row[:_ROW_COST], None, *row[_ROW_COST + 1 :])
                not_finite += 1
        if counters is not None and not_finite:
            counters[COSTS_NOT_FINITE] += not_finite
    guardrails = {}
    texts = [row[_ROW_GUARDRAILS] for row in rows]
    loads = orjson.loads
    for i in compress(range(len(rows)), map(is_not, texts, repeat(None))):
        if i in bad:
            continue
        try:
            guardrails[i] = loads(texts[i])
        except orjson.JSONDecodeError as exc:
            bad[i] = f"malformed row: guardrail_results is not JSON ({exc})"
    rejects = [Reject(rows[i][ROW_ID], rows[i][0], reason) for i, reason in sorted(bad.items())]
    if bad:
        kept = [i for i in range(len(rows)) if i not in bad]
        position = {i: n for n, i in enumerate(kept)}
        guardrails = {position[i]: value for i, value in guardrails.items()}
        rows = [rows[i] for i in kept]
    return rows, list(map(itemgetter(ROW_ID), rows)), rejects, guardrails


def build_records(
    rows: list[tuple], guardrails: dict[int, object], fields: tuple[str, ...] | None = None
) -> list[dict]:
    """Exported records of checked rows (``check_rows``), with their guardrail results parsed,
    narrowed to ``fields``."""
    # A dict display: a third faster than dict(zip(EXPORTED_FIELDS, row)), in the same order.
    records = [
        {
            "request_id": r[0],
            "model": r[1],
            "provider": r[2],
            "latency_ms": r[3],
            "input_tokens": r[4],
            "output_tokens": r[5],
            "total_tokens": r[6],
            "cost": r[7],
            "status_code": r[8],
            "is_error": r[9],
            "cache_hit": r[10],
            "guardrail_triggered": r[11],
            "routing_strategy": r[12],
            "timestamp": r[13],
            "event_type": r[14],
            "trace_id": r[15],
            "session_id": r[16],
            "user_id": r[17],
            "model_requested": r[18],
            "cache_status": r[19],
            "fallback_used": r[20],
            "is_stream": r[21],
            "error_message": r[22],
            "guardrail_results": r[23],
        }
        for r in rows
    ]
    for i, value in guardrails.items():
        records[i]["guardrail_results"] = value
    if fields is not None:
        records = [{f: record[f] for f in fields} for record in records]
    return records


def build_columns(rows: list[tuple], fields: tuple[str, ...] | None = None) -> dict[str, tuple]:
    """The exported fields of checked rows (``check_rows``) as columns, by name, in the
    record's order (or ``fields``'): one C-level transposition, no record built.
    ``guardrail_results`` stays the gateway's JSON text, checked to be JSON."""
    columns = tuple(zip(*rows, strict=True)) if rows else ((),) * ROW_ID
    return {f: columns[_POSITION[f]] for f in fields or EXPORTED_FIELDS}


def encode_record(record: dict) -> bytes:
    return orjson.dumps(record)


def encode_jsonl(records: list[dict]) -> bytes:
    """Newline-terminated JSON lines for a whole chunk, appended one record at a time: orjson
    gives every document an 8 KiB buffer, so a list of a chunk's documents for ``join`` cost
    ~46 MB per 5,000 records where their JSONL is 5 MB."""
    out = bytearray()
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for record in records:
        out += dumps(record, option=newline)
    return bytes(out)
