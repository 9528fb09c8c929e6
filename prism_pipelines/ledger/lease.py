"""A run's lease on one partition: one run delivers a partition at a time.

The run holds the partition's lease (a row of ``prism_leases``) while it delivers, renews it,
and may open or record a batch only while it still holds it. Two runs of one partition at once
(a CLI sync beside a scheduled run, a sensor's run beside a backfill, a Dagster instance without
the run queue's limit) would each send the same rows: the second is refused, and a run that
lost its lease cannot move the cursor. A run that died stops renewing, and its lease runs out
``LEASE_SECONDS`` later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update

from prism_pipelines.errors import PrismError
from prism_pipelines.hours import utc, utcnow
from prism_pipelines.ledger.tables import leases

#: How long a lease outlives its last renewal: how long the partition of a run that died stays
#: refused to other runs.
LEASE_SECONDS = 120.0
#: A delivering run renews its lease this often (and at every batch it opens or records).
LEASE_RENEW_SECONDS = LEASE_SECONDS / 4


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
    return now + timedelta(seconds=LEASE_SECONDS)


def lease_key(lease: Lease):
    return (leases.c.integration == lease.integration) & (leases.c.hour == lease.hour)


def held_by(lease: Lease):
    return leases.c.holder == lease.holder


def renew(conn, lease: Lease) -> bool:
    """Push the lease's expiry on, if it is still ours (in the caller's transaction)."""
    renewed = conn.execute(
        update(leases).where(lease_key(lease) & held_by(lease)).values(expires_at=expiry(utcnow()))
    ).rowcount
    return renewed == 1


def still_held(conn, lease: Lease) -> None:
    """Renew the lease in the caller's transaction, or raise (rolling that transaction back)."""
    if not renew(conn, lease):
        raise LeaseLost(
            f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} was "
            "taken over by another run after this run's lease ran out (this run stalled for "
            f"over {LEASE_SECONDS:.0f} s). This run stopped; the batch it had open is redone "
            "by the run that holds the partition now."
        )
