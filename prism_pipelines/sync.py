"""One sync of one partition: source → sink → ledger. No Dagster in here.

A sync of hour H, in order:
1. **Redo** what the ledger says may be half-sent or is now incomplete: batches a crashed
   re-delivery left open, and recorded batches whose range gained rows since (a row committed
   out of sequence order below the cursor). They are re-read by their recorded range and sent
   under their recorded location, so storage files are rewritten, not duplicated. With
   ``full=True`` every recorded batch is redone this way.
2. **New rows**: rows of H past the cursor, up to the first row younger than the settle delay
   (by the gateway database's clock; a row stamped in the future is not waited for), streamed in
   batches of the integration's ``rows_per_batch``. A batch is opened in the
   ledger, delivered, and recorded (the cursor moves) only once the sink acknowledged it, one
   batch after another (``_InOrder``); a storage batch's file is written before its batch is
   opened, and published while the next batch's file is written. A
   connection to the gateway lost mid-read is the reader's to absorb: it reads on after the
   last row it handed over, so the batch goes on as if nothing happened (``GatewaySource``;
   the run's metadata counts ``source_reconnects``).

All of it under the partition's lease (``Ledger.lease``): one run delivers a partition at a
time. First, what crashed runs left in the hour (temporary files, unfinished uploads) is
removed (``Sink.clean_up``). Last, with ``manifest: true``, a complete hour gets its manifest
(manifest.py). Each batch's file is published only if the destination still holds
what the batch may replace (``Batch.replaces``), so a run that stalled past its lease cannot
replace what the run that took over published (fencing, sinks/storage/base.py).

The cyclic garbage collector is paused while a partition is delivered: the export makes
millions of plain objects without cycles, which reference counting frees, and the collector
would only walk them over and over (measured: a fifth of the export's CPU). Whatever cycles a
sink makes are collected after each batch.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from prism_pipelines.batch import Batch, Chunk
from prism_pipelines.errors import CredentialsError, DestinationError, PrismError, Superseded
from prism_pipelines.hours import utc, utcnow
from prism_pipelines.ledger import (
    Lease,
    LeaseError,
    Ledger,
    PartitionBusy,
    RecordedBatch,
    lease_seconds,
)
from prism_pipelines.manifest import write_manifest_if_due
from prism_pipelines.records import GuardrailTexts, check_chunk, format_timestamp
from prism_pipelines.sinks.base import Sink
from prism_pipelines.source import GatewaySource
from prism_pipelines.stop_points import stop_point
from prism_pipelines.workers import worker


class SyncError(PrismError):
    """A sync failed; the message names the integration, the partition and what to do.
    ``busy``: it did not start, another run holds the partition (``PartitionBusy``), which is
    the normal overlap of schedule, sensors and backfills, not a failure of the partition."""

    def __init__(self, message: str, credentials_refused: bool = False, busy: bool = False):
        super().__init__(message)
        self.credentials_refused = credentials_refused
        self.busy = busy


@dataclass
class SyncResult:
    integration: str
    partition: datetime
    cursor_before: int
    cursor_after: int = 0
    records: int = 0
    rejects: int = 0
    reject_reasons: Counter = field(default_factory=Counter)
    batches: int = 0
    redone_batches: int = 0
    bytes: int = 0
    requests: int = 0
    retries: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    held_back: bool = False
    seconds: float = 0.0
    counters: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    locations: list[str] = field(default_factory=list)
    #: the hour's manifest, when this sync wrote it (storage with ``manifest: true``)
    manifest: str | None = None

    def add(self, batch: Batch, delivery) -> None:
        self.batches += 1
        self.records += delivery.records
        self.rejects += len(batch.rejects)
        self.reject_reasons.update(_reason_kind(r.reason) for r in batch.rejects)
        self.bytes += delivery.bytes
        self.requests += delivery.requests
        self.retries += delivery.retries
        self.counters.update(delivery.counters)
        self.refused.update(delivery.refused)
        if delivery.location:
            self.locations.append(delivery.location)
        if batch.first_event is not None:
            self.first_event = min(filter(None, (self.first_event, batch.first_event)))
            self.last_event = max(filter(None, (self.last_event, batch.last_event)))

    def metadata(self, now: datetime | None = None) -> dict:
        """Plain values for the run's metadata (the Dagster layer types them)."""
        now = now or utcnow()
        last = utc(self.last_event)
        return {
            "records": self.records,
            "rejects": self.rejects,
            "reject_reasons": dict(self.reject_reasons),
            "refused_by_destination": dict(self.refused) or None,
            "batches": self.batches,
            "redone_batches": self.redone_batches,
            "files": self.counters.get("files", 0),
            "bytes": self.bytes,
            "requests": self.requests,
            "retries": self.retries,
            "first_event_time": format_timestamp(self.first_event) if self.first_event else None,
            "last_event_time": format_timestamp(last) if last else None,
            "cursor_before": self.cursor_before,
            "cursor_after": self.cursor_after,
            "held_back_unsettled_rows": self.held_back,
            "seconds": round(self.seconds, 3),
            "lag_seconds": round((now - last).total_seconds(), 1) if last else None,
            **{k: v for k, v in self.counters.items() if k != "files"},
            **({"manifest": self.manifest} if self.manifest else {}),
        }


