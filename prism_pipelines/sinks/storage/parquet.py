"""The Parquet format (``format: parquet``): the contract's typed columns (DESIGN.md, "Archive
formats"), zstd, a row group per chunk. Built from the chunk's columns (``Chunk.columns``), so no
record is made for a Parquet file; imported only by processes that write one (formats.py).
"""

from __future__ import annotations

import os
from typing import BinaryIO

# Arrow allocates from the C heap (glibc, which source.py tunes to keep freed memory for the next
# chunk) rather than its default mimalloc pool, which keeps what it frees for itself: the hour's
# export peaked at 207 MB with mimalloc, 189 MB without, at the same speed. Only Arrow's own
# setting, read when pyarrow loads, reaches the pool its C++ writer uses (``pa.set_memory_pool``
# does not); a pool the user chose is left alone.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from prism_pipelines.batch import Chunk  # noqa: E402
from prism_pipelines.records import (  # noqa: E402
    BOOLEAN_FIELDS,
    EXPORTED_FIELDS,
    FLOAT_FIELDS,
    INTEGER_FIELDS,
)
from prism_pipelines.sinks.storage.formats import FileWriter, write_id  # noqa: E402

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
        if not chunk.ids:
            return 0
        columns = chunk.columns()
        arrays = []
        for field in self._schema:
            if field.type == _TIMESTAMP:  # the record's ``2026-03-31T14:22:10.000Z`` text
                arrays.append(pa.array(columns[field.name], pa.string()).cast(_TIMESTAMP))
            else:
                arrays.append(pa.array(columns[field.name], field.type))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._behind(self._writer.write_table, table, len(chunk.ids))
        return table.nbytes

    def _end(self) -> None:
        self._writer.close()

    def _abandon(self) -> None:
        self._writer.close()
