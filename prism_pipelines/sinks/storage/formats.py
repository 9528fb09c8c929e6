"""The archive's file formats (``format:`` of a storage integration): gzip JSONL, the spec's, and
Parquet, for query engines. Both stream: a batch is written chunk by chunk into the staging
file (each chunk compressed onto the gzip stream, or one Parquet row group per chunk), never
whole in memory. Each writer hashes the bytes as they reach the staging file, so the file's
sha256 (the manifest's) is known without reading the file again.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from isal import isal_zlib

from prism_pipelines.batch import Chunk
from prism_pipelines.records import EXPORTED_FIELDS

#: isa-l's level 1 (of 0-3): standard gzip output, several times zlib's speed at a similar size
GZIP_LEVEL = 1
GZIP_WBITS = 16 + 15  # a gzip header and trailer, not a raw zlib stream
PARQUET_COMPRESSION = "zstd"

_TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: the exported fields that are not text (DESIGN.md, "Archive formats"); the rest are strings,
#: ``guardrail_results`` the JSON text
_NOT_TEXT = {
    **dict.fromkeys(
        ("latency_ms", "input_tokens", "output_tokens", "total_tokens", "status_code"), pa.int64()
    ),
    "cost": pa.float64(),
    **dict.fromkeys(
        ("is_error", "cache_hit", "guardrail_triggered", "fallback_used", "is_stream"), pa.bool_()
    ),
    "timestamp": _TIMESTAMP,
}
#: text columns with few distinct values, dictionary-encoded; the others (ids, messages) are not:
#: their dictionaries only grew the files (measured: 30% larger with every column's)
_DICTIONARY = (
    "model",
    "provider",
    "routing_strategy",
    "event_type",
    "model_requested",
    "cache_status",
)
#: one column per exported field, in the record's order
PARQUET_SCHEMA = pa.schema([(f, _NOT_TEXT.get(f, pa.string())) for f in EXPORTED_FIELDS])


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

    The last step of each chunk (compressing it, writing it out) runs in a thread of its own,
    one chunk behind the caller: isa-l and Arrow release the GIL, so chunk n is compressed on
    another core while the caller encodes chunk n+1. At most one chunk waits, so memory stays
    bounded.
    """

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        self._out = _Hashed(target)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="prism-encode")
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
        self._pending = self._thread.submit(step, *args)

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
            self._thread.shutdown(wait=True)
            if not ended:
                self._abandon()


class JsonlWriter(FileWriter):
    """Gzip JSONL (isa-l)."""

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        super().__init__(target, fields)
        self._compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)

    def write(self, chunk: Chunk) -> int:
        data = chunk.jsonl()
        self._behind(self._compress, data)
        return len(data)

    def _compress(self, data: bytes) -> None:
        self._out.write(self._compressor.compress(data))

    def _end(self) -> None:
        self._out.write(self._compressor.flush())


class ParquetWriter(FileWriter):
    """Parquet, zstd, one row group per chunk, typed by ``PARQUET_SCHEMA`` (only the
    integration's fields, in its order)."""

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        super().__init__(target, fields)
        self._schema = pa.schema([PARQUET_SCHEMA.field(f) for f in fields or EXPORTED_FIELDS])
        self._writer = pq.ParquetWriter(
            self._out,
            self._schema,
            compression=PARQUET_COMPRESSION,
            use_dictionary=[f for f in _DICTIONARY if f in self._schema.names],
        )

    def write(self, chunk: Chunk) -> int:
        records = chunk.records
        if not records:
            return 0
        columns = []
        for field in self._schema:
            values = list(map(itemgetter(field.name), records))
            if field.name == "guardrail_results":  # parsed for the JSON record: JSON text again
                values = [None if v is None else orjson.dumps(v).decode() for v in values]
            if field.type == _TIMESTAMP:  # the record's ``2026-03-31T14:22:10.000Z`` text
                columns.append(pa.array(values, pa.string()).cast(_TIMESTAMP))
            else:
                columns.append(pa.array(values, field.type))
        table = pa.Table.from_arrays(columns, schema=self._schema)
        self._behind(self._writer.write_table, table, len(records))
        return table.nbytes

    def _end(self) -> None:
        self._writer.close()

    def _abandon(self) -> None:
        self._writer.close()


@dataclass(frozen=True)
class Format:
    name: str
    #: what follows ``batch_{id}`` in the file's name
    extension: str
    content_type: str
    content_encoding: str | None
    writer: type[FileWriter]


JSONL = Format("jsonl", ".jsonl.gz", "application/x-ndjson", "gzip", JsonlWriter)
PARQUET = Format("parquet", ".parquet", "application/vnd.apache.parquet", None, ParquetWriter)
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