@contextmanager
def _cyclic_gc_paused():
    """Pause the cyclic garbage collector (see the module docstring); restore it after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@_cyclic_gc_paused()
def deliver_partition(
    integration,
    sink: Sink,
    source: GatewaySource,
    ledger: Ledger,
    hour: datetime,
    *,
    full: bool = False,
    settle_seconds: float = 5.0,
    who: str | None = None,
) -> SyncResult:
    """Deliver hour ``hour`` of the gateway's logs to ``sink``; see the module docstring.
    ``who`` names the run for other runs' messages (``PartitionBusy``)."""
    try:
        with ledger.lease(integration.name, hour, who) as lease:
            return _deliver(integration, sink, source, ledger, hour, lease, full, settle_seconds)
    except (LeaseError, Superseded) as exc:
        # Not the partition's failure (another run is delivering it): not recorded as its error.
        busy = isinstance(exc, PartitionBusy)
        raise SyncError(integration.scrub(str(exc)), busy=busy) from None


def _deliver(integration, sink, source, ledger, hour, lease, full, settle_seconds) -> SyncResult:
    started = time.monotonic()
    name = integration.name
    recorded_batches = ledger.batches(name, hour)
    result = SyncResult(name, hour, cursor_before=_cursor(recorded_batches))
    # Batches only ever join a partition past its cursor, so a batch's position among the
    # recorded ones never changes.
    starts = [b.after_id for b in recorded_batches if b.through_id is not None]
    by_start = {b.after_id: b for b in recorded_batches}
    try:
        sink.clean_up(hour, lease_seconds())
        with _InOrder(integration, sink, ledger, lease, result) as batches:
            for recorded in _batches_to_redo(source, recorded_batches, hour, full):
                batch = Batch(
                    name,
                    hour,
                    recorded.after_id,
                    ordinal=bisect_left(starts, recorded.after_id),
                    through_id=recorded.through_id,
                )
                rows = source.stream_chunks(
                    hour,
                    after_id=recorded.after_id,
                    through_id=recorded.through_id,
                    chunk_rows=sink.chunk_rows,
                    counters=result.counters,
                )
                with closing(rows):  # a send that fails stops the read and its connection now
                    batches.send(batch, rows, recorded)
                result.redone_batches += 1

            # Redone batches lie below the cursor, and no other run moves it while this one holds
            # the lease: the cursor is still the one read at the start.
            cursor = result.cursor_before
            chunk_rows = min(sink.chunk_rows, integration.rows_per_batch)
            stream = source.stream_chunks(
                hour,
                after_id=cursor,
                settle_seconds=settle_seconds,
                chunk_rows=chunk_rows,
                counters=result.counters,
            )
            with closing(stream):
                settled = _until_unsettled(stream, result)
                ordinal = bisect_left(starts, cursor)
                for batch_rows in _batches_of(settled, integration.rows_per_batch):
                    batch = Batch(name, hour, after_id=cursor, ordinal=ordinal)
                    # An open batch at the cursor is an attempt that never recorded its range.
                    recorded = by_start.get(cursor)
                    batches.send(batch, batch_rows, recorded)
                    cursor = batch.through_id
                    ordinal += 1
        if getattr(integration, "manifest", False):
            result.manifest = write_manifest_if_due(integration, sink, source, ledger, hour, lease)
    except (LeaseError, Superseded):
        raise
    except PrismError as exc:
        message = integration.scrub(str(exc))
        ledger.record_sync(name, hour, error=message)
        raise SyncError(message, isinstance(exc, CredentialsError)) from None
    except Exception as exc:
        # Not one of ours: still a clear, secret-free message, and the cursor has not moved.
        message = integration.scrub(
            f"integration '{name}': delivery of partition {hour:%Y-%m-%d %H:00} failed with "
            f"{type(exc).__name__}: {exc}"
        )
        ledger.record_sync(name, hour, error=message)
        raise SyncError(message) from exc
    ledger.record_sync(name, hour)
    result.cursor_after = cursor
    result.seconds = time.monotonic() - started
    return result


