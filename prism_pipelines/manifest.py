"""An hour's manifest (``_manifest.json``, storage integrations with ``manifest: true``): the
sign for consumers that the hour's folder is complete, and exactly which files it holds.

It is written by the sync of the hour, under the partition's lease, after every file it lists,
and only once the hour is complete: closed, past its grace period, and every source row of it
accounted for in the ledger (delivered or rejected, the late-data sensor's measure). Everything
it says comes from the ledger (each batch's file, records, bytes, sha256 and event times), so a
run that writes it hours after the files knows them all. Late rows redo or add batches; the
sync that delivers them writes the manifest again, and ``Ledger.manifests_due`` tells the
late-data sensor which complete hours still need one (an hour whose last sync was within its
grace period). An hour without traffic that a sync ran for gets one too (``"records": 0,
"files": []``), so a consumer waiting for it never waits forever.

Fencing, as for the data files (sinks/storage/base.py): the hour's batches and the manifest
version the ledger recorded are read in one transaction that confirms the lease, and the
manifest is written only over that version; the version written is recorded only if the lease
is still held, on the state database's clock (which batches are stamped with too, so "older
than a batch recorded since" compares one clock). A run that stalled past its lease therefore
cannot replace a newer run's manifest with its stale list, nor mark the hour done.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from prism_pipelines.errors import Superseded
from prism_pipelines.hours import HOUR, partition_key, utcnow
from prism_pipelines.ledger import Lease, Ledger, RecordedBatch
from prism_pipelines.records import format_timestamp
from prism_pipelines.source import GatewaySource
from prism_pipelines.stop_points import stop_point

#: writes of one manifest before the run gives up: each one refused means a stalled run's late
#: write landed in between, and a run that woke up writes at most once before it finds its lease
#: gone
REPLACE_ATTEMPTS = 3


def hour_is_complete(
    integration,
    source: GatewaySource,
    recorded: list[RecordedBatch],
    hour: datetime,
    now: datetime,
) -> bool:
    """Closed, past its grace period, no batch open, and the source's rows of the hour all
    delivered or rejected (none past the cursor, none more than the ledger accounts for). An
    hour without traffic is complete once past its grace period."""
    if now < hour + HOUR + timedelta(minutes=integration.grace_minutes):
        return False
    if not all(b.finished for b in recorded):
        return False
    rows, max_id = source.hour_summaries(hour, hour + HOUR).get(hour, (0, 0))
    cursor = max((b.through_id for b in recorded if b.through_id is not None), default=0)
    return max_id <= cursor and rows == sum(b.records + b.rejects for b in recorded)


def build_manifest(hour: datetime, recorded: list[RecordedBatch], written_at: datetime) -> bytes:
    """The manifest's JSON (DESIGN.md, "Archive formats, layouts and manifests")."""
    firsts = [b.first_event for b in recorded if b.first_event is not None]
    lasts = [b.last_event for b in recorded if b.last_event is not None]
    return orjson.dumps(
        {
            "partition": partition_key(hour),
            "records": sum(b.records for b in recorded),
            "rejects": sum(b.rejects for b in recorded),
            "first_event_time": format_timestamp(min(firsts)) if firsts else None,
            "last_event_time": format_timestamp(max(lasts)) if lasts else None,
            "written_at": format_timestamp(written_at),
            "files": [
                {
                    "name": b.location.rpartition("/")[2],
                    "records": b.records,
                    "bytes": b.bytes,
                    "sha256": b.sha256,
                }
                for b in recorded
                if b.location is not None
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def write_manifest_if_due(
    integration, sink, source: GatewaySource, ledger: Ledger, hour: datetime, lease: Lease
) -> str | None:
    """Write the hour's manifest if it is complete and has none that is current; returns its
    key (None: not written). Raises ``LeaseLost`` or ``Superseded`` if another run took the
    partition over meanwhile: this run then neither writes nor records it."""
    name = integration.name
    if not ledger.manifest_due(name, hour):
        return None
    now = utcnow()
    recorded, version = ledger.manifest_to_write(name, hour, lease)
    if not hour_is_complete(integration, source, recorded, hour, now):
        return None
    manifest = build_manifest(hour, recorded, now)
    stop_point("publish_manifest")
    for attempt in range(1, REPLACE_ATTEMPTS + 1):
        try:
            version = sink.publish_manifest(hour, manifest, version)
            break
        except Superseded:
            if attempt == REPLACE_ATTEMPTS:
                raise
            # The destination holds a manifest the ledger did not record: a run that crashed
            # between writing and recording it, a manifest from before revision 0004, or a
            # stalled run's late write. Its version is read before the lease is confirmed, so it
            # is none that a run taking the partition over wrote: this run's list is the newest.
            version = sink.published_version(sink.manifest_key(hour))
            ledger.confirm(lease)
    ledger.record_manifest(name, hour, version, lease)
    return sink.manifest_key(hour)
