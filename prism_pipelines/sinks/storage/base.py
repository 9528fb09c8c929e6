"""What the four archives share (local folder, S3, Azure Blob, GCS): the layout, the formats
(formats.py), the manifest and the exactly-once rule; each provider only says how to put, check
and remove an object, every put and remove conditional on the version it may replace.

A batch is encoded chunk by chunk into a staging file (by default a spooled file: memory up
to ``SPOOL_IN_MEMORY``, then disk) and handed to the provider in one upload, which each SDK
turns into a multipart / block / resumable upload when it is large. An object appears under its
final name only when complete, so a crash never leaves half a file where a reader would see it.

Fencing: a file is published with a precondition the destination enforces, so a run that
stalled past its lease (and lost the partition to a newer run) can never replace what the newer
run published. A batch's first publish requires the name to be free; a redo requires the
destination to still hold the version the ledger recorded (``Batch.replaces``). Each provider
returns the version it published (S3 ETag, GCS generation, Azure ETag, local file identity) and
raises ``Superseded`` when the precondition fails. Every upload carries a random attempt id in
the object's metadata: when an SDK retries a write whose answer the network lost, the retry
finds the name taken, and the object's attempt id tells this write's own object from a newer
run's. Nothing the export publishes is ever deleted: a redo whose rows are all gone publishes an
empty file over the old one, by the same conditional write, and the manifest is replaced, never
removed; the one delete is the validation marker's, conditional on the version just written.
What a crashed run left behind (temporary files, unfinished multipart uploads) is removed by
``clean_up`` on the partition's next sync.
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import datetime
from tempfile import SpooledTemporaryFile
from typing import BinaryIO

from prism_pipelines.batch import Batch
from prism_pipelines.errors import Superseded
from prism_pipelines.sinks.base import Delivery, Sink
from prism_pipelines.sinks.storage.formats import FORMATS
from prism_pipelines.stop_points import stop_point

SPOOL_IN_MEMORY = 8 * 1024 * 1024
#: the hour's manifest (DESIGN.md, "Archive formats, layouts and manifests")
MANIFEST_NAME = "_manifest.json"


def partition_folder(prefix: str, partition: datetime, layout: str = "spec") -> str:
    """``{prefix}/logs/YYYY/MM/DD/hour=HH`` (the spec's layout), or with ``layout="hive"``
    ``{prefix}/logs/date=YYYY-MM-DD/hour=HH``, which query engines prune by date too."""
    day = f"date={partition:%Y-%m-%d}" if layout == "hive" else f"{partition:%Y/%m/%d}"
    path = f"logs/{day}/hour={partition:%H}"
    prefix = prefix.strip("/")
    return f"{prefix}/{path}" if prefix else path


def object_key(
    prefix: str, partition: datetime, batch_id: str, layout: str = "spec", format_: str = "jsonl"
) -> str:
    """``{partition folder}/batch_{id}.jsonl.gz`` (or ``.parquet``)."""
    folder = partition_folder(prefix, partition, layout)
    return f"{folder}/batch_{batch_id}{FORMATS[format_].extension}"


@dataclass
class Staged:
    """A batch's file, written to its staging file and not yet published (``StorageSink.stage``);
    closing it releases the staging file (and removes it, unless ``put`` took it)."""

    key: str
    spool: BinaryIO
    size: int
    sha256: str
    uncompressed: int
    _staging: ExitStack

    def close(self) -> None:
        self._staging.close()

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StorageSink(Sink):
    @property
    def chunk_rows(self) -> int:
        return FORMATS[self.integration.format].chunk_rows

    def location_for(self, batch: Batch) -> str:
        i = self.integration
        return object_key(i.prefix, batch.partition, batch.id, i.layout, i.format)

    def folder_of(self, partition: datetime) -> str:
        """The hour's folder under the integration's prefix and layout."""
        return partition_folder(self.integration.prefix, partition, self.integration.layout)

    def stage(self, batch: Batch) -> Staged:
        """Read the batch and write its file where no reader sees it (``staging``): the file is
        made visible by ``publish``, after the ledger has opened the batch, and meanwhile the
        sync reads and writes the next batch's file. Its key is ``batch.location``, which the
        sync has set (``location_for``, or a redo's recorded one)."""
        key = batch.location
        uncompressed = 0
        # A redo keeps its recorded name, and so the format it was first written in.
        format_ = next(f for f in FORMATS.values() if key.endswith(f.extension))
        with ExitStack() as stack:
            spool = stack.enter_context(self.staging(key))
            with format_.writer(spool, self.integration.fields) as out:
                for chunk in batch.chunks():
                    uncompressed += out.write(chunk)
            staged = Staged(key, spool, out.size, out.sha256, uncompressed, stack.pop_all())
        return staged

    def publish(self, batch: Batch, staged: Staged) -> Delivery:
        """Make the staged file visible under its key, conditional on ``batch.replaces``
        (fencing); the caller closes ``staged``."""
        if batch.records_read == 0 and batch.replaces is None:
            return Delivery(location=None)  # no rows and nothing to replace: no file
        # A redo whose rows are all gone (deleted from the gateway) publishes the empty file
        # over the earlier attempt's, by the same conditional write: never a delete, which
        # not every destination can make conditional (docs/reliability.md, Fencing).
        retries_before = self.retries.value
        staged.spool.seek(0)
        stop_point("publish_file")
        version = self._publish(staged.key, staged.spool, staged.size, batch.replaces)
        return Delivery(
            published_version=version,
            records=batch.records_read,
            bytes=staged.size,
            requests=1,
            retries=self.retries.value - retries_before,
            location=staged.key,
            sha256=staged.sha256,
            counters={"uncompressed_bytes": staged.uncompressed, "files": 1},
        )

    def manifest_key(self, partition: datetime) -> str:
        return f"{self.folder_of(partition)}/{MANIFEST_NAME}"

    def publish_manifest(self, partition: datetime, manifest: bytes, replaces: str | None) -> str:
        """Write the hour's ``_manifest.json`` only if the destination holds version
        ``replaces`` of it (None: none); returns the version written. Raises ``Superseded``
        otherwise (manifest.py decides whose manifest is there)."""
        with SpooledTemporaryFile() as data:
            size = data.write(manifest)
            data.seek(0)
            return self._publish(self.manifest_key(partition), data, size, replaces)

    def _publish(self, key: str, data: BinaryIO, size: int, replaces: str | None) -> str:
        """``put``, taking a refusal whose object carries this very attempt's id for the
        success it is (the SDK retried a write that had succeeded)."""
        attempt = uuid.uuid4().hex
        try:
            return self.put(key, data, size, replaces, attempt)
        except Superseded:
            version, written_by = self.stored(key)
            if version is None or written_by != attempt:
                raise
            return version

    def validate(self) -> str:
        """Write and delete a marker under the prefix: the permission the export needs."""
        name = f"_prism_validate_{uuid.uuid4().hex}"
        prefix = self.integration.prefix.strip("/")
        key = f"{prefix}/{name}" if prefix else name
        with SpooledTemporaryFile() as marker:
            size = marker.write(b"prism-pipelines validation marker\n")
            marker.seek(0)
            version = self._publish(key, marker, size, replaces=None)
        self.remove(key, version)
        return f"wrote and deleted {self.describe(key)}"

    def staging(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Where a batch's file is written before ``put`` stores it under ``key``."""
        return SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)

    def superseded(self, key: str) -> Superseded:
        """What ``put`` raises when its precondition fails."""
        return Superseded(
            f"integration '{self.integration.name}': {self.describe(key)} was published by "
            "another run meanwhile (this run stalled past its lease and the partition was taken "
            "over). This run stopped without overwriting it; the cursor did not move, and the "
            "run that holds the partition now delivers its rows."
        )

    @abstractmethod
    def put(self, key: str, data: BinaryIO, size: int, replaces: str | None, attempt: str) -> str:
        """Store ``data`` under ``key`` atomically (with ``formats.content_headers(key)`` and
        ``attempt`` in its metadata), only if ``key`` holds version ``replaces`` (None: only if
        ``key`` is free), enforced by the destination; returns the version stored. The SDK's
        retries are counted into ``self.retries``; raises ``self.superseded(key)`` when the
        precondition fails, our other errors with actionable text."""

    def stored(self, key: str) -> tuple[str | None, str | None]:
        """(version, attempt id) of the object under ``key``; (None, None) if there is none.
        Only destinations whose SDK retries a write need it: the local folder's write is not
        retried, so it never refuses its own write."""
        return None, None

    @abstractmethod
    def remove(self, key: str, version: str) -> None:
        """Delete ``key`` only if it still holds ``version`` (the destination's precondition);
        nothing if it is gone. Only the validation marker is ever deleted: a data file or a
        manifest is replaced, never deleted (docs/reliability.md, Fencing)."""

    @abstractmethod
    def describe(self, key: str) -> str:
        """A human-readable address, e.g. ``s3://bucket/key``."""
