"""The Ledger: reading and writing the delivery state, per integration and partition.

It lives in the state database (``PRISM_STATE_URL``), never in the gateway's. The ledger
records batches, and everything else is derived from them: the cursor is the highest
``through_id`` recorded, the counts are sums. A batch row is written when the batch starts
(open: the sink may have half-sent it) and completed only after the sink acknowledged every
record, in one transaction with its rejects. So the cursor never passes undelivered rows, and
an open batch tells the next run exactly what to redo, under which name. Batches are opened and
recorded only under the partition's lease (lease.py).

Opening a Ledger migrates the state database to the newest schema first (schema.py).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from prism_pipelines.batch import Batch
from prism_pipelines.database import make_engine, state_url
from prism_pipelines.hours import HOUR, floor_hour, utc, utcnow
from prism_pipelines.ledger.lease import (
    Lease,
    PartitionBusy,
    busy,
    database_now,
    expiry,
    held_by,
    lease_key,
    lease_renew_seconds,
    lease_seconds,
    lost,
    renew,
    still_held,
)
from prism_pipelines.ledger.schema import upgrade
from prism_pipelines.ledger.tables import batches, integrations, leases, partitions, rejects


@dataclass(frozen=True)
class RecordedBatch:
    after_id: int
    through_id: int | None
    location: str | None
    #: the destination's version of the file the batch published (None: not known)
    published_version: str | None
    records: int
    rejects: int
    bytes: int
    finished: bool
    #: the file's sha256 and its rows' event time span (None: recorded before revision 0003)
    sha256: str | None = None
    first_event: datetime | None = None
    last_event: datetime | None = None


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

    @property
    def accounted(self) -> int:
        """Source rows the ledger accounts for: delivered or rejected."""
        return self.delivered + self.rejected


class Ledger:
    def __init__(self, url: str | None = None):
        self.url = url or state_url()
        # The state database ends a transaction left idle for the lease's length, so a run
        # stalled inside one (a paused VM) cannot keep the lease's row locked, and the run that
        # takes over waiting on that lock, for as long as it stays stalled (``_holding``).
        self.engine = make_engine(self.url, idle_in_transaction_seconds=lease_seconds())
        upgrade(self.engine)

    # -- reading -------------------------------------------------------------------------------

    def cursor(self, integration: str, hour: datetime) -> int:
        """Highest ingest sequence the partition's recorded batches cover (0: nothing yet)."""
        statement = select(func.coalesce(func.max(batches.c.through_id), 0)).where(
            _partition(integration, hour)
        )
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar_one()

    def batches(self, integration: str, hour: datetime) -> list[RecordedBatch]:
        with self.engine.connect() as conn:
            return _recorded_batches(conn, integration, hour)

    def manifest_due(self, integration: str, hour: datetime) -> bool:
        """Whether the hour being synced needs its manifest (re)written: none was recorded, or
        a batch was recorded (or opened) since it was."""
        return hour in self._manifests_due(integration, hour, hour + HOUR, synced_only=False)

    def manifests_due(self, integration: str, start: datetime, end: datetime) -> list[datetime]:
        """Hours in ``[start, end)`` that a sync succeeded for, with rows or without (an hour
        with no traffic gets a manifest too), or that hold batches, whose manifest is missing
        or older than a batch recorded since (late rows changed the hour)."""
        return self._manifests_due(integration, start, end, synced_only=True)

    def _manifests_due(
        self, integration: str, start: datetime, end: datetime, synced_only: bool
    ) -> list[datetime]:
        b, p = batches.c, partitions.c
        per_hour = (
            select(
                b.hour,
                func.max(b.finished_at),
                func.count() - func.count(b.finished_at),
                # a file recorded before revision 0003 has no sha256 to list
                func.count(b.location) - func.count(b.sha256),
            )
            .where((b.integration == integration) & (b.hour >= start) & (b.hour < end))
            .group_by(b.hour)
        )
        synced = select(p.hour, p.last_success_at, p.manifest_at).where(
            (p.integration == integration) & (p.hour >= start) & (p.hour < end)
        )
        with self.engine.connect() as conn:
            recorded = {utc(row[0]): row[1:] for row in conn.execute(per_hour)}
            manifests = {utc(hour): (ok, utc(at)) for hour, ok, at in conn.execute(synced)}
        hours = set(recorded)
        hours |= {h for h, (ok, _) in manifests.items() if ok or not synced_only}
        if not synced_only:
            hours |= {start}  # the hour being synced, before its sync is recorded
        due = []
        for hour in sorted(hours):
            last_finished, still_open, unlisted = recorded.get(hour, (None, 0, 0))
            written_at = manifests.get(hour, (None, None))[1]
            if unlisted:
                continue
            if (
                written_at is None
                or still_open
                or (last_finished is not None and utc(last_finished) > written_at)
            ):
                due.append(hour)
        return due

    def manifest_to_write(
        self, integration: str, hour: datetime, lease: Lease
    ) -> tuple[list[RecordedBatch], str | None]:
        """The hour's batches and the version of its manifest the ledger recorded (None: none),
        read in one transaction that confirms the lease: while it is confirmed no other run
        records anything for the hour, so a manifest built from these batches and written
        only over that version cannot replace a newer run's (manifest.py)."""
        with self._holding(lease) as (conn, _):
            recorded = _recorded_batches(conn, integration, hour)
            version = conn.execute(
                select(partitions.c.manifest_version).where(_partition_row(integration, hour))
            ).scalar()
        return recorded, version

    def confirm(self, lease: Lease) -> None:
        """Renew the lease now, or raise ``LeaseLost``."""
        with self._holding(lease):
            pass

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
                hour=utc(row["hour"]),
                cursor=row["cursor"] or 0,
                delivered=row["delivered"] or 0,
                rejected=row["rejected"] or 0,
                bytes=row["bytes"] or 0,
                batches=row["batches"] or 0,
                last_sync_at=utc(row["last_sync_at"]),
                last_success_at=utc(row["last_success_at"]),
                last_error=row["last_error"],
                last_error_at=utc(row["last_error_at"]),
            )
            for row in rows
        ]

    def partition_state(self, integration: str, hour: datetime) -> PartitionState | None:
        states = [s for s in self.partition_states(integration, since=hour) if s.hour == hour]
        return states[0] if states else None

    def rejects(
        self, integration: str, hour: datetime | None = None, limit: int | None = 100
    ) -> list[dict]:
        """The integration's rejects (of ``hour``), oldest hour first; ``limit`` None: all."""
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

    def count_rejects(self, integration: str, hour: datetime | None = None) -> int:
        """How many rejects ``rejects`` would list without a limit."""
        statement = select(func.count()).where(rejects.c.integration == integration)
        if hour is not None:
            statement = statement.where(rejects.c.hour == hour)
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar_one()

    def first_configured(self, integration: str, now: datetime | None = None) -> datetime:
        """The hour an integration with ``history: none`` starts at: when it was first seen."""
        with self.engine.begin() as conn:
            seen = conn.execute(
                select(integrations.c.first_configured_at).where(integrations.c.name == integration)
            ).scalar()
            if seen is None:
                seen = floor_hour(now or utcnow())
                conn.execute(
                    insert(integrations).values(name=integration, first_configured_at=seen)
                )
        return utc(seen)

    def configured_at(self, integration: str) -> datetime | None:
        """When the integration was first seen (None: not yet), recording nothing: what loading
        the definitions may call, since it must not write."""
        with self.engine.connect() as conn:
            return utc(
                conn.execute(
                    select(integrations.c.first_configured_at).where(
                        integrations.c.name == integration
                    )
                ).scalar()
            )

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
            # An unreachable state database counts as still ours: tried again at the next beat
            # (if the lease runs out meanwhile, the delivery's next ledger write says so).
            while not stop.wait(lease_renew_seconds()):
                if not self._still_ours(lease):
                    return  # lost: the next batch opened or recorded raises LeaseLost

        heartbeat = threading.Thread(target=renew_until_stopped, name="prism-lease", daemon=True)
        heartbeat.start()
        try:
            yield lease
        finally:
            stop.set()
            heartbeat.join()
            try:
                with self.engine.begin() as conn:
                    conn.execute(delete(leases).where(lease_key(lease) & held_by(lease)))
            except SQLAlchemyError:
                pass  # unreachable state database: the lease runs out by itself

    @contextmanager
    def _holding(self, lease: Lease):
        """A transaction of the lease's holder: (connection, the state database's time), the
        lease renewed in it first (``still_held``). A run that stalled inside it past the lease
        finds its connection ended by the state database (``__init__``; the driver says only
        that the server closed it): if another run holds the lease now, that is a lost lease."""
        try:
            with self.engine.begin() as conn:
                yield conn, still_held(conn, lease)
        except OperationalError as exc:
            if exc.connection_invalidated and not self._still_ours(lease):
                raise lost(lease) from None
            raise

    def _still_ours(self, lease: Lease) -> bool:
        """Whether the lease is still this run's, renewing it in a transaction of its own (the
        heartbeat's beat), as far as can be told: an unreachable state database says nothing,
        so it counts as yes."""
        try:
            with self.engine.begin() as conn:
                return renew(conn, lease) is not None
        except SQLAlchemyError:
            return True

    def _acquire(self, lease: Lease) -> None:
        # Insert the lease row; if one exists, take it over only if it ran out (one atomic
        # update). A row released between the two is inserted on the next attempt.
        for _ in range(3):
            try:
                with self.engine.begin() as conn:
                    now = database_now(conn)
                    values = {"holder": lease.holder, "acquired_at": now, "expires_at": expiry(now)}
                    conn.execute(
                        insert(leases).values(
                            integration=lease.integration, hour=lease.hour, **values
                        )
                    )
                return
            except IntegrityError:
                pass
            with self.engine.begin() as conn:
                now = database_now(conn)
                values = {"holder": lease.holder, "acquired_at": now, "expires_at": expiry(now)}
                if conn.execute(
                    update(leases)
                    .where(lease_key(lease) & (leases.c.expires_at < now))
                    .values(**values)
                ).rowcount:
                    return
                current = conn.execute(
                    select(leases.c.holder, leases.c.acquired_at, leases.c.expires_at).where(
                        lease_key(lease)
                    )
                ).first()
            if current is not None:
                raise busy(lease, current)
        raise PartitionBusy(
            f"integration '{lease.integration}': partition {lease.hour:%Y-%m-%d %H:00} changed "
            "hands between other runs while this run tried to take it; sync it again."
        )

    # -- writing -------------------------------------------------------------------------------

    def start_batch(self, batch: Batch, location: str | None, lease: Lease) -> None:
        """Mark the batch open before the sink sees it. A batch already recorded (a redo) keeps
        the location it had, so the redo overwrites what the first attempt wrote."""
        key = _batch_key(batch)
        with self._holding(lease) as (conn, now):
            recorded = conn.execute(select(batches.c.location).where(key)).first()
            if recorded is None:
                conn.execute(
                    insert(batches).values(
                        integration=batch.integration,
                        hour=batch.partition,
                        after_id=batch.after_id,
                        location=location,
                        started_at=now,
                    )
                )
                batch.location = location
            else:
                # Reopened: what it published last is no longer certain (this attempt may
                # publish and crash before recording), so the next redo looks at the destination.
                conn.execute(
                    update(batches)
                    .where(key)
                    .values(finished_at=None, started_at=now, published_version=None, sha256=None)
                )
                batch.location = recorded.location or location

    def finish_batch(self, batch: Batch, sent_bytes: int, lease: Lease) -> None:
        """Record an acknowledged batch and its rejects together: the cursor moves here, and
        only if the run still holds the partition's lease. Stamped with the state database's
        clock, as the manifest is: which came last holds whichever host recorded them."""
        with self._holding(lease) as (conn, now):
            conn.execute(
                update(batches)
                .where(_batch_key(batch))
                .values(
                    through_id=batch.through_id,
                    location=batch.location,
                    published_version=batch.published_version,
                    records=batch.records,
                    rejects=len(batch.rejects),
                    bytes=sent_bytes,
                    finished_at=now,
                    sha256=batch.sha256,
                    first_event=batch.first_event,
                    last_event=batch.last_event,
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

    def record_manifest(self, integration: str, hour: datetime, version: str, lease: Lease) -> None:
        """Note that the hour's manifest was just written, as ``version``: only if the run still
        holds the lease (a run that lost it must not mark the hour done), and on the state
        database's clock, as batches are stamped, so a batch recorded later makes it due again."""
        with self._holding(lease) as (conn, at):
            values = {"manifest_at": at, "manifest_version": version}
            found = conn.execute(
                update(partitions).where(_partition_row(integration, hour)).values(**values)
            ).rowcount
            if not found:
                conn.execute(
                    insert(partitions).values(integration=integration, hour=hour, **values)
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


def _recorded_batches(conn, integration: str, hour: datetime) -> list[RecordedBatch]:
    statement = (
        select(
            batches.c.after_id,
            batches.c.through_id,
            batches.c.location,
            batches.c.published_version,
            batches.c.records,
            batches.c.rejects,
            batches.c.bytes,
            batches.c.finished_at.is_not(None),
            batches.c.sha256,
            batches.c.first_event,
            batches.c.last_event,
        )
        .where(_partition(integration, hour))
        .order_by(batches.c.after_id)
    )
    return [RecordedBatch(*row[:-2], utc(row[-2]), utc(row[-1])) for row in conn.execute(statement)]


def _partition(integration: str, hour: datetime):
    return (batches.c.integration == integration) & (batches.c.hour == hour)


def _partition_row(integration: str, hour: datetime):
    return (partitions.c.integration == integration) & (partitions.c.hour == hour)


def _batch_key(batch: Batch):
    return _partition(batch.integration, batch.partition) & (batches.c.after_id == batch.after_id)
