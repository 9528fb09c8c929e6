"""A run's lease on one partition: one run delivers a partition at a time.

The run holds the partition's lease (a row of ``prism_leases``) while it delivers, renews it,
and may open or record a batch only while it still holds it. Two runs of one partition at once
(a CLI sync beside a scheduled run, a sensor's run beside a backfill, a Dagster instance without
the run queue's limit) would each send the same rows: the second is refused, and a run that
lost its lease cannot move the cursor. A run that died stops renewing, and its lease runs out
``lease_seconds()`` later.

Lease times are the state database's clock (``database_now``), never the hosts': runs on hosts
whose clocks disagree still agree on when a lease ran out. A run that stalled past its lease
(SIGSTOP, a paused VM, a long GC pause) may wake up mid-batch; what stops it from replacing the
newer run's file is the conditional publish (fencing, sinks/storage/base.py), not this clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select, text, update

from prism_pipelines.errors import PrismError
from prism_pipelines.hours import utc
from prism_pipelines.ledger.tables import leases
from prism_pipelines.stop_points import stop_point

#: How long a lease outlives its last renewal by default: how long the partition of a run that
#: died stays refused to other runs. ``PRISM_LEASE_SECONDS`` overrides it.
LEASE_SECONDS = 120.0


def lease_seconds() -> float:
    """``PRISM_LEASE_SECONDS`` (default 120); read at every use, so tests can shorten it."""
    return float(os.environ.get("PRISM_LEASE_SECONDS") or LEASE_SECONDS)


def lease_renew_seconds() -> float:
    """A delivering run renews its lease this often (and at every batch it opens or records)."""
    return lease_seconds() / 4


def database_now(conn: Connection) -> datetime:
    """The state database's clock, in UTC: what lease times are written and judged by."""
    if conn.dialect.name == "sqlite":
        # CURRENT_TIMESTAMP has whole seconds only; %f gives milliseconds.
        now = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return utc(datetime.fromisoformat(now))
    return utc(conn.execute(select(func.now())).scalar_one())


class LeaseError(PrismError):
    """The partition is another run's: this run stops, and it is not the partition's failure."""


class PartitionBusy(LeaseError):
    """Another run holds the partition's lease: this run must not deliver it."""


class LeaseLost(LeaseError):
    """The run's lease ran out and another run took the partition: this run stops, and the
    batch it had open is left for the holder to redo."""


@dataclass(frozen=True)
class Lease:
    """A run's hold on one partition. ``holder`` says who, for the other runs' messages."""

    integration: str
    hour: datetime
    holder: str


def busy(lease: Lease, current) -> PartitionBusy:
    return PartitionBusy(
        f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} is being "
        f"delivered by {current.holder} since {utc(current.acquired_at):%Y-%m-%d %H:%M:%S} "
        "UTC; this run left it alone (two runs at once would send the same rows twice). It is "
        f"free when that run ends, or at {utc(current.expires_at):%H:%M:%S} UTC if that run "
        "died: sync it again then."
    )


def expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=lease_seconds())


def lease_key(lease: Lease):
    return (leases.c.integration == lease.integration) & (leases.c.hour == lease.hour)


def held_by(lease: Lease):
    return leases.c.holder == lease.holder


def renew(conn, lease: Lease) -> datetime | None:
    """Push the lease's expiry on, if it is still ours (in the caller's transaction); returns
    the state database's time it did so (None: the lease is not ours any more)."""
    now = database_now(conn)
    renewed = conn.execute(
        update(leases).where(lease_key(lease) & held_by(lease)).values(expires_at=expiry(now))
    ).rowcount
    return now if renewed == 1 else None


def still_held(conn, lease: Lease) -> datetime:
    """Renew the lease in the caller's transaction, or raise (rolling that transaction back).
    Returns the state database's time: what the ledger stamps the transaction's writes with,
    so that times written by runs on different hosts compare."""
    now = renew(conn, lease)
    if now is None:
        raise lost(lease)
    stop_point("lease_renewed")
    return now


def lost(lease: Lease) -> LeaseLost:
    """What a run is told when another run holds its lease now (``still_held``, and
    ``Ledger._holding`` when the state database ended the stalled run's transaction)."""
    return LeaseLost(
        f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} was "
        "taken over by another run after this run's lease ran out (this run stalled for "
        f"over {lease_seconds():.0f} s). This run stopped; what it had not recorded is "
        "delivered by the run that holds the partition now."
    )
