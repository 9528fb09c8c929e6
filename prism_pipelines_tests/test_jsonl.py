"""``jsonl.encode_jsonl`` writes, from a checked batch's columns, the very bytes the record
encoder writes: one ``orjson.dumps(record, option=OPT_APPEND_NEWLINE)`` per record, the record
the dict of the batch's columns in their order, ``timestamp`` as ``records.format_timestamp``
writes it and ``guardrail_results`` parsed. Over any batch hypothesis builds (every field type,
nulls, text JSON escapes, floats of every magnitude, any subset and order of the fields, a
sliced batch) and over the edges by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism_pipelines.jsonl import encode_jsonl
from prism_pipelines.records import (
    BOOLEAN_FIELDS,
    EXPORTED_FIELDS,
    INTEGER_FIELDS,
    format_timestamp,
)

HOUR = timedelta(hours=1)
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: characters JSON escapes or an encoder could get wrong
NASTY = ['"', "\\", "/", "\x7f", "\u2028", "\u2029", "\x85", "é", "€", "😀", "\ufeff", "\U0010ffff"]
NASTY += [chr(c) for c in range(0x20)]
#: text no JSON encoder escapes (non-ASCII included)
CLEAN = "abcXYZ019 _-:./{}[],\x7f\u2028é€😀"
FLOATS = [
    0.1 + 0.2,
    1e-7,
    1e-5,
    1e-4,
    0.001,
    123456789012345678.0,
    1e15,
    1e16,
    1e17,
    1e21,
    1e22,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.0,
    -0.0,
    1.0,
    -1.0,
    2.0,
    100.0,
    12345.0,
    9007199254740993.0,
    2.0**53,
    2.0**63,
    2.0**64,
    0.000123,
    1.5e-10,
    3.14159,
    1 / 3,
]
INTEGER_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
INTEGER_TYPES += [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def orjson_lines(batch: pa.RecordBatch) -> bytes:
    """What the record encoder writes for the batch's rows: the path ``encode_jsonl`` replaces."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        values = column.to_pylist()
        if name == "timestamp":
            values = [None if v is None else format_timestamp(v) for v in values]
        elif name == "guardrail_results":
            values = [None if v is None else orjson.loads(v) for v in values]
        columns.append(values)
    records = [
        dict(zip(batch.schema.names, row, strict=True)) for row in zip(*columns, strict=True)
    ]
    return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)


def batch_of(columns: dict[str, tuple[list, pa.DataType]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(values, type_) for values, type_ in columns.values()], names=list(columns)
    )


def encoded(batch: pa.RecordBatch) -> bytes:
    parts = encode_jsonl(batch)
    return b"".join(memoryview(part) for part in parts)  # bytes-like: what isal and hashlib take


# --- the property -------------------------------------------------------------------------

_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(FLOATS)
    | st.text(st.sampled_from(NASTY) | st.characters(codec="utf-8"), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.sampled_from(NASTY + list(CLEAN)), max_size=6), inner, max_size=3
        )
    ),
    max_leaves=8,
)


def _maybe(strategy, nulls: bool):
    return st.one_of(st.none(), strategy) if nulls else strategy


@st.composite
def _column(draw, name: str, size: int) -> pa.Array:
    """A column of ``name``'s type, with or without nulls, in ways that take every path of the
    encoder (text that needs escapes or not, floats finite or not, …)."""
    nulls = draw(st.booleans())
    values = st.lists  # a column of ``size`` values drawn from a strategy
    if name in INTEGER_FIELDS:
        type_ = draw(st.sampled_from(INTEGER_TYPES))
        bits = type_.bit_width
        low, high = (
            (0, 2**bits - 1)
            if pa.types.is_unsigned_integer(type_)
            else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        ints = st.integers(low, high) | st.sampled_from([low, high, 0])
        return pa.array(draw(values(_maybe(ints, nulls), min_size=size, max_size=size)), type_)
    if name == "cost":
        floats = st.sampled_from(FLOATS) | st.floats(allow_nan=False, allow_infinity=False)
        if draw(st.booleans()):  # not finite (the checks make them null; the encoder too)
            floats = floats | st.sampled_from([float("nan"), float("inf"), -float("inf")])
        return pa.array(
            draw(values(_maybe(floats, nulls), min_size=size, max_size=size)), pa.float64()
        )
    if name in BOOLEAN_FIELDS:
        return pa.array(
            draw(values(_maybe(st.booleans(), nulls), min_size=size, max_size=size)), pa.bool_()
        )
    if name == "timestamp":
        times = st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999))
        times = times | st.sampled_from(
            [datetime(1969, 12, 31, 23, 59, 59, 999999), datetime(2026, 3, 31, 14, 22, 10, 999900)]
        )
        array = pa.array(
            draw(values(_maybe(times, nulls), min_size=size, max_size=size)), pa.timestamp("us")
        )
        return array.cast(pa.timestamp(draw(st.sampled_from(["us", "ms"]))), safe=False)
    type_ = draw(st.sampled_from([pa.string(), pa.large_string()]))
    if name == "guardrail_results":
        texts = _json_value.map(lambda v: orjson.dumps(v).decode())
    else:
        alphabet = st.sampled_from(list(CLEAN))
        if draw(st.booleans()):
            alphabet = alphabet | st.sampled_from(NASTY) | st.characters(codec="utf-8")
        texts = st.text(alphabet, max_size=12)
    return pa.array(draw(values(_maybe(texts, nulls), min_size=size, max_size=size)), type_)


