"""The exported record: the spec's fifteen fields first, then the extended ones, and its encoding.

This is the hot path of every export: one dict per row, built once, then serialised by orjson
as a whole chunk. Rows arrive as tuples in ``source.COLUMNS`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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


def build_records(
    rows, fields: tuple[str, ...] | None = None
) -> tuple[list[dict], list[int], list[Reject]]:
    """Exported records for a chunk of rows, with their source ids, and the rows that cannot be
    exported (a required value missing, unreadable guardrail results) as rejects."""
    records: list[dict] = []
    ids: list[int] = []
    rejects: list[Reject] = []
    loads = orjson.loads
    for r in rows:
        if r[1] is None or r[7] is None or r[9] is None:
            missing = [
                n for n, i in (("request_id", 1), ("model", 7), ("provider", 9)) if r[i] is None
            ]
            rejects.append(Reject(r[0], r[1], f"malformed row: {', '.join(missing)} is null"))
            continue
        guardrails = r[21]
        if guardrails is not None:
            try:
                guardrails = loads(guardrails)
            except orjson.JSONDecodeError as exc:
                rejects.append(
                    Reject(r[0], r[1], f"malformed row: guardrail_results is not JSON ({exc})")
                )
                continue
        cost = r[14]
        record = {
            "request_id": r[1],
            "model": r[7],
            "provider": r[9],
            "latency_ms": r[10],
            "input_tokens": r[11],
            "output_tokens": r[12],
            "total_tokens": r[13],
            "cost": cost if cost is None or type(cost) is float else float(cost),
            "status_code": r[15],
            "is_error": r[16],
            "cache_hit": r[18],
            "guardrail_triggered": r[20],
            "routing_strategy": r[22],
            "timestamp": format_timestamp(r[2]),
            "event_type": r[25],
            "trace_id": r[4],
            "session_id": r[5],
            "user_id": r[6],
            "model_requested": r[8],
            "cache_status": r[19],
            "fallback_used": r[23],
            "is_stream": r[24],
            "error_message": r[17],
            "guardrail_results": guardrails,
        }
        if fields is not None:
            record = {f: record[f] for f in fields}
        records.append(record)
        ids.append(r[0])
    return records, ids, rejects


def encode_record(record: dict) -> bytes:
    return orjson.dumps(record)


def encode_jsonl(records: list[dict]) -> bytes:
    """Newline-terminated JSON lines for a whole chunk, in one pass."""
    if not records:
        return b""
    return b"\n".join(map(orjson.dumps, records)) + b"\n"
