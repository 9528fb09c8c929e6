"""The delivery state: per integration and partition, the batches delivered, rejects, errors.

It lives in the state database (``PRISM_STATE_URL``), never in the gateway's. The ledger
records batches, and everything else is derived from them: the cursor is the highest
``through_id`` recorded, the counts are sums. A batch row is written when the batch starts
(open: the sink may have half-sent it) and completed only after the sink acknowledged every
record, in one transaction with its rejects. So the cursor never passes undelivered rows, and
an open batch tells the next run exactly what to redo, under which name.

A partition is delivered by one run at a time: the run holds the partition's lease (a row of
``prism_leases``) while it delivers, renews it, and may open or record a batch only while it
still holds it. Two runs of one partition at once (a CLI sync beside a scheduled run, a sensor's
run beside a backfill, a Dagster instance without the run queue's limit) would each send the
same rows: the second is refused, and a run that lost its lease cannot move the cursor. A run
that died stops renewing, and its lease runs out ``LEASE_SECONDS`` later.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from prism_pipelines.batch import Batch
from prism_pipelines.database import make_engine, state_url
from prism_pipelines.errors import PrismError

#: How long a lease outlives its last renewal: how long the partition of a run that died stays
#: refused to other runs.
LEASE_SECONDS = 120.0
#: A delivering run renews its lease this often (and at every batch it opens or records).
LEASE_RENEW_SECONDS = LEASE_SECONDS / 4

metadata = MetaData()

batches = Table(
    "prism_batches",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("after_id", BigInteger, primary_key=True, autoincrement=False),
    Column("through_id", BigInteger, nullable=True),
    Column("location", Text, nullable=True),
    Column("records", Integer, nullable=False, default=0),
    Column("rejects", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

partitions = Table(
    "prism_partitions",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("last_sync_at", DateTime(timezone=True), nullable=True),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", DateTime(timezone=True), nullable=True),
)

rejects = Table(
    "prism_rejects",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("integration", String(64), nullable=False, index=True),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("source_id", BigInteger, nullable=False),
    Column("request_id", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("record", Text, nullable=True),
    Column("rejected_at", DateTime(timezone=True), nullable=False),
)

leases = Table(
    "prism_leases",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

integrations = Table(
    "prism_integrations",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("first_configured_at", DateTime(timezone=True), nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RecordedBatch:
    after_id: int
    through_id: int | None
    location: str | None
    records: int
    rejects: int
    bytes: int
    finished: bool


@dataclass(frozen=True)
class PartitionState:
    integration: str
    hour: datetime
    cursor: int
    delivered: int
    rejected: int
    bytes: int
    batches: int
    last_sync_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


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


class Ledger:
    def __init__(self, url: str | None = None):
        self.url = url or state_url()
        self.engine = make_engine(self.url)
        metadata.create_all(self.engine)

    # -- reading -------------------------------------------------------------------------------

    def cursor(self, integration: str, hour: datetime) -> int:
        """Highest ingest sequence the partition's recorded batches cover (0: nothing yet)."""
        statement = select(func.coalesce(func.max(batches.c.through_id), 0)).where(
            _partition(integration, hour)
        )
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar_one()

    def batches(self, integration: str, hour: datetime) -> list[RecordedBatch]:
        statement = (
            select(
                batches.c.after_id,
                batches.c.through_id,
                batches.c.location,
                batches.c.records,
                batches.c.rejects,
                batches.c.bytes,
                batches.c.finished_at.is_not(None),
            )
            .where(_partition(integration, hour))
            .order_by(batches.c.after_id)
        )
        with self.engine.connect() as conn:
            return [RecordedBatch(*row) for row in conn.execute(statement)]

    def partition_states(
        self, integration: str, since: datetime | None = None
    ) -> list[PartitionState]:
        """Every partition the integration has touched (or since ``since``), oldest first."""
        totals = (
            select(
                batches.c.hour,
                func.coalesce(func.max(batches.c.through_id), 0).label("cursor"),
                func.sum(batches.c.records).label("delivered"),
                func.sum(batches.c.rejects).label("rejected"),
                func.sum(batches.c.bytes).label("bytes"),
                func.count().label("batches"),
            )
            .where(batches.c.integration == integration)
            .group_by(batches.c.hour)
            .subquery()
        )
        statement = (
            select(partitions, totals)
            .select_from(partitions.outerjoin(totals, partitions.c.hour == totals.c.hour))
            .where(partitions.c.integration == integration)
            .order_by(partitions.c.hour)
        )
        if since is not None:
            statement = statement.where(partitions.c.hour >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).mappings().all()
        return [
            PartitionState(
                integration=integration,
                hour=_utc(row["hour"]),
                cursor=row["cursor"] or 0,
                delivered=row["delivered"] or 0,
                rejected=row["rejected"] or 0,
                bytes=row["bytes"] or 0,
                batches=row["batches"] or 0,
                last_sync_at=_utc(row["last_sync_at"]),
                last_success_at=_utc(row["last_success_at"]),
                last_error=row["last_error"],
                last_error_at=_utc(row["last_error_at"]),
            )
            for row in rows
        ]

    def partition_state(self, integration: str, hour: datetime) -> PartitionState | None:
        states = [s for s in self.partition_states(integration, since=hour) if s.hour == hour]
        return states[0] if states else None

    def rejects(
        self, integration: str, hour: datetime | None = None, limit: int = 100
    ) -> list[dict]:
        statement = (
            select(
                rejects.c.hour,
                rejects.c.source_id,
                rejects.c.request_id,
                rejects.c.reason,
                rejects.c.record,
            )
            .where(rejects.c.integration == integration)
            .order_by(rejects.c.hour, rejects.c.source_id)
            .limit(limit)
        )
        if hour is not None:
            statement = statement.where(rejects.c.hour == hour)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(statement).mappings()]

    def first_configured(self, integration: str, now: datetime | None = None) -> datetime:
        """The hour an integration with ``history: none`` starts at: when it was first seen."""
        with self.engine.begin() as conn:
            seen = conn.execute(
                select(integrations.c.first_configured_at).where(integrations.c.name == integration)
            ).scalar()
            if seen is None:
                seen = (now or utcnow()).replace(minute=0, second=0, microsecond=0)
                conn.execute(
                    insert(integrations).values(name=integration, first_configured_at=seen)
                )
        return _utc(seen)

    # -- the lease ---------------------------------------------------------------------------

    @contextmanager
    def lease(self, integration: str, hour: datetime, who: str | None = None):
        """Hold the partition's lease for the block, renewed in the background; raise
        ``PartitionBusy`` if another run holds it."""
        who = who or "a sync"
        lease = Lease(
            integration,
            hour,
            f"{who} (host {socket.gethostname()}, pid {os.getpid()}, lease {uuid.uuid4().hex[:8]})",
        )
        self._acquire(lease)
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(LEASE_RENEW_SECONDS):
                try:
                    with self.engine.begin() as conn:
                        if not _renew(conn, lease):
                            return  # lost: the next batch opened or recorded raises LeaseLost
                except SQLAlchemyError:
                    # The state database is unreachable for now: try again at the next beat.
                    # If the lease runs out meanwhile, the delivery's next ledger write says so.
                    continue

        heartbeat = threading.Thread(target=renew_until_stopped, name="prism-lease", daemon=True)
        heartbeat.start()
        try:
            yield lease
        finally:
            stop.set()
            heartbeat.join()
            try:
                with self.engine.begin() as conn:
                    conn.execute(delete(leases).where(_lease_key(lease) & _held_by(lease)))
            except SQLAlchemyError:
                pass  # unreachable state database: the lease runs out by itself

    def _acquire(self, lease: Lease) -> None:
        # Insert the lease row; if one exists, take it over only if it ran out (one atomic
        # update). A row released between the two is inserted on the next attempt.
        for _ in range(3):
            now = utcnow()
            values = {"holder": lease.holder, "acquired_at": now, "expires_at": _expiry(now)}
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(leases).values(
                            integration=lease.integration, hour=lease.hour, **values
                        )
                    )
                return
            except IntegrityError:
                pass
            with self.engine.begin() as conn:
                if conn.execute(
                    update(leases)
                    .where(_lease_key(lease) & (leases.c.expires_at < now))
                    .values(**values)
                ).rowcount:
                    return
                current = conn.execute(
                    select(leases.c.holder, leases.c.acquired_at, leases.c.expires_at).where(
                        _lease_key(lease)
                    )
                ).first()
            if current is not None:
                raise _busy(lease, current)
        raise PartitionBusy(
            f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} changed "
            "hands between other runs while this run tried to take it; sync it again."
        )

    # -- writing -------------------------------------------------------------------------------

    def start_batch(self, batch: Batch, location: str | None, lease: Lease) -> None:
        """Mark the batch open before the sink sees it. A batch already recorded (a redo) keeps
        the location it had, so the redo overwrites what the first attempt wrote."""
        key = _batch_key(batch)
        with self.engine.begin() as conn:
            _still_held(conn, lease)
            recorded = conn.execute(select(batches.c.location).where(key)).first()
            if recorded is None:
                conn.execute(
                    insert(batches).values(
                        integration=batch.integration,
                        hour=batch.partition,
                        after_id=batch.after_id,
                        location=location,
                        started_at=utcnow(),
                    )
                )
                batch.location = location
            else:
                conn.execute(
                    update(batches).where(key).values(finished_at=None, started_at=utcnow())
                )
                batch.location = recorded.location or location

    def finish_batch(self, batch: Batch, sent_bytes: int, lease: Lease) -> None:
        """Record an acknowledged batch and its rejects together: the cursor moves here, and
        only if the run still holds the partition's lease."""
        now = utcnow()
        with self.engine.begin() as conn:
            _still_held(conn, lease)
            conn.execute(
                update(batches)
                .where(_batch_key(batch))
                .values(
                    through_id=batch.through_id,
                    location=batch.location,
                    records=batch.records,
                    rejects=len(batch.rejects),
                    bytes=sent_bytes,
                    finished_at=now,
                )
            )
            conn.execute(
                delete(rejects).where(
                    and_(
                        rejects.c.integration == batch.integration,
                        rejects.c.hour == batch.partition,
                        rejects.c.source_id > batch.after_id,
                        rejects.c.source_id <= batch.through_id,
                    )
                )
            )
            if batch.rejects:
                conn.execute(
                    insert(rejects),
                    [
                        {
                            "integration": batch.integration,
                            "hour": batch.partition,
                            "source_id": r.source_id,
                            "request_id": r.request_id,
                            "reason": r.reason,
                            "record": None if r.record is None else orjson.dumps(r.record).decode(),
                            "rejected_at": now,
                        }
                        for r in batch.rejects
                    ],
                )

    def record_sync(self, integration: str, hour: datetime, error: str | None = None) -> None:
        """Note a sync's outcome for the partition: its time, and its error or success."""
        now = utcnow()
        values = {"last_sync_at": now}
        if error is None:
            values.update(last_success_at=now, last_error=None, last_error_at=None)
        else:
            values.update(last_error=error, last_error_at=now)
        with self.engine.begin() as conn:
            found = conn.execute(
                update(partitions).where(_partition_row(integration, hour)).values(**values)
            ).rowcount
            if not found:
                conn.execute(
                    insert(partitions).values(integration=integration, hour=hour, **values)
                )