@st.composite
def _batches(draw) -> pa.RecordBatch:
    fields = draw(
        st.just(EXPORTED_FIELDS)
        | st.lists(st.sampled_from(EXPORTED_FIELDS), unique=True, min_size=1).map(tuple)
    )
    size = draw(st.integers(0, 12))
    skip, extra = draw(st.integers(0, 3)), draw(st.integers(0, 3))  # a slice of a longer batch
    total = skip + size + extra
    batch = pa.RecordBatch.from_arrays(
        [draw(_column(f, total)) for f in fields], names=list(fields)
    )
    return batch.slice(skip, size)


@PROPERTY
@given(_batches())
def test_any_batch_encodes_to_the_record_encoders_bytes(batch):
    assert encoded(batch) == orjson_lines(batch)


# --- the edges, by name -------------------------------------------------------------------


def test_floats_of_every_magnitude_are_written_as_orjson_writes_them():
    batch = batch_of(
        {"cost": ([*FLOATS, None, float("nan"), float("inf"), -float("inf")], pa.float64())}
    )
    data = encoded(batch)
    assert data == orjson_lines(batch)
    lines = data.decode().splitlines()
    assert lines[1] == '{"cost":1e-7}' and lines[2] == '{"cost":0.00001}'
    assert lines[16:19] == ['{"cost":0.0}', '{"cost":-0.0}', '{"cost":1.0}']
    assert lines[-4:] == ['{"cost":null}'] * 4  # null, NaN, infinities: JSON has no NaN


def test_a_float32_is_written_as_the_double_it_reads_as():
    batch = batch_of({"cost": ([0.1, 1.0, 3.4e38, None, float("nan")], pa.float32())})
    assert encoded(batch) == orjson_lines(batch)
    assert encoded(batch).startswith(b'{"cost":0.10000000149011612}\n{"cost":1.0}\n')


def test_integers_at_their_types_bounds():
    columns = {
        "latency_ms": ([-(2**63), 2**63 - 1, 0, None], pa.int64()),
        "input_tokens": ([-(2**31), 2**31 - 1, -1, None], pa.int32()),
        "output_tokens": ([0, 2**64 - 1, 1, None], pa.uint64()),
        "total_tokens": ([-128, 127, 0, None], pa.int8()),
        "status_code": ([200, 500, 0, None], pa.int16()),
    }
    batch = batch_of(columns)
    assert encoded(batch) == orjson_lines(batch)
    assert encoded(batch).startswith(
        b'{"latency_ms":-9223372036854775808,"input_tokens":-2147483648,'
    )


@pytest.mark.parametrize(
    ("text", "json"),
    [
        ('"', r'"\""'),
        ("\\", r'"\\"'),
        ("/", '"/"'),
        ("\b\f\n\r\t", r'"\b\f\n\r\t"'),
        ("\x00\x01\x0b\x1f", r'"\u0000\u0001\u000b\u001f"'),
        ("\x7f\u2028\u2029é😀", '"\x7f\u2028\u2029é😀"'),
        ("", '""'),
        ('say "hi"\\n', r'"say \"hi\"\\n"'),
    ],
)
@pytest.mark.parametrize("type_", [pa.string(), pa.large_string()])
def test_text_is_escaped_as_orjson_escapes_it(text, json, type_):
    batch = batch_of({"error_message": ([text, None, "plain"], type_)})
    assert encoded(batch) == orjson_lines(batch)
    assert encoded(batch).split(b"\n")[0].decode() == '{"error_message":' + json + "}"


