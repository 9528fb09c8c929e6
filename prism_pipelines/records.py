"""The exported record: the spec's fifteen fields first, then the extended ones, and its encoding.

This is the hot path of every export. The reader (``source.GatewaySource.stream_chunks``) hands
over the rows as Arrow record batches already in the record's shape: the exported fields,
``timestamp`` a UTC time, ``cost`` a float, then the source id. ``check_chunk`` keeps the rows
that can be exported, by Arrow compute over whole columns: only the few rows that need it (a
required value missing, text that could not be read) and guardrail results (parsed with orjson,
to be checked and written as JSON) cost any per-row Python. A sink then takes the checked rows
in the shape it sends: the record batch itself (Parquet, and JSON lines written from its columns
by ``jsonl.encode_jsonl``), or records, one dict per row (queue messages, Datadog, OTLP spans),
and pays only for that one. What happens to which bad row is in docs/reliability.md, "Bad rows".
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate

import orjson
import pyarrow as pa
import pyarrow.compute as pc

SPEC_FIELDS = (
    "request_id",
    "model",
    "provider",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost",
    "status_code",
    "is_error",
    "cache_hit",
    "guardrail_triggered",
    "routing_strategy",
    "timestamp",
    "event_type",
)
EXTENDED_FIELDS = (
    "trace_id",
    "session_id",
    "user_id",
    "model_requested",
    "cache_status",
    "fallback_used",
    "is_stream",
    "error_message",
    "guardrail_results",
)
EXPORTED_FIELDS = SPEC_FIELDS + EXTENDED_FIELDS
#: the exported fields that are not text, by type; the rest are text (``timestamp`` formatted,
#: ``guardrail_results`` the gateway's JSON)
INTEGER_FIELDS = ("latency_ms", "input_tokens", "output_tokens", "total_tokens", "status_code")
FLOAT_FIELDS = ("cost",)
BOOLEAN_FIELDS = ("is_error", "cache_hit", "guardrail_triggered", "fallback_used", "is_stream")

#: the position of ``id`` in a row the reader selects (after the exported fields)
ROW_ID = len(EXPORTED_FIELDS)
#: the exported fields' Arrow types (``rows_to_batch``; PostgreSQL's may be narrower integers)
ARROW_TYPES = {
    **{f: pa.string() for f in EXPORTED_FIELDS},
    **dict.fromkeys(INTEGER_FIELDS, pa.int64()),
    **dict.fromkeys(FLOAT_FIELDS, pa.float64()),
    **dict.fromkeys(BOOLEAN_FIELDS, pa.bool_()),
    "timestamp": pa.timestamp("ms"),
    "id": pa.int64(),
}
#: what a record's ``timestamp`` text looks like: milliseconds, truncated, and ``Z``
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
_REQUIRED = (
    ("request_id", "request_id is null"),
    ("model", "model is null"),
    ("provider", "provider is null"),
    ("timestamp", "timestamp is null or not a valid time"),
)
_KINDS = {pa.int64(): "an integer", pa.float64(): "a number", pa.bool_(): "a boolean"}
#: the run-metadata counter of costs sent as null (JSON has no NaN or Infinity)
COSTS_NOT_FINITE = "costs_not_finite_sent_as_null"


@dataclass(frozen=True, slots=True)
class Reject:
    """A row a destination will never take, kept with its reason instead of being dropped."""

    source_id: int
    request_id: str | None
    reason: str
    record: dict | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """A chunk of reader rows, checked (``check_chunk``)."""

    #: the rows that can be exported: the exported fields and ``id``
    rows: pa.RecordBatch
    #: the rows that cannot, with their reasons
    rejects: list[Reject]
    #: the highest source id of the chunk, rejected rows included
    through_id: int
    #: the first and last event time of the chunk's rows (None: no row has a valid time)
    first_event: datetime | None
    last_event: datetime | None


def format_timestamp(value: datetime) -> str:
    """``2026-03-31T14:22:10.000Z``; naive values are UTC already."""
    text = value.isoformat(timespec="milliseconds")
    if len(text) == 23:
        return text + "Z"
    if not text.endswith("+00:00"):
        text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text[:23] + "Z"


def rows_to_batch(
    rows: list[tuple], names: list[str], malformed: dict[int, str] | None = None
) -> pa.RecordBatch:
    """Reader rows (SQLite's, as tuples) as the record batch PostgreSQL's reader makes: columns
    ``names``, typed by ``ARROW_TYPES``, ``timestamp`` from SQLite's canonical UTC text. A value
    of the wrong type (SQLite keeps what a writer gave, ``'n/a'`` in an integer column) becomes
    null and its row malformed, as a row with text that is not UTF-8 is (``malformed``, by
    position): the column ``malformed`` says what is wrong with each."""
    malformed = dict(malformed or {})
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays = []
    for name, values in zip(names, columns, strict=True):
        if name == "unsettled":  # bools, or SQLite's 0 and 1
            arrays.append(pa.array(values).cast(pa.bool_()))
        elif name == "timestamp":
            arrays.append(_times(values))
        else:
            arrays.append(_typed(name, values, malformed))
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    if malformed:
        problems = [malformed.get(i) for i in range(len(rows))]
        batch = batch.append_column("malformed", pa.array(problems, pa.string()))
    return batch


def _typed(name: str, values: tuple, malformed: dict[int, str]) -> pa.Array:
    type_ = ARROW_TYPES[name]
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    kept = []
    for i, value in enumerate(values):
        try:
            pa.array([value], type_)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            problem = f"{name} is not {_KINDS.get(type_, 'text')}"
            malformed[i] = f"{malformed[i]}, {problem}" if i in malformed else problem
            value = None
        kept.append(value)
    return pa.array(kept, type_)


def _times(texts: tuple) -> pa.Array:
    """SQLite's canonical UTC text (``source.SQLITE_UTC_FORMAT``) as times; null for none."""
    array = pa.array(texts, pa.string())
    try:
        return array.cast(ARROW_TYPES["timestamp"])
    except pa.ArrowInvalid:  # a year Arrow does not read (0000): no time a record can hold
        times = []
        for text in texts:
            try:
                times.append(pa.array([text]).cast(ARROW_TYPES["timestamp"])[0].as_py())
            except pa.ArrowInvalid:
                times.append(None)
        return pa.array(times, ARROW_TYPES["timestamp"])


def check_chunk(
    chunk: pa.RecordBatch,
    counters: Counter | None = None,
    guardrails: GuardrailTexts | None = None,
) -> Checked:
    """The rows of a chunk that can be exported, and the rows that cannot (a required value
    missing, text that could not be read, guardrail results that are not JSON) as rejects.
    A cost that is NaN or infinite becomes null in its row (JSON has no NaN or Infinity),
    counted in ``counters``. Guardrail results are written as orjson writes them
    (``guardrails``, the batch's ``GuardrailTexts``), so the JSON lines written from the
    columns hold what a record would."""
    size = chunk.num_rows
    bad: dict[int, str] = {}
    if "malformed" in chunk.schema.names:
        for i, problem in enumerate(chunk.column("malformed").to_pylist()):
            if problem is not None:
                bad[i] = f"malformed row: {problem}"
    missing = [(chunk.column(name).is_null(), problem) for name, problem in _REQUIRED]
    any_missing = missing[0][0]
    for mask, _ in missing[1:]:
        any_missing = pc.or_(any_missing, mask)
    if pc.any(any_missing).as_py():
        masks = [(mask.to_pylist(), problem) for mask, problem in missing]
        for i in pc.indices_nonzero(any_missing).to_pylist():
            if i not in bad:
                bad[i] = "malformed row: " + ", ".join(p for mask, p in masks if mask[i])
    columns = {name: chunk.column(name) for name in (*EXPORTED_FIELDS, "id")}
    cost = columns["cost"]
    not_finite = pc.and_kleene(cost.is_valid(), pc.invert(pc.is_finite(cost)))
    if cost.null_count < size and pc.any(not_finite).as_py():
        columns["cost"] = pc.if_else(not_finite, pa.nulls(1, cost.type)[0], cost)
        if counters is not None:
            counters[COSTS_NOT_FINITE] += pc.sum(not_finite).as_py()
    columns["guardrail_results"] = (guardrails or GuardrailTexts()).canonical(
        columns["guardrail_results"], bad
    )
    ids = columns["id"]
    stamps = pc.min_max(columns["timestamp"])
    first, last = stamps["min"].as_py(), stamps["max"].as_py()
    rows = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
    rejects = []
    if bad:
        request_ids = columns["request_id"]
        rejects = [
            Reject(ids[i].as_py(), request_ids[i].as_py(), reason)
            for i, reason in sorted(bad.items())
        ]
        rows = rows.take(_int64s(i for i in range(size) if i not in bad))
    return Checked(
        rows,
        rejects,
        through_id=ids[-1].as_py(),
        first_event=_utc(first) if first else None,
        last_event=_utc(last) if last else None,
    )


class GuardrailTexts:
    """Guardrail results as orjson writes them (the gateway's text may be spaced otherwise:
    jsonb's, Python's), or what is wrong with a text that is not JSON, each distinct text
    parsed once: a gateway's guardrails answer the same few ways (demo traffic: a tenth of an
    hour's texts are distinct), and parsing is the checks' one per-value cost. Holds the last
    ``MAX_TEXTS`` texts seen; one per batch (``sync._chunks``)."""

    MAX_TEXTS = 20_000

    def __init__(self):
        #: text → orjson's text
        self._canonical: dict[str, str] = {}
        #: text → why it is no JSON (a reject's reason)
        self._wrong: dict[str, str] = {}

    def canonical(self, texts: pa.Array, bad: dict[int, str]) -> pa.Array:
        """``texts`` as orjson writes each; the position of each that is not JSON in ``bad``
        (the text kept as it is: the row is rejected)."""
        if texts.null_count == len(texts):
            return texts
        encoded = texts.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        written, wrong = [], {}
        for n, text in enumerate(distinct):
            canonical = self._canonical.get(text)
            if canonical is None and text not in self._wrong:
                if len(self._canonical) + len(self._wrong) >= self.MAX_TEXTS:
                    self._canonical.clear()
                    self._wrong.clear()
                try:
                    canonical = self._canonical[text] = orjson.dumps(orjson.loads(text)).decode()
                except orjson.JSONDecodeError as exc:
                    self._wrong[text] = f"malformed row: guardrail_results is not JSON ({exc})"
            if canonical is None:
                wrong[n] = self._wrong[text]
                canonical = text
            written.append(canonical)
        if wrong:
            for i, n in enumerate(encoded.indices.to_pylist()):
                if n in wrong:
                    bad.setdefault(i, wrong[n])
        return _strings(written).take(encoded.indices)


def parse_guardrails(texts: pa.Array) -> dict[int, object]:
    """Checked guardrail results (``check_chunk``: JSON, as orjson writes it) parsed, by
    position: what records and spans carry."""
    loads = orjson.loads
    valid = pc.indices_nonzero(texts.is_valid()).to_pylist()
    return dict(zip(valid, map(loads, pc.filter(texts, texts.is_valid()).to_pylist()), strict=True))


# Arrays made from Python values by their buffers: ``pa.array`` and ``pa.scalar`` import pandas
# when it is installed (pyarrow's pandas shim looks for array-likes), 54 MB the export never uses.


def _strings(texts: list[str]) -> pa.Array:
    data = [text.encode() for text in texts]
    offsets = array("i", [0, *accumulate(map(len, data))])
    return pa.StringArray.from_buffers(
        len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data))
    )