def _cursor(recorded: list[RecordedBatch]) -> int:
    """``Ledger.cursor`` from the partition's batches: the highest ``through_id`` recorded."""
    return max((b.through_id for b in recorded if b.through_id is not None), default=0)


def _batches_to_redo(
    source: GatewaySource, recorded: list[RecordedBatch], hour: datetime, full: bool
) -> list[RecordedBatch]:
    ranged = [b for b in recorded if b.through_id is not None]
    if full:
        return ranged
    redo = [b for b in ranged if not b.finished]
    done = [b for b in ranged if b.finished]
    cursor = max((b.through_id for b in ranged), default=0)
    recorded_rows = sum(b.records + b.rejects for b in done)
    # One count tells whether any recorded range gained rows; only then look per batch.
    if done and source.count_around(hour, cursor)[0] != recorded_rows + sum(
        source.count_rows(hour, b.after_id, b.through_id) for b in redo
    ):
        redo += [
            b
            for b in done
            if source.count_rows(hour, b.after_id, b.through_id) != b.records + b.rejects
        ]
    return sorted(redo, key=lambda b: b.after_id)


def _until_unsettled(
    stream: Iterator[pa.RecordBatch], result: SyncResult
) -> Iterator[pa.RecordBatch]:
    """The stream up to its first row younger than the settle delay; that row and the rest wait
    for a later sync (an older transaction may still commit a lower id, and the cursor must not
    pass it)."""
    for rows in stream:
        unsettled = pc.indices_nonzero(rows.column("unsettled"))
        if len(unsettled):
            result.held_back = True
            if cut := unsettled[0].as_py():
                yield rows.slice(0, cut)
            return
        yield rows


def _batches_of(
    stream: Iterator[pa.RecordBatch], batch_rows: int
) -> Iterator[Iterator[pa.RecordBatch]]:
    """Cut one stream of row chunks into batches of ``batch_rows`` rows (the last one fewer),
    lazily: a batch's chunks are read from the database only as the sink asks for them. A
    batch that ends inside a chunk takes its first rows, and the rest begins the next batch
    (a slice: no copy), so a batch's size does not depend on the chunks'."""
    chunks = iter(stream)
    pending = next(chunks, None)

    def take() -> Iterator[pa.RecordBatch]:
        nonlocal pending
        room = batch_rows
        while pending is not None and room > 0:
            rows, rest = pending.slice(0, room), pending.slice(room)
            room -= rows.num_rows
            yield rows
            pending = rest if rest.num_rows else next(chunks, None)

    while pending is not None:
        yield take()


