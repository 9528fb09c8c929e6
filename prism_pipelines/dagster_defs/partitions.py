"""Hourly partitions by event time, UTC, from the integration's historical-data setting."""

from __future__ import annotations

from datetime import datetime, timedelta

from dagster import HourlyPartitionsDefinition, TimeWindow

from prism_pipelines.ledger import Ledger

HOUR = timedelta(hours=1)


def partitions_for(integration, ledger: Ledger) -> HourlyPartitionsDefinition:
    """From ``history.since`` (backfillable), or from the hour the integration was first
    configured (``history: none``: only new traffic). ``end_offset=1`` makes the current,
    still-open hour a partition, which is what the schedule syncs."""
    start = integration.history.since or ledger.first_configured(integration.name)
    return HourlyPartitionsDefinition(
        start_date=start, end_date=integration.history.until, timezone="UTC", end_offset=1
    )


def hours_in(window: TimeWindow) -> list[datetime]:
    """The partition hours of a (possibly multi-partition) run's time window."""
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += HOUR
    return hours