def _busy(lease: Lease, current) -> PartitionBusy:
    return PartitionBusy(
        f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} is being "
        f"delivered by {current.holder} since {_utc(current.acquired_at):%Y-%m-%d %H:%M:%S} "
        "UTC; this run left it alone (two runs at once would send the same rows twice). It is "
        f"free when that run ends, or at {_utc(current.expires_at):%H:%M:%S} UTC if that run "
        "died: sync it again then."
    )


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=LEASE_SECONDS)


def _lease_key(lease: Lease):
    return (leases.c.integration == lease.integration) & (leases.c.hour == lease.hour)


def _held_by(lease: Lease):
    return leases.c.holder == lease.holder


def _renew(conn, lease: Lease) -> bool:
    """Push the lease's expiry on, if it is still ours (in the caller's transaction)."""
    renewed = conn.execute(
        update(leases)
        .where(_lease_key(lease) & _held_by(lease))
        .values(expires_at=_expiry(utcnow()))
    ).rowcount
    return renewed == 1


def _still_held(conn, lease: Lease) -> None:
    """Renew the lease in the caller's transaction, or raise (rolling that transaction back)."""
    if not _renew(conn, lease):
        raise LeaseLost(
            f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} was "
            "taken over by another run after this run's lease ran out (this run stalled for "
            f"over {LEASE_SECONDS:.0f} s). This run stopped; the batch it had open is redone "
            "by the run that holds the partition now."
        )


def _partition(integration: str, hour: datetime):
    return (batches.c.integration == integration) & (batches.c.hour == hour)


def _partition_row(integration: str, hour: datetime):
    return (partitions.c.integration == integration) & (partitions.c.hour == hour)


def _batch_key(batch: Batch):
    return _partition(batch.integration, batch.partition) & (batches.c.after_id == batch.after_id)
