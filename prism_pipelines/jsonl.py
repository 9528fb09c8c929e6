"""JSON lines from a checked batch's columns: the export's hot path (every JSONL file is written
through it), byte for byte what the record encoder writes, ``orjson.dumps(record,
option=OPT_APPEND_NEWLINE)`` per ``records.build_records`` dict, without a Python object per
value.

A line is one polars ``concat_str`` of the keys and the columns' JSON text, which polars writes
as orjson does (prism_pipelines_tests/test_jsonl.py holds it to that): integers and floats (the
shortest text that reads back) cast to text, booleans and times picked from tables of their
texts, text in quotes, ``guardrail_results`` (orjson's JSON already) as it is, ``null`` for a
null. Times are written as ``records.format_timestamp`` writes them (milliseconds truncated):
when a batch's times lie in one hour, as a partition's do, as the hour's text and each one's
``MM:SS.`` and ``mmmZ`` taken from tables by position, else by ``strftime`` (chrono's, per
value: picking times and booleans from tables takes 19% off the encoder's instructions on demo
traffic, measured with callgrind). Where a cast would differ is found per column by a
vectorised look, and only such a column is written otherwise: text holding a character JSON
escapes (``"``, ``\\``, U+0000–U+001F) by polars' JSON encoder, whose escapes are orjson's; a
NaN or infinite float as ``null``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from prism_pipelines.records import TIMESTAMP_FORMAT, format_timestamp

#: the field whose text is JSON already (orjson's), written as it is
RAW_JSON = "guardrail_results"

# How a column's values become JSON text: in quotes (text that JSON needs not escape, times),
# as they are (booleans, integers, finite floats, the raw JSON), or by a JSON encoder.
_QUOTED, _TIME, _ZONED, _BOOLEAN, _PLAIN, _RAW, _FLOAT, _ESCAPED = range(8)

_HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the text of a time within its hour, by its second of the hour and by its millisecond: the
#: tables the times of one hour are picked from (each text short enough for polars to hold in
#: its string view, no buffer)
_SECOND_TEXTS = pl.Series([f"{m:02d}:{s:02d}." for m in range(60) for s in range(60)])
_MILLISECOND_TEXTS = pl.Series([f"{ms:03d}Z" for ms in range(1000)])


def encode_jsonl(batch: pa.RecordBatch) -> list[pa.Buffer]:
    """One newline-terminated JSON object per row of ``batch``, its columns the keys, in order:
    the bytes the record encoder writes for the same records, as pyarrow ``Buffer``s to be
    written one after another (bytes-like: isal, hashlib and ``bytes()`` take them)."""
    if batch.num_rows == 0 or batch.num_columns == 0:
        return [pa.py_buffer(b"{}\n" * batch.num_rows)]
    plan = tuple(
        (name, kind := _kind(name, column), column.null_count > 0, _hour(kind, column))
        for name, column in zip(batch.schema.names, batch.columns, strict=True)
    )
    frame = pl.from_arrow(batch, rechunk=False).lazy()
    lines = frame.select(_line(plan)).collect().to_series()
    views = lines.to_arrow(compat_level=pl.CompatLevel.newest())  # string_view, as polars holds it
    if isinstance(views, pa.ChunkedArray):
        views = views.combine_chunks()
    if _written_in_order(views):
        return views.buffers()[2:]
    text = views.cast(pa.large_string())  # the lines copied into one buffer
    _, offsets, data = text.buffers()
    ends = np.frombuffer(offsets, np.int64)[[text.offset, text.offset + len(text)]]
    return [data[int(ends[0]) : int(ends[1])]]


def _written_in_order(lines: pa.Array) -> bool:
    """Whether the data buffers of ``lines`` (a ``string_view`` array) hold its lines and nothing
    else, one after another: then they are the JSON lines as they are, where the copy into one
    buffer would move the chunk's every byte again (a chunk of 10,000 rows: 6 MB). polars
    writes each line it builds after the one before, so they are; a line short enough to be
    held in its view (12 bytes), or another layout, takes the copy."""
    _, views, *data = lines.buffers()
    view = np.frombuffer(views, np.int32).reshape(-1, 4)[lines.offset : lines.offset + len(lines)]
    size, buffer, start = view[:, 0], view[:, 2], view[:, 3]
    if not len(view) or size.min() <= 12 or buffer[0] or start[0]:
        return False
    same = (buffer[1:] == buffer[:-1]) & (start[1:] == start[:-1] + size[:-1])
    following = (buffer[1:] == buffer[:-1] + 1) & (start[1:] == 0)
    return bool((same | following).all()) and int(size.sum(dtype=np.int64)) == sum(
        part.size for part in data
    )


def _kind(name: str, column: pa.Array) -> int:
    type_ = column.type
    if name == RAW_JSON:
        return _RAW
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return _ESCAPED if _escapes(column) else _QUOTED
    if pa.types.is_string_view(type_):
        return _ESCAPED
    if pa.types.is_timestamp(type_):
        return _TIME if type_.tz is None else _ZONED
    if pa.types.is_boolean(type_):
        return _BOOLEAN
    if pa.types.is_floating(type_) and not (type_ == pa.float64() and _finite(column)):
        return _FLOAT  # a float32 too: orjson writes the double it reads as
    return _PLAIN


def _hour(kind: int, column: pa.Array) -> int | None:
    """For a time column with no null whose times all lie in one hour: that hour's start in
    microseconds since 1970 (UTC)."""
    if kind not in (_TIME, _ZONED) or column.null_count or not len(column):
        return None
    per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}.get(column.type.unit)
    if per_unit is None:
        return None  # nanoseconds: strftime's
    bounds = pc.min_max(column.cast(pa.int64()))
    first, last = (bounds[end].as_py() * per_unit // _HOUR_US for end in ("min", "max"))
    return first * _HOUR_US if first == last else None


@lru_cache(maxsize=256)
def _line(plan: tuple[tuple[str, int, bool, int | None], ...]) -> pl.Expr:
    """The expression of a line, for the batch's columns (name, kind, whether it has a null, the
    hour of its times if they lie in one). Nulls are skipped by ``concat_str``: a null value
    writes ``null`` through its key's literal."""
    parts: list[pl.Expr] = []
    pending = "{"  # literal text not yet written: the closing quote, comma and key
    for name, kind, nullable, hour in plan:
        quoted_name = orjson.dumps(name).decode()
        key = pending + quoted_name + ":"
        column = pl.col(name)
        null = column.is_null()
        if hour is not None:  # "YYYY-MM-DDTHH:" + "MM:SS." + "mmmZ"
            since = column.dt.epoch("us") - hour
            start = format_timestamp(_EPOCH + timedelta(microseconds=hour))
            parts += [
                pl.lit(f'{key}"{start[:14]}'),  # "YYYY-MM-DDTHH:"
                pl.lit(_SECOND_TEXTS).gather(since // 1_000_000),
                pl.lit(_MILLISECOND_TEXTS).gather(since // 1_000 % 1_000),
            ]
            pending = '",'
            continue
        if kind == _BOOLEAN:  # a null picks no text: null, then the key's null
            value = pl.lit(pl.Series([key + "false", key + "true"])).gather(column.cast(pl.UInt8))
            parts.append(value.fill_null(pl.lit(key + "null")) if nullable else value)
            pending = ","
            continue
        if kind in (_QUOTED, _TIME, _ZONED):
            text = column
            if kind == _ZONED:
                text = text.dt.convert_time_zone("UTC")
            if kind != _QUOTED:
                text = text.dt.strftime(TIMESTAMP_FORMAT)
            if nullable:
                opening = pl.when(null).then(pl.lit(key + "null")).otherwise(pl.lit(key + '"'))
                parts += [opening, text, pl.when(~null).then(pl.lit('"'))]
                pending = ","
            else:
                parts += [pl.lit(key + '"'), text]
                pending = '",'
            continue
        if kind == _ESCAPED:  # {"name":"..."} with orjson's escapes, null written null
            member = pl.struct(column).struct.json_encode()
            text = member.str.slice(len(quoted_name) + 2).str.strip_suffix("}")
        elif kind == _FLOAT:  # NaN and infinities are null
            text = pl.when(column.is_finite()).then(column.cast(pl.Float64).cast(pl.String))
            nullable = True
        elif kind == _RAW:
            text = column
        else:
            text = column.cast(pl.String)
        if nullable:
            parts += [
                pl.when(text.is_null()).then(pl.lit(key + "null")).otherwise(pl.lit(key)),
                text,
            ]
        else:
            parts += [pl.lit(key), text]
        pending = ","
    parts.append(pl.lit(pending.removesuffix(",") + "}\n"))
    return pl.concat_str(parts, ignore_nulls=True)


def _escapes(column: pa.Array) -> bool:
    """Whether any text of ``column`` holds a character JSON escapes: ``"``, ``\\``, a control."""
    _, offsets, data = column.buffers()
    if data is None:
        return False
    wide = pa.types.is_large_string(column.type)
    bounds = np.frombuffer(offsets, np.int64 if wide else np.int32)
    start, end = int(bounds[column.offset]), int(bounds[column.offset + len(column)])
    text = np.frombuffer(data, np.uint8, end - start, start)
    return bool(text.size) and (text.min() < 0x20 or (text == 0x22).any() or (text == 0x5C).any())


def _finite(column: pa.Array) -> bool:
    """Whether every value of a float column is finite (a null's slot may hold anything: a
    false alarm costs only the slower expression)."""
    _, values = column.buffers()
    width = column.type.byte_width
    floats = np.frombuffer(values, f"f{width}", len(column), column.offset * width)
    return bool(np.isfinite(floats).all())
