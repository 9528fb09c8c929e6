"""Datadog log entries: one per exported record, and the requests that carry them.

An entry is the exported record (its fields become log attributes: ``@model``,
``@latency_ms``…) plus Datadog's reserved attributes: ``ddsource``, ``service``, ``message``
(the spec's one-line summary), ``status`` (info | error) and ``ddtags``. The record's own
``timestamp`` (ISO 8601, UTC) is Datadog's date attribute, so a log lands at its event time.

Requests stay inside the documented limits of ``POST /api/v2/logs``: at most
``logs_per_request`` (≤ 1000) entries, under 5 MB uncompressed, no entry over 1 MB. Sizes are
measured with the serializer the official client uses (``json.dumps``, ASCII-escaped), so the
bytes counted are the bytes sent before gzip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from prism_pipelines.records import Reject, format_timestamp

MAX_ENTRIES_PER_REQUEST = 1000  # "Maximum array size if sending multiple logs in an array"
MAX_REQUEST_BYTES = 5_000_000  # "Maximum content size per payload (uncompressed): 5MB"
MAX_ENTRY_BYTES = 1_000_000  # "Maximum size for a single log: 1MB" (Datadog truncates beyond)
#: "Log events can be submitted with a timestamp that is up to 18 hours in the past."
MAX_LOG_AGE = timedelta(hours=18)
#: sent this close to the limit, a log could be past it when Datadog reads it
LOG_AGE_MARGIN = timedelta(minutes=5)
#: the error text appended to the one-line summary (the whole text is in @error_message)
SUMMARY_ERROR_CHARS = 500
TRIM_MARK = " …[trimmed]"
TAG_MAX_CHARS = 200  # Datadog's limit for one tag
GATEWAY_TAG = "gateway:prism"
TOO_OLD = "log older than 18 h"

_TAG_DISALLOWED = re.compile(r"[^a-z0-9_\-:./]")
_UNDERSCORES = re.compile(r"_{2,}")


@lru_cache(maxsize=8192)  # the same few models, providers and codes, row after row
def tag(key: str, value) -> str:
    """``key:value`` normalised the way Datadog normalises tags (lower case; characters other
    than letters, digits, ``_ - : . /`` become ``_``; at most 200 characters), so what we send
    is what a user types in a filter. An empty or missing value is ``none``."""
    if value is None or value == "":
        text = "none"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = _UNDERSCORES.sub("_", _TAG_DISALLOWED.sub("_", str(value).lower())).strip("_")
        text = text or "none"
    return f"{key}:{text}"[:TAG_MAX_CHARS]


def log_tags(record: dict, extra: tuple[str, ...]) -> str:
    """The spec's tags (model, provider, status_code, gateway, error, cache, guardrail, routing)
    and the integration's own, as Datadog's comma-separated ``ddtags``."""
    cache = record.get("cache_status") or (
        None if record.get("cache_hit") is None else ("hit" if record["cache_hit"] else "miss")
    )
    tags = [
        tag("model", record.get("model")),
        tag("provider", record.get("provider")),
        tag("status_code", record.get("status_code")),
        GATEWAY_TAG,
        tag("error", bool(record.get("is_error"))),
        tag("cache", cache),
        tag("guardrail", bool(record.get("guardrail_triggered"))),
        tag("routing", record.get("routing_strategy")),
    ]
    tags.extend(t.replace(",", "_") for t in extra)
    return ",".join(tags)


def format_cost(cost: float) -> str:
    """Dollars with two decimals, more (up to four) when the cost is under a cent."""
    text = f"{cost:.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def summary(record: dict) -> str:
    """``[openai] gpt-4o status=200 latency=842ms tokens=1523 cost=$0.02`` (the spec's form),
    then ``error: <message>`` on errors. Unknown values are left out."""
    parts = [f"[{record.get('provider') or 'unknown'}] {record.get('model') or 'unknown'}"]
    if record.get("status_code") is not None:
        parts.append(f"status={record['status_code']}")
    if record.get("latency_ms") is not None:
        parts.append(f"latency={record['latency_ms']}ms")
    tokens = record.get("total_tokens")
    if tokens is None and (
        record.get("input_tokens") is not None or record.get("output_tokens") is not None
    ):
        tokens = (record.get("input_tokens") or 0) + (record.get("output_tokens") or 0)
    if tokens is not None:
        parts.append(f"tokens={tokens}")
    if record.get("cost") is not None:
        parts.append(f"cost=${format_cost(record['cost'])}")
    if record.get("is_error"):
        error = " ".join((record.get("error_message") or "").split())
        if len(error) > SUMMARY_ERROR_CHARS:
            error = error[:SUMMARY_ERROR_CHARS] + "…"
        parts.append(f"error: {error}" if error else "error")
    return " ".join(parts)


def encoded_size(value) -> int:
    """Bytes of ``value`` as the client serializes it (``json.dumps``: ASCII, ``", "``)."""
    return len(json.dumps(value))


@dataclass
class Entry:
    """One log entry ready to send, with what a reject needs should Datadog refuse it."""

    body: dict
    size: int
    source_id: int
    record: dict

    def reject(self, reason: str) -> Reject:
        return Reject(self.source_id, self.record.get("request_id"), reason, self.record)


class LogEncoder:
    """Exported records → log entries, or rejects for the logs Datadog would not take."""

    def __init__(self, integration, now: datetime):
        self.integration = integration
        self.now = now
        self.oldest = now - MAX_LOG_AGE + LOG_AGE_MARGIN
        self.extra_tags = tuple(integration.tags)
        self.too_old = 0
        self.sent_late = 0
        self.trimmed = 0

    def encode(self, record: dict, source_id: int, event_time: datetime | None) -> Entry | Reject:
        """The log entry for ``record`` (whose parsed ``timestamp`` is ``event_time``)."""
        body = {
            "ddsource": self.integration.ddsource,
            "service": self.integration.service,
            "status": "error" if record.get("is_error") else "info",
            "ddtags": log_tags(record, self.extra_tags),
            "message": summary(record),
            **record,
        }
        stamp = record.get("timestamp")
        if event_time is not None and event_time < self.oldest:
            if self.integration.old_logs == "reject":
                self.too_old += 1
                hours = (self.now - event_time).total_seconds() / 3600
                return Reject(
                    source_id,
                    record.get("request_id"),
                    f"{TOO_OLD}: its event time {stamp} was {hours:.1f} h old when sent, and "
                    "Datadog's logs intake only takes the last 18 hours (old_logs: send_now "
                    "sends such logs with the current time)",
                    record,
                )
            self.sent_late += 1
            body["timestamp"] = format_timestamp(self.now)
            body["original_timestamp"] = stamp
        size = encoded_size(body)
        if size > MAX_ENTRY_BYTES:
            size = self._trim(body, size)
        return Entry(body, size, source_id, record)

    def _trim(self, body: dict, size: int) -> int:
        """Cut the longest text fields until the entry is under 1 MB, and say so in
        ``@truncated_fields`` and ``@original_size_bytes``."""
        self.trimmed += 1
        body["truncated_fields"] = []
        body["original_size_bytes"] = size
        candidates = sorted(
            (
                k
                for k, v in body.items()
                if k not in _KEEP and isinstance(v, (str, list, dict)) and encoded_size(v) > 1024
            ),
            key=lambda k: encoded_size(body[k]),
            reverse=True,
        )
        for key in candidates:
            body["truncated_fields"].append(key)
            size = encoded_size(body)
            value = body[key]
            text = value if isinstance(value, str) else json.dumps(value)
            # The new value's encoding (quotes included) must shrink by the excess.
            budget = encoded_size(value) - (size - MAX_ENTRY_BYTES) - encoded_size(TRIM_MARK) + 2
            body[key] = _prefix_within(text, budget) + TRIM_MARK
            size = encoded_size(body)
            if size <= MAX_ENTRY_BYTES:
                break
        return size


def _prefix_within(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON encoding (quotes included) fits ``budget``
    bytes: a non-ASCII character costs up to 12 bytes escaped, so search, do not divide."""
    low, high = 0, min(len(text), max(budget, 0))
    while low < high:
        middle = (low + high + 1) // 2
        if encoded_size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


#: never trimmed: Datadog's own attributes and the short identifying fields
_KEEP = {"ddsource", "service", "status", "ddtags", "timestamp", "truncated_fields"}


class LogRequests:
    """Packs entries into requests within the count and byte limits, in arrival order."""

    def __init__(self, max_entries: int):
        self.max_entries = min(max_entries, MAX_ENTRIES_PER_REQUEST)
        self.pending: list[Entry] = []
        self.pending_bytes = 2  # "[" and "]"

    def add(self, entry: Entry) -> list[Entry] | None:
        """Queue ``entry``; returns a full request to send first, if it would not fit."""
        full = None
        if self.pending and (
            len(self.pending) >= self.max_entries
            or self.pending_bytes + 2 + entry.size > MAX_REQUEST_BYTES
        ):
            full = self.flush()
        self.pending.append(entry)
        self.pending_bytes += entry.size + (2 if len(self.pending) > 1 else 0)
        return full

    def flush(self) -> list[Entry]:
        entries, self.pending, self.pending_bytes = self.pending, [], 2
        return entries


def request_size(entries: list[Entry]) -> int:
    return 2 + sum(e.size for e in entries) + 2 * max(0, len(entries) - 1)


def halves(entries: list[Entry]) -> Iterator[list[Entry]]:
    middle = len(entries) // 2
    yield entries[:middle]
    yield entries[middle:]