def _int64s(values: Iterable[int]) -> pa.Array:
    buffer = array("q", values)
    return pa.Array.from_buffers(pa.int64(), len(buffer), [None, pa.py_buffer(buffer)])


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def timestamp_texts(times: pa.Array) -> pa.Array:
    """Times as the record writes them (``TIMESTAMP_FORMAT``), as a string array (by polars,
    ten times Arrow's ``strftime``; imported here, as by jsonl.py, only where it is used)."""
    import polars as pl

    return pl.from_arrow(times).dt.strftime(TIMESTAMP_FORMAT).to_arrow()


def batch_rows(rows: pa.RecordBatch) -> list[tuple]:
    """Checked rows as tuples of the exported fields (``timestamp`` the record's text): what
    records and spans are built from."""
    columns = [
        (timestamp_texts(rows.column(f)) if f == "timestamp" else rows.column(f)).to_pylist()
        for f in EXPORTED_FIELDS
    ]
    return list(zip(*columns, strict=True))


def build_records(
    rows: list[tuple], guardrails: dict[int, object], fields: tuple[str, ...] | None = None
) -> list[dict]:
    """Exported records of checked rows (``batch_rows``), with their guardrail results parsed,
    narrowed to ``fields``."""
    # A dict display: a third faster than dict(zip(EXPORTED_FIELDS, row)), in the same order.
    records = [
        {
            "request_id": r[0],
            "model": r[1],
            "provider": r[2],
            "latency_ms": r[3],
            "input_tokens": r[4],
            "output_tokens": r[5],
            "total_tokens": r[6],
            "cost": r[7],
            "status_code": r[8],
            "is_error": r[9],
            "cache_hit": r[10],
            "guardrail_triggered": r[11],
            "routing_strategy": r[12],
            "timestamp": r[13],
            "event_type": r[14],
            "trace_id": r[15],
            "session_id": r[16],
            "user_id": r[17],
            "model_requested": r[18],
            "cache_status": r[19],
            "fallback_used": r[20],
            "is_stream": r[21],
            "error_message": r[22],
            "guardrail_results": r[23],
        }
        for r in rows
    ]
    for i, value in guardrails.items():
        records[i]["guardrail_results"] = value
    if fields is not None:
        records = [{f: record[f] for f in fields} for record in records]
    return records


def encode_record(record: dict) -> bytes:
    return orjson.dumps(record)
