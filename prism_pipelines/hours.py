"""UTC hours and partition keys: the one place for time helpers.

A partition is one UTC hour of event time. Dagster names it by a key in its default hourly
format (``2026-11-22-14:00``); the domain passes the hour itself, an aware ``datetime`` on the
hour. SQLite hands datetimes back naive: they were written in UTC, and ``utc`` says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
#: Dagster's default format for hourly partition keys.
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def floor_hour(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in (naive means UTC)."""
    return utc(moment).replace(minute=0, second=0, microsecond=0)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as users write it (``Z``, an offset, or none for UTC), in UTC."""
    return utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


def partition_key(moment: datetime) -> str:
    """The hourly partition key of the hour ``moment`` falls in."""
    return floor_hour(moment).strftime(PARTITION_KEY_FORMAT)


def hour_of_key(key: str) -> datetime:
    """The hour a partition key names; raises ``ValueError`` for text that is not one."""
    return datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