class _InOrder:
    """A sync's batches, sent one after another: each is opened in the ledger before anything of
    it can reach the destination, and recorded once the destination acknowledged it, before the
    next one is opened (one open batch: what redo and exactly-once rely on).

    A sink that stages (storage: ``Sink.stage`` writes the batch's file where no reader sees it)
    is read and written before its batch is opened, so the batch is opened, published and
    recorded in the ``"publish"`` worker while the next batch is read and written: an upload no
    longer stalls the read. At most one batch is publishing. A sink that sends as it reads
    (queues, Datadog, OTLP) has its batch opened first and delivered in the sync's thread.
    """

    def __init__(self, integration, sink: Sink, ledger: Ledger, lease: Lease, result: SyncResult):
        self.integration, self.sink, self.ledger, self.lease = integration, sink, ledger, lease
        self.result = result
        self._publishing: Future | None = None

    def send(
        self,
        batch: Batch,
        row_chunks: Iterator[pa.RecordBatch],
        recorded: RecordedBatch | None = None,
    ) -> None:
        """Deliver ``batch`` (of ``row_chunks``), or, for a sink that stages, start publishing
        it; ``recorded``: its ledger entry, for a redo or a retried attempt."""
        batch.read_from(_chunks(row_chunks, self.integration.fields, self.result.counters))
        # Where the batch goes, decided before its file is written: a redo, or a retried
        # attempt, keeps its recorded name (and so its format).
        batch.location = (recorded and recorded.location) or self.sink.location_for(batch)
        staged = self.sink.stage(batch)
        try:
            self.wait()  # the previous batch is recorded: this one may be opened
        except BaseException:
            if staged is not None:
                staged.close()  # the earlier batch failed: this one is never published
            raise
        if staged is None:
            self._open(batch, recorded)
            self._done(self._record(batch, self.sink.deliver(batch)))
        else:
            self._publishing = worker("publish").submit(self._publish, batch, recorded, staged)

    def wait(self) -> None:
        """Until the batch publishing (if any) is recorded; raises what its publishing raised."""
        if self._publishing is not None:
            publishing, self._publishing = self._publishing, None
            self._done(publishing.result())

    def __enter__(self) -> _InOrder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # The last batch recorded before the sync goes on (the manifest reads the ledger), and
        # never a batch left publishing once the sync has failed and let its lease go. A failed
        # publish is the earlier batch's failure: it is the one raised.
        self.wait()

    def _publish(self, batch: Batch, recorded: RecordedBatch | None, staged) -> tuple | None:
        with staged:
            stop_point("open_batch")
            self._open(batch, recorded)
            return self._record(batch, self.sink.publish(batch, staged))

    def _open(self, batch: Batch, recorded: RecordedBatch | None) -> None:
        if recorded is not None:
            # What the batch may replace: the version the ledger recorded for it, or else (an
            # attempt that published and never recorded) what the destination holds now. Looked
            # up before start_batch confirms the lease, so it cannot be the file of a run that
            # took the partition over since: a stalled run's publish then fails (fencing).
            batch.replaces = (recorded.finished and recorded.published_version) or (
                batch.location and self.sink.published_version(batch.location)
            )
        self.ledger.start_batch(batch, batch.location, self.lease)

    def _record(self, batch: Batch, delivery) -> tuple | None:
        if delivery.records + len(delivery.rejects) != batch.records_read:
            # The one guard that makes "nothing silently dropped" hold for every sink.
            raise DestinationError(
                f"integration '{self.integration.name}': the sink accounted for "
                f"{delivery.records + len(delivery.rejects)} of {batch.records_read} records of "
                f"batch {batch.id}; the batch is left open and will be redone"
            )
        if batch.through_id is None:
            return None  # nothing was read: the batch stays open and unranged, like never started
        batch.acknowledge(
            delivery.records,
            delivery.rejects,
            delivery.location,
            delivery.published_version,
            delivery.sha256,
        )
        self.ledger.finish_batch(batch, delivery.bytes, self.lease)
        return batch, delivery

    def _done(self, recorded: tuple | None) -> None:
        if recorded is not None:
            self.result.add(*recorded)
        gc.collect(1)  # the young generations only: whatever cycles the sink made for this batch


def _chunks(row_chunks: Iterator[pa.RecordBatch], fields, counters: Counter) -> Iterator[Chunk]:
    """Reader chunks → checked chunks, each with its range, rejects and event times."""
    guardrails = GuardrailTexts()
    for rows in row_chunks:
        yield Chunk(check_chunk(rows, counters, guardrails), fields)


def _reason_kind(reason: str) -> str:
    """Group rejects by the kind of reason (the text before the first colon)."""
    return reason.split(":", 1)[0]
