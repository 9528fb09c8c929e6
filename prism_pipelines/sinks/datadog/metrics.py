"""Datadog metrics: the batch's requests aggregated per window of event time, and the payloads
that carry them to ``POST /api/v2/series``.

Windows and timestamps (why nothing is overwritten)
---------------------------------------------------
Datadog stores a series (metric name + tags) at one-second resolution, and a point sent for a
second that already holds one *replaces* it — for counts as for gauges. So two deliveries that
both have rows of one window must not write the same second, and a redelivery of the same rows
must write the same second again.

- A row's window is the sync interval of event time it falls in (5 minutes by default; the
  intervals all divide the hour, so a window never straddles two partitions). Counts carry the
  window length as their ``interval``.
- A batch writes each of its windows at ``window start + slot`` seconds, where the slot is the
  batch's own: its ordinal in the partition (``Batch.ordinal``), modulo the slots a window has
  (its length in seconds, at most 600 so that a point is never more than 10 minutes ahead of
  its rows, Datadog's limit for the future).
- So the rows of one window delivered by two batches (a sync that ran mid-window, a late row)
  land on two different seconds of the window and Datadog adds them up in any rollup; and a
  batch that is redone (crash, rows committed out of order, full redelivery) covers the same
  rows or a superset, writes the same seconds and replaces its own earlier points, never
  someone else's.

Every point is a finite number (JSON has no NaN or Infinity, and Datadog refuses a payload
holding one): a value that is not is left out and counted. Points older than Datadog's window
(one hour, less a margin for the time a request takes) are skipped and counted, unless the
integration says ``old_metrics: submit`` (for accounts with historical metric ingestion, where
the same seconds are kept the same way).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prism_pipelines.sinks.datadog.logs import tag

COUNT = 1  # MetricIntakeType.COUNT
GAUGE = 3  # MetricIntakeType.GAUGE
#: "timestamps ... cannot be more than ten minutes in the future or more than one hour in the past"
MAX_POINT_AGE = timedelta(hours=1)
POINT_AGE_MARGIN = timedelta(minutes=2)
MAX_POINT_AHEAD = timedelta(minutes=10)
MAX_SLOTS = 600
#: "The maximum payload size is 500 kilobytes (512000 bytes). Compressed payloads must have a
#: decompressed size of less than 5 megabytes (5242880 bytes)." — with room to spare.
MAX_PAYLOAD_COMPRESSED = 500_000
MAX_PAYLOAD_DECOMPRESSED = 5_000_000
_PAYLOAD_FRAME = len(json.dumps({"series": []}))


@dataclass
class Window:
    """The aggregates of one window for one model and provider."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between ranks (numpy's and pandas'
    default), so a test can check it with either."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class MetricWindows:
    """Aggregates records per (window start, model, provider)."""

    def __init__(self, window_seconds: int):
        self.window_seconds = window_seconds
        self.windows: dict[tuple[int, str, str], Window] = defaultdict(Window)

    def add(self, record: dict, event_time: datetime) -> None:
        epoch = int(event_time.timestamp())
        start = epoch - epoch % self.window_seconds
        window = self.windows[(start, record.get("model") or "", record.get("provider") or "")]
        window.requests += 1
        if record.get("is_error"):
            window.errors += 1
        if record.get("latency_ms") is not None:
            window.latencies.append(record["latency_ms"])
        window.input_tokens += record.get("input_tokens") or 0
        window.output_tokens += record.get("output_tokens") or 0
        window.cost += record.get("cost") or 0.0

    def __bool__(self) -> bool:
        return bool(self.windows)


@dataclass
class MetricSeries:
    """The series to submit and the points left out, by reason."""

    series: list[dict]
    points: int = 0
    skipped_too_old: int = 0
    skipped_ahead: int = 0
    skipped_not_finite: int = 0


def build_series(
    windows: MetricWindows,
    *,
    namespace: str,
    slot: int,
    extra_tags: tuple[str, ...],
    now: datetime,
    submit_old: bool,
) -> MetricSeries:
    interval = windows.window_seconds
    offset = slot % min(interval, MAX_SLOTS)
    oldest = (now - MAX_POINT_AGE + POINT_AGE_MARGIN).timestamp()
    newest = (now + MAX_POINT_AHEAD).timestamp()
    by_series: dict[tuple[str, int, tuple[str, ...]], list[dict]] = defaultdict(list)
    result = MetricSeries([])
    for (start, model, provider), window in sorted(windows.windows.items()):
        timestamp = start + offset
        values = [
            ("requests", COUNT, window.requests),
            ("errors", COUNT, window.errors),
            ("input_tokens", COUNT, window.input_tokens),
            ("output_tokens", COUNT, window.output_tokens),
            ("cost", COUNT, round(window.cost, 10)),
        ]
        if window.latencies:
            values.append(("latency_ms", GAUGE, sum(window.latencies) / len(window.latencies)))
            values.append(("latency_ms.p95", GAUGE, percentile(window.latencies, 0.95)))
        if timestamp < oldest and not submit_old:
            result.skipped_too_old += len(values)
            continue
        if timestamp > newest:
            result.skipped_ahead += len(values)
            continue
        tags = (tag("model", model), tag("provider", provider), *extra_tags)
        for name, kind, value in values:
            if not math.isfinite(value):
                result.skipped_not_finite += 1
                continue
            by_series[(name, kind, tags)].append({"timestamp": timestamp, "value": value})
            result.points += 1
    for (name, kind, tags), points in by_series.items():
        series = {
            "metric": f"{namespace}.{name}",
            "type": kind,
            "points": points,
            "tags": list(tags),
        }
        if kind == COUNT:
            series["interval"] = interval
        result.series.append(series)
    return result


def compressed_size(body: dict) -> int:
    """Bytes on the wire for ``body``: the official client's own encoding (``json.dumps``, then
    zlib's gzip at its default level), which is deterministic."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    data = json.dumps(body).encode("utf-8")
    return len(compressor.compress(data) + compressor.flush())


def payloads(series: list[dict]) -> Iterator[list[dict]]:
    """Series in payloads under both limits: packed by decompressed size, then checked (and
    halved if need be) on their compressed size."""
    pending: list[dict] = []
    size = _PAYLOAD_FRAME
    for one in series:
        one_size = len(json.dumps(one)) + 2
        if pending and size + one_size > MAX_PAYLOAD_DECOMPRESSED:
            yield from _within_compressed_limit(pending)
            pending, size = [], _PAYLOAD_FRAME
        pending.append(one)
        size += one_size
    if pending:
        yield from _within_compressed_limit(pending)


def _within_compressed_limit(series: list[dict]) -> Iterator[list[dict]]:
    if len(series) > 1 and compressed_size({"series": series}) > MAX_PAYLOAD_COMPRESSED:
        middle = len(series) // 2
        yield from _within_compressed_limit(series[:middle])
        yield from _within_compressed_limit(series[middle:])
    else:
        yield series


def payload_size(series: list[dict]) -> int:
    return len(json.dumps({"series": series}))