def test_one_escaped_text_among_clean_ones():
    texts = ["plain"] * 100 + ['a"b'] + ["é"] * 100
    batch = batch_of({"request_id": (texts, pa.string()), "model": (["m"] * 201, pa.string())})
    assert encoded(batch) == orjson_lines(batch)


@pytest.mark.parametrize(
    ("time", "text"),
    [
        (datetime(2026, 3, 31, 14, 22, 10, 999900), "2026-03-31T14:22:10.999Z"),  # not 11.000
        (datetime(2026, 3, 31, 14, 22, 10, 999999), "2026-03-31T14:22:10.999Z"),
        (datetime(2026, 3, 31, 14, 22, 10, 123456), "2026-03-31T14:22:10.123Z"),
        (datetime(2026, 3, 31, 14, 22, 10), "2026-03-31T14:22:10.000Z"),
        (datetime(1969, 12, 31, 23, 59, 59, 999999), "1969-12-31T23:59:59.999Z"),
        (datetime(999, 1, 2, 3, 4, 5, 6000), "0999-01-02T03:04:05.006Z"),
        (datetime(1, 1, 1), "0001-01-01T00:00:00.000Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999999), "9999-12-31T23:59:59.999Z"),
    ],
)
@pytest.mark.parametrize("unit", ["us", "ms"])
def test_timestamps_are_truncated_to_the_millisecond(time, text, unit):
    if unit == "ms":  # Arrow's cast truncates toward 1970: the milliseconds of the time itself
        time = time.replace(microsecond=time.microsecond // 1000 * 1000)
    times = pa.array([time, None], pa.timestamp(unit))
    batch = pa.RecordBatch.from_arrays([times], names=["timestamp"])
    assert encoded(batch) == orjson_lines(batch)
    assert encoded(batch) == b'{"timestamp":"' + text.encode() + b'"}\n{"timestamp":null}\n'


@pytest.mark.parametrize(
    "hour",
    [datetime(2026, 3, 31, 14), datetime(1969, 12, 31, 23), datetime(999, 1, 2, 3)],
)
@pytest.mark.parametrize("unit", ["us", "ms", "s"])
@pytest.mark.parametrize("zone", [None, "+02:00"])
def test_a_batch_of_one_hours_times_as_a_partitions_are(hour, unit, zone):
    """The times of one hour (every batch of a partition) are written from the hour's text and
    tables; the same bytes as any other time's, its first and last microsecond included."""
    offsets = [0, 1, 999, 1_000, 59_999_999, 60_000_000, 1_800_123_456, 3_599_000_000]
    if unit == "us":
        offsets.append(3_599_999_999)  # a coarser unit truncates it toward 1970: another hour
    times = [hour + timedelta(microseconds=us) for us in offsets]
    column = pa.array(times, pa.timestamp("us")).cast(pa.timestamp(unit), safe=False)
    if zone:
        column = column.cast(pa.timestamp(unit, tz=zone))
    utc = [t.astimezone(UTC).replace(tzinfo=None) if zone else t for t in column.to_pylist()]
    hours = {t.replace(minute=0, second=0, microsecond=0) for t in utc}
    assert hours == {hour}  # the batch takes the tables' way
    booleans = pa.array([n % 2 == 0 for n in range(len(offsets))])
    one_hour = pa.RecordBatch.from_arrays([column, booleans], ["timestamp", "is_stream"])
    assert encoded(one_hour) == orjson_lines(one_hour)
    first = f'{{"timestamp":"{hour.year:04d}-{hour:%m-%dT%H}:00:00.000Z","is_stream":true}}\n'
    assert encoded(one_hour).startswith(first.encode())
    two_hours = pa.RecordBatch.from_arrays(
        [pa.concat_arrays([column, pa.array([hour + HOUR], column.type)])], ["timestamp"]
    )
    assert encoded(two_hours) == orjson_lines(two_hours)


def test_times_with_a_zone_are_written_in_utc():
    paris = timezone(timedelta(hours=2))
    time = datetime(2026, 3, 31, 16, 22, 10, 999999, tzinfo=paris)
    times = pa.array([time], pa.timestamp("us", tz="+02:00"))
    batch = pa.RecordBatch.from_arrays([times], names=["timestamp"])
    assert encoded(batch) == b'{"timestamp":"2026-03-31T14:22:10.999Z"}\n'
    assert time.astimezone(UTC).hour == 14


def test_a_narrowed_reordered_field_list():
    fields = ("cost", "request_id", "guardrail_results", "timestamp")
    guardrails = [
        orjson.dumps({"pii": {"hit": True, "score": 0.5, "note": 'a "b"\n'}}).decode(),
        None,
    ]
    columns = {
        "cost": ([0.000123, None], pa.float64()),
        "request_id": (["req_1", "req_2"], pa.string()),
        "guardrail_results": (guardrails, pa.string()),
        "timestamp": ([datetime(2026, 3, 31, 14, 22, 10, 123999)] * 2, pa.timestamp("us")),
    }
    batch = batch_of(columns)
    assert batch.schema.names == list(fields)
    assert encoded(batch) == orjson_lines(batch)
    assert encoded(batch) == (
        b'{"cost":0.000123,"request_id":"req_1","guardrail_results":{"pii":{"hit":true,'
        b'"score":0.5,"note":"a \\"b\\"\\n"}},"timestamp":"2026-03-31T14:22:10.123Z"}\n'
        b'{"cost":null,"request_id":"req_2","guardrail_results":null,'
        b'"timestamp":"2026-03-31T14:22:10.123Z"}\n'
    )


@pytest.mark.parametrize("at", [0, 1, 2])
def test_guardrail_results_anywhere_are_written_as_the_json_they_are(at):
    fields = ["request_id", "is_error"]
    fields.insert(at, "guardrail_results")
    values = {
        "request_id": (["r1", "r2", "r3"], pa.string()),
        "is_error": ([True, None, False], pa.bool_()),
        "guardrail_results": (['{"a":[1,2.5,null,"\\u0000"]}', None, "[]"], pa.string()),
    }
    batch = batch_of({f: values[f] for f in fields})
    assert encoded(batch) == orjson_lines(batch)
    alone = batch_of({"guardrail_results": values["guardrail_results"]})
    assert (
        encoded(alone) == b'{"guardrail_results":{"a":[1,2.5,null,"\\u0000"]}}\n'
        b'{"guardrail_results":null}\n{"guardrail_results":[]}\n'
    )


def test_every_field_null_and_every_field_set():
    types = {f: pa.string() for f in EXPORTED_FIELDS}
    types |= dict.fromkeys(INTEGER_FIELDS, pa.int64()) | dict.fromkeys(BOOLEAN_FIELDS, pa.bool_())
    types |= {"cost": pa.float64(), "timestamp": pa.timestamp("us")}
    full = {
        **{f: "x" for f in EXPORTED_FIELDS},
        **dict.fromkeys(INTEGER_FIELDS, 7),
        **dict.fromkeys(BOOLEAN_FIELDS, True),
        "cost": 0.5,
        "timestamp": datetime(2026, 3, 31, 14, 22, 10),
        "guardrail_results": "{}",
    }
    batch = batch_of({f: ([None, full[f]], types[f]) for f in EXPORTED_FIELDS})
    assert encoded(batch) == orjson_lines(batch)
    first = orjson.loads(encoded(batch).splitlines()[0])
    assert list(first) == list(EXPORTED_FIELDS) and set(first.values()) == {None}


@pytest.mark.parametrize("fields", [EXPORTED_FIELDS, ("cost", "request_id")])
def test_an_empty_batch_is_no_bytes(fields):
    batch = batch_of({f: ([], pa.string()) for f in fields})
    assert encoded(batch) == b""


def test_a_sliced_batch_writes_only_its_rows():
    batch = batch_of(
        {
            "request_id": (['a"', "b", "c", "d\\"], pa.string()),
            "model": (["m1", "m2", "m3", "m4"], pa.large_string()),
            "cost": ([float("nan"), 1.0, 2.0, float("inf")], pa.float64()),
        }
    ).slice(1, 2)
    assert (
        encoded(batch) == b'{"request_id":"b","model":"m2","cost":1.0}\n'
        b'{"request_id":"c","model":"m3","cost":2.0}\n'
    )
