"""An hour's manifest (``_manifest.json``, storage integrations with ``manifest: true``): the
sign for consumers that the hour's folder is complete, and exactly which files it holds.

It is written by the sync of the hour, under the partition's lease, after every file it lists,
and only once the hour is complete: closed, past its grace period, and every source row of it
accounted for in the ledger (delivered or rejected, the late-data sensor's measure). Everything
it says comes from the ledger (each batch's file, records, bytes, sha256 and event times), so a
run that writes it hours after the files knows them all. Late rows redo or add batches; the
sync that delivers them writes the manifest again, and ``Ledger.manifests_due`` tells the
late-data sensor which complete hours still need one (an hour whose last sync was within its
grace period).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from prism_pipelines.hours import HOUR, partition_key, utcnow
from prism_pipelines.ledger import Ledger, RecordedBatch
from prism_pipelines.records import format_timestamp
from prism_pipelines.source import GatewaySource


def hour_is_complete(
    integration, source: GatewaySource, ledger: Ledger, hour: datetime, now: datetime
) -> bool:
    """Closed, past its grace period, no batch open, and the source's rows of the hour all
    delivered or rejected (none past the cursor, none more than the ledger accounts for)."""
    if now < hour + HOUR + timedelta(minutes=integration.grace_minutes):
        return False
    recorded = ledger.batches(integration.name, hour)
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
    integration, sink, source: GatewaySource, ledger: Ledger, hour: datetime
) -> str | None:
    """Write the hour's manifest if it is complete and has none that is current; returns its
    key (None: not written)."""
    now = utcnow()
    if not ledger.manifest_due(integration.name, hour):
        return None
    if not hour_is_complete(integration, source, ledger, hour, now):
        return None
    key = sink.publish_manifest(
        hour, build_manifest(hour, ledger.batches(integration.name, hour), now)
    )
    ledger.record_manifest(integration.name, hour)
    return key
