"""The Parquet format (``format: parquet``): the contract's typed columns (DESIGN.md, "Archive
formats"), zstd, a row group per chunk, written from the chunk's record batch as the reader made
it (``Chunk.table``): no record, no Python value per row. Imported only by processes that write
one (formats.py).
"""

from __future__ import annotations

from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from prism_pipelines.batch import Chunk
from prism_pipelines.records import (
    BOOLEAN_FIELDS,
    EXPORTED_FIELDS,
    FLOAT_FIELDS,
    INTEGER_FIELDS,
)
from prism_pipelines.sinks.storage.formats import FileWriter, write_id

COMPRESSION = "zstd"

_TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: the exported fields that are not text (DESIGN.md, "Archive formats"); the rest are strings,
#: ``guardrail_results`` the JSON text
_NOT_TEXT = {
    **dict.fromkeys(INTEGER_FIELDS, pa.int64()),
    **dict.fromkeys(FLOAT_FIELDS, pa.float64()),
    **dict.fromkeys(BOOLEAN_FIELDS, pa.bool_()),
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
SCHEMA = pa.schema([(f, _NOT_TEXT.get(f, pa.string())) for f in EXPORTED_FIELDS])


class ParquetWriter(FileWriter):
    """Parquet, zstd, one row group per chunk, typed by ``SCHEMA`` (only the
    integration's fields, in its order)."""

    def __init__(self, target: BinaryIO, fields: tuple[str, ...] | None):
        super().__init__(target, fields)
        self._schema = pa.schema(
            [SCHEMA.field(f) for f in fields or EXPORTED_FIELDS],
            metadata={"prism_write_id": write_id()},
        )
        self._writer = pq.ParquetWriter(
            self._out,
            self._schema,
            compression=COMPRESSION,
            use_dictionary=[f for f in _DICTIONARY if f in self._schema.names],
        )

    def write(self, chunk: Chunk) -> int:
        if not len(chunk):
            return 0
        # The contract's types: PostgreSQL's integers may be 32-bit, its times microseconds
        # (truncated to the record's milliseconds, as the JSON lines are).
        table = chunk.table().cast(self._schema, safe=False)
        self._behind(self._writer.write_batch, table, len(chunk))
        return table.nbytes

    def _end(self) -> None:
        self._writer.close()

    def _abandon(self) -> None:
        self._writer.close()
