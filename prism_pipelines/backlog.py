"""What the ledger says about an integration, next to the source: the errors since the last
success, what was delivered, and which closed hours still have rows to deliver (the backlog).

Plain reads of the ledger's tables, no Dagster: the late-data sensor, the checks and
``prism-pipelines status`` share them. Reading never writes: a state database that has no
tables yet reads as empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from prism_pipelines.database import make_engine, state_url
from prism_pipelines.hours import HOUR, floor_hour, utc
from prism_pipelines.ledger import Ledger, batches, partitions
from prism_pipelines.ledger import integrations as configured
from prism_pipelines.source import GatewaySource

#: how far back the late-data sensor and ``status`` compare the source with the ledger
DEFAULT_LOOKBACK_HOURS = 48


def lookback() -> timedelta:
    """``PRISM_LATE_DATA_LOOKBACK_HOURS``: how many closed hours are compared each time."""
    hours = os.environ.get("PRISM_LATE_DATA_LOOKBACK_HOURS")
    return timedelta(hours=int(hours) if hours else DEFAULT_LOOKBACK_HOURS)


@dataclass(frozen=True)
class LedgerErrors:
    last_success_at: datetime | None
    last_sync_at: datetime | None
    #: the latest error newer than the last success, with its partition, and when the run of
    #: failures began (None: the last attempt succeeded)
    error: str | None = None
    error_partition: datetime | None = None
    error_since: datetime | None = None
    failing_partitions: int = 0


def ledger_errors(ledger: Ledger, name: str) -> LedgerErrors:
    p = partitions.c
    with ledger.engine.connect() as conn:
        last_success, last_sync = conn.execute(
            select(func.max(p.last_success_at), func.max(p.last_sync_at)).where(
                p.integration == name
            )
        ).one()
        last_success = utc(last_success)
        newer = p.last_error.is_not(None)
        if last_success is not None:
            newer &= p.last_error_at > last_success
        errors = conn.execute(
            select(p.hour, p.last_error, p.last_error_at)
            .where((p.integration == name) & newer)
            .order_by(p.last_error_at.desc())
        ).all()
        failing = conn.execute(
            select(func.count()).where((p.integration == name) & p.last_error.is_not(None))
        ).scalar_one()
    if not errors:
        return LedgerErrors(last_success, utc(last_sync), failing_partitions=failing)
    hour, message, _ = errors[0]
    return LedgerErrors(
        last_success_at=last_success,
        last_sync_at=utc(last_sync),
        error=message,
        error_partition=utc(hour),
        error_since=min(utc(e[2]) for e in errors),
        failing_partitions=failing,
    )


def delivered_since(ledger: Ledger, name: str, since: datetime) -> tuple[int, int]:
    """(records, rejects) of the batches the destination acknowledged since ``since``."""
    b = batches.c
    with ledger.engine.connect() as conn:
        records, rejects = conn.execute(
            select(func.coalesce(func.sum(b.records), 0), func.coalesce(func.sum(b.rejects), 0))
            .where(b.integration == name)
            .where(b.finished_at >= since)
        ).one()
    return int(records), int(rejects)


def first_configured(name: str, url: str | None = None) -> datetime | None:
    """When the integration was first seen (``Ledger.first_configured`` records it), or None.
    Read-only and without creating tables, so loading the definitions writes nothing."""
    engine = make_engine(url or state_url())
    try:
        with engine.connect() as conn:
            return utc(
                conn.execute(
                    select(configured.c.first_configured_at).where(configured.c.name == name)
                ).scalar()
            )
    except SQLAlchemyError:  # no state database or no tables yet: never seen
        return None
    finally:
        engine.dispose()


def first_delivery(ledger: Ledger, name: str) -> datetime | None:
    with ledger.engine.connect() as conn:
        return utc(
            conn.execute(
                select(func.min(batches.c.started_at)).where(batches.c.integration == name)
            ).scalar()
        )


def newest_delivered_event(source: GatewaySource, ledger: Ledger, name: str) -> datetime | None:
    """Event time of the newest record delivered: how far behind real time the destination is."""
    b = batches.c
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(b.hour, func.max(b.through_id))
            .where(and_(b.integration == name, b.through_id.is_not(None), b.records > 0))
            .group_by(b.hour)
            .order_by(b.hour.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return source.newest_event(utc(row[0]), row[1])


@dataclass(frozen=True)
class HourBacklog:
    """One hour whose source rows are not all accounted for in the ledger."""

    hour: datetime
    rows: int  # in the source
    max_id: int  # in the source
    cursor: int  # the ledger's
    accounted: int  # delivered + rejected, per the ledger
    failed_at: datetime | None = None  # the hour's last failed sync, if it failed last

    @property
    def missing(self) -> int:
        return max(self.rows - self.accounted, 0)


def backlog(
    source: GatewaySource, ledger: Ledger, name: str, start: datetime, end: datetime
) -> list[HourBacklog]:
    """Hours in ``[start, end)`` with source rows past the ledger's cursor, or more rows than the
    ledger accounts for (late arrivals, paused periods, failed runs, out-of-order commits).
    One grouped query on each side."""
    if end <= start:
        return []
    return _behind(source.hour_summaries(start, end), ledger, name, start)


def hours_backlog(
    source: GatewaySource, ledger: Ledger, name: str, hours: Iterable[datetime]
) -> list[HourBacklog]:
    """``backlog`` of some hours only, one indexed range scan each: the late-data sensor's
    check of the few hours that received rows since its last look."""
    hours = sorted(set(hours))
    if not hours:
        return []
    summaries = {}
    for hour in hours:
        summaries.update(source.hour_summaries(hour, hour + HOUR))
    return _behind(summaries, ledger, name, hours[0])


def _behind(
    summaries: dict[datetime, tuple[int, int]], ledger: Ledger, name: str, start: datetime
) -> list[HourBacklog]:
    states = {s.hour: s for s in ledger.partition_states(name, since=start)}
    behind = []
    for hour, (rows, max_id) in sorted(summaries.items()):
        state = states.get(hour)
        cursor = state.cursor if state else 0
        accounted = state.accounted if state else 0
        if max_id > cursor or rows > accounted:
            failed_at = utc(state.last_error_at) if state and state.last_error else None
            if failed_at and state.last_success_at and utc(state.last_success_at) > failed_at:
                failed_at = None  # it failed once, then a sync of it succeeded
            behind.append(HourBacklog(hour, rows, max_id, cursor, accounted, failed_at))
    return behind


def pending_rows(source: GatewaySource, ledger: Ledger, name: str, now: datetime) -> int:
    """Source rows of the look-back window not yet delivered or rejected: ``backlog``'s missing
    rows, from the hours' counts alone (``hour_counts``: the timestamp index, not the rows).
    The window is whole hours, the current one included, on every database."""
    this_hour = floor_hour(now)
    start = this_hour - lookback()
    states = {s.hour: s for s in ledger.partition_states(name, since=start)}
    return sum(
        max(rows - (states[hour].accounted if hour in states else 0), 0)
        for hour, rows in source.hour_counts(start, this_hour + HOUR).items()
    )
