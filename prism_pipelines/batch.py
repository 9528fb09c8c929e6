"""A batch: the unit a sink acknowledges and the ledger records.

A batch is a range of the ingest sequence, ``(after_id, through_id]``, within one partition
(hour). It is read from the source in chunks while the sink consumes it, so a batch of any size
costs one chunk of memory. Its id, and so a storage file's name, comes from the integration, the
partition and ``after_id``: a batch that was started and not recorded is redone under the same
name, which is what makes storage exactly-once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from prism_pipelines.records import Reject, encode_jsonl, encode_record


@dataclass
class Chunk:
    """Some consecutive records of a batch, with their source ids (for rejects)."""

    records: list[dict]
    ids: list[int]

    @cached_property
    def lines(self) -> list[bytes]:
        """One JSON document per record (queues send these one message each)."""
        return [encode_record(r) for r in self.records]

    def jsonl(self) -> bytes:
        return encode_jsonl(self.records)


@dataclass
class Batch:
    integration: str
    partition: datetime
    after_id: int
    #: where an earlier attempt of this batch went (storage key), so a redo overwrites it
    location: str | None = None
    #: the batch's position among its partition's batches (0, 1, …), the same on every redo:
    #: what a sink uses to keep batches apart at the destination (Datadog's metric seconds)
    ordinal: int = 0
    #: the rest is filled in by the reader while the sink consumes the chunks
    through_id: int | None = None
    records: int = 0
    rejects: list[Reject] = field(default_factory=list)
    first_event: datetime | None = None
    last_event: datetime | None = None
    _chunks: Iterable[Chunk] = ()

    @property
    def id(self) -> str:
        key = f"{self.integration}|{self.partition.isoformat()}|{self.after_id}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]

    def chunks(self) -> Iterator[Chunk]:
        """The batch's records, chunk by chunk; read once, by the sink."""
        return iter(self._chunks)
