"""Hourly partitions by event time, UTC, from the integration's historical-data setting."""

from __future__ import annotations

from datetime import datetime

from dagster import HourlyPartitionsDefinition

from prism_pipelines.backlog import first_configured
from prism_pipelines.hours import HOUR, floor_hour, utcnow


def partitions_for(integration, state_url: str | None = None) -> HourlyPartitionsDefinition:
    """From ``history.since`` (backfillable), or from the hour the integration was first
    configured (``history: none``: only new traffic; the late-data sensor records that hour, so
    loading the definitions writes nothing), or that hour less a ``since: -24h`` span.
    ``end_offset=1`` makes the current, still-open hour a partition, which is what the schedule
    syncs."""
    history = integration.history
    start = history.since or history.start(
        first_configured(integration.name, state_url) or floor_hour(utcnow())
    )
    return HourlyPartitionsDefinition(
        start_date=start, end_date=integration.history.until, timezone="UTC", end_offset=1
    )


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """The partition hours in ``[start, end)``: a (multi-partition) run's time window, a range
    of history."""
    hours, hour = [], start
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours
