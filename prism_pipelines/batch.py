"""A batch: the unit a sink acknowledges and the ledger records.

A batch is a range of the ingest sequence, ``(after_id, through_id]``, within one partition
(hour). Its id, and so a storage file's name, comes from the integration, the partition and
``after_id``: a batch that was started and not recorded is redone under the same name, which is
what makes storage exactly-once.

The hand-off is explicit: the sync gives the batch its rows with ``read_from`` (chunks, read
from the source lazily, so a batch of any size costs one chunk of memory); the sink reads them
once through ``chunks()``, and the batch adds up what each ``Chunk`` says of its rows (range,
counts, event times) as they pass; the sync then records the sink's answer with
``acknowledge``, and the ledger reads the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import pyarrow as pa

from prism_pipelines.records import (
    EXPORTED_FIELDS,
    Checked,
    Reject,
    batch_rows,
    build_records,
    encode_record,
    parse_guardrails,
)

#: rows the sync reads, checks and hands over at a time, unless the sink asks for another size
#: (``Sink.chunk_rows``): memory holds a few chunks, whatever the size of a batch
CHUNK_ROWS = 5_000


@dataclass
class Chunk:
    """Some consecutive rows of a batch, checked (``records.check_chunk``): the rows that can be
    exported, as an Arrow record batch (what files are written from), the records built from
    them when a sink asks (queues, Datadog, OTLP), and what the batch learns from them."""

    checked: Checked
    #: the integration's narrower list of fields, if it has one
    fields: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.checked.rows.num_rows

    @cached_property
    def ids(self) -> list[int]:
        """The source ids of the rows that can be exported (for rejects)."""
        return self.checked.rows.column("id").to_pylist()

    @property
    def rejects(self) -> list[Reject]:
        return self.checked.rejects

    @cached_property
    def guardrails(self) -> dict[int, object]:
        """The rows' guardrail results, parsed, by position."""
        return parse_guardrails(self.checked.rows.column("guardrail_results"))

    def table(self) -> pa.RecordBatch:
        """The exported fields (the integration's, in its order) as columns: Parquet, JSONL."""
        return self.checked.rows.select(list(self.fields or EXPORTED_FIELDS))

    @cached_property
    def rows(self) -> list[tuple]:
        """The rows as tuples of the exported fields (``records.batch_rows``): OTLP spans."""
        return batch_rows(self.checked.rows)

    @cached_property
    def records(self) -> list[dict]:
        """The exported records (queue messages, Datadog)."""
        return build_records(self.rows, self.guardrails, self.fields)

    @cached_property
    def lines(self) -> list[bytes]:
        """One JSON document per record (queues send these one message each)."""
        return [encode_record(r) for r in self.records]

    def jsonl(self) -> list[pa.Buffer]:
        """The records as JSON lines, written from the columns (``jsonl.encode_jsonl``): bytes-like
        buffers, one after another, not copied into ``bytes``."""
        # Imported here: polars costs 38 MB, which only processes writing JSON lines pay.
        from prism_pipelines.jsonl import encode_jsonl

        return encode_jsonl(self.table())


@dataclass
class Batch:
    integration: str
    partition: datetime
    after_id: int
    #: where an earlier attempt of this batch went (storage key), so a redo overwrites it
    location: str | None = None
    #: the destination's version of the file this batch may replace (None: the location must
    #: be free); a run that took the partition over has changed it, so a stalled run cannot
    #: replace its file (fencing, sinks/storage/base.py)
    replaces: str | None = None
    #: the destination's version of the file the batch published (set by ``acknowledge``)
    published_version: str | None = None
    #: sha256 of the file the batch published (set by ``acknowledge``; storage only)
    sha256: str | None = None
    #: the batch's position among its partition's batches (0, 1, …), the same on every redo:
    #: what a sink uses to keep batches apart at the destination (Datadog's metric seconds)
    ordinal: int = 0
    #: the end of the range: given for a redo (its recorded range), else learnt from the rows
    through_id: int | None = None
    #: records read from the source so far (rows that became records)
    records_read: int = 0
    #: records the destination acknowledged (set by ``acknowledge``)
    records: int = 0
    rejects: list[Reject] = field(default_factory=list)
    first_event: datetime | None = None
    last_event: datetime | None = None
    _source: Iterable[Chunk] = field(default=(), repr=False)

    @property
    def id(self) -> str:
        key = f"{self.integration}|{self.partition.isoformat()}|{self.after_id}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]

    def read_from(self, chunks: Iterable[Chunk]) -> None:
        """Give the batch its rows; they are read when the sink asks, through ``chunks()``."""
        self._source = chunks

    def chunks(self) -> Iterator[Chunk]:
        """The batch's records, chunk by chunk; read once, by the sink."""
        for chunk in self._source:
            checked = chunk.checked
            self.through_id = max(self.through_id or 0, checked.through_id)
            self.records_read += len(chunk)
            self.rejects.extend(checked.rejects)
            if checked.first_event is not None:
                self.first_event = min(filter(None, (self.first_event, checked.first_event)))
                self.last_event = max(filter(None, (self.last_event, checked.last_event)))
            yield chunk

    def acknowledge(
        self,
        records: int,
        rejects: list[Reject],
        location: str | None,
        published_version: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """The destination's answer: what it acknowledged, refused for good, where, and the
        version and sha256 of the file it published there."""
        self.records = records
        self.rejects.extend(rejects)
        self.location = location
        self.published_version = published_version
        self.sha256 = sha256
