"""The archive's file formats (``format:`` of a storage integration): gzip JSONL, the spec's, and
Parquet, for query engines (its writer in parquet.py). Both stream: a batch is written chunk by
chunk into the staging file (each chunk compressed onto the gzip stream, or one Parquet row
group per chunk), never whole in memory. Each writer hashes the bytes as they reach the staging
file, so the file's sha256 (the manifest's) is known without reading the file again.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from concurrent.futures import Future, wait
from dataclasses import dataclass
from importlib import import_module
from typing import BinaryIO

from isal import isal_zlib

from prism_pipelines.batch import CHUNK_ROWS, Chunk
from prism_pipelines.workers import worker

#: isa-l's level 1 (of 0-3): standard gzip output, several times zlib's speed at a similar size
GZIP_LEVEL = 1


class _Hashed:
    """The staging file, seen through the sha256 and size of what is written to it."""

    def __init__(self, target: BinaryIO):
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._target.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._target.flush()


class FileWriter:
    """One batch's file: ``write`` each chunk, then leave the ``with`` block; then ``sha256``
    and ``size`` describe the file as stored.

    The last step of each chunk (compressing it, writing it out) runs in the process's encoding
    thread (``workers``), one chunk behind the caller: isa-l and Arrow release the GIL, so chunk
    n is compressed on another core while the caller encodes chunk n+1 (and the reader's thread
    reads n+2). At most one chunk waits, so memory stays bounded.
    """

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        self._out = _Hashed(target)
        self._encoding = worker("encode")
        self._pending: Future | None = None

    def write(self, chunk: Chunk) -> int:
        """Write the chunk's records; returns their size before compression."""
        raise NotImplementedError

    def _end(self) -> None:
        """Write what ends the file, after the last chunk."""

    def _abandon(self) -> None:
        """Release what the writer holds; the file is thrown away."""

    def _behind(self, step, *args) -> None:
        """Run ``step(*args)`` in the writer's thread once the previous chunk's step is done."""
        self._wait()
        self._pending = self._encoding.submit(step, *args)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # raises what the thread raised

    @property
    def sha256(self) -> str:
        return self._out.sha256.hexdigest()

    @property
    def size(self) -> int:
        return self._out.size

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ended = False
        try:
            if exc_type is None:
                self._wait()
                self._end()
                ended = True
        finally:
            if not ended:
                if self._pending is not None:
                    wait([self._pending])  # the thread is done with the file before it goes
                self._abandon()


class JsonlWriter(FileWriter):
    """Gzip JSONL (isa-l): one gzip member whose header's extra field holds the file's write id
    (``write_id``), then the deflated lines and the gzip trailer."""

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        super().__init__(target, fields)
        self._compressor = isal_zlib.compressobj(
            GZIP_LEVEL, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS
        )
        self._crc = 0
        self._length = 0
        # magic, deflate, FEXTRA, no mtime, no extra flags, OS unknown; then the extra field:
        # one subfield "PW" holding the write id (readers skip it; DuckDB refuses a comment)
        ident = write_id().encode()
        extra = b"PW" + struct.pack("<H", len(ident)) + ident
        self._out.write(b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + struct.pack("<H", len(extra)) + extra)

    def write(self, chunk: Chunk) -> int:
        parts = chunk.jsonl()
        self._behind(self._compress, parts)
        return sum(part.size for part in parts)

    def _compress(self, parts: list) -> None:
        for data in parts:
            self._crc = isal_zlib.crc32(data, self._crc)
            self._length += data.size
            self._out.write(self._compressor.compress(data))

    def _end(self) -> None:
        self._out.write(self._compressor.flush())
        self._out.write(struct.pack("<II", self._crc, self._length & 0xFFFFFFFF))


def write_id() -> str:
    """A random id each file carries (JSONL: the gzip header's extra field; Parquet: the footer's
    ``prism_write_id``), so two writes of the same rows differ in their bytes: S3's version of
    a file is its ETag, the MD5 of its bytes, and a newer run's file must never carry the
    version a stalled run expects to replace (fencing, storage/base.py)."""
    return f"prism-write-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Format:
    name: str
    #: what follows ``batch_{id}`` in the file's name
    extension: str
    content_type: str
    content_encoding: str | None
    #: ``module:class`` of its ``FileWriter``, imported when a file is first written, as
    #: ``build_sink`` imports a sink: only processes that write Parquet load its writer
    writer_class: str
    #: rows the sync reads and hands over at a time for this format (``Sink.chunk_rows``)
    chunk_rows: int

    def writer(self, target: BinaryIO, fields: tuple[str, ...] | None) -> FileWriter:
        """A writer of one file in this format onto ``target``."""
        module, _, name = self.writer_class.partition(":")
        return getattr(import_module(module), name)(target, fields)


# JSONL's encoder pays a fixed cost per chunk (polars' frame and plan, its threads' hand-offs):
# an hour in chunks of 10,000 rows takes 8% less time than in 5,000 (15 of 16 A/B runs), for a
# peak 20 MB higher (232 against 212 MB); 15,000 another 2.5% (13 of 16) for 254 MB, still flat
# from 100,000 to 1,000,000 rows (1.16×); 20,000 is not (1.21×). Parquet writes a row group per
# chunk and keeps 5,000: at 10,000 its peak is 15 MB higher (156 against 141 MB).
# bench/README.md.
JSONL = Format(
    "jsonl",
    ".jsonl.gz",
    "application/x-ndjson",
    "gzip",
    f"{__name__}:JsonlWriter",
    chunk_rows=15_000,
)
PARQUET = Format(
    "parquet",
    ".parquet",
    "application/vnd.apache.parquet",
    None,
    "prism_pipelines.sinks.storage.parquet:ParquetWriter",
    chunk_rows=CHUNK_ROWS,
)
FORMATS = {f.name: f for f in (JSONL, PARQUET)}
#: the manifest (``_manifest.json``) and the validation marker
JSON_TYPE = "application/json"
PLAIN_TYPE = "text/plain"


def content_headers(key: str) -> tuple[str, str | None]:
    """(Content-Type, Content-Encoding) an object is stored with, by its name: every ``put``
    asks here, so a data file, the manifest and the validation marker each say what they are."""
    for format_ in FORMATS.values():
        if key.endswith(format_.extension):
            return format_.content_type, format_.content_encoding
    return (JSON_TYPE if key.endswith(".json") else PLAIN_TYPE), None
