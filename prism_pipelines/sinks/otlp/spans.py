"""Spans: one per exported record, and the OTLP export requests that carry them.

The messages are opentelemetry-proto's generated classes, the protocol's own definitions, so
the bytes on the wire are protobuf's encoding of OTLP, not an encoder of ours. Not the
OpenTelemetry SDK's tracer: it stamps spans with its own clock and random ids and holds each as
a Python object until its batch processor exports it, where a span here must carry the record's
event time and ids derived from the record (the same on every re-send), and is written straight
into the request that sends it.

The mapping is the contract's (DESIGN.md, "OpenTelemetry traces"): ids, name ``chat {model}``,
kind CLIENT, start = ``timestamp``, end = start + ``latency_ms``, the GenAI semantic-convention
attributes, every other exported field as ``prism.<field>``, a null left out, ERROR status on
errors, and one ``guardrail`` event per guardrail result. An integration's ``fields`` narrow the
attributes; ids, name and times always come from the whole row.

OTLP/JSON is protobuf's JSON mapping (lowerCamelCase names, 64-bit integers as decimal strings)
with the OTLP specification's two deviations: ``traceId`` and ``spanId`` in hex, not base64,
and enums as integers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from operator import itemgetter

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status as RpcStatus  # googleapis-common-protos
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from prism_pipelines.records import (
    BOOLEAN_FIELDS,
    EXPORTED_FIELDS,
    FLOAT_FIELDS,
    INTEGER_FIELDS,
    Reject,
    build_records,
)

KIND_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR
SCOPE_NAME = "prism-pipelines"
try:
    SCOPE_VERSION = version("prism-pipelines")
except PackageNotFoundError:  # pragma: no cover - run from a checkout that is not installed
    SCOPE_VERSION = ""
GUARDRAIL_EVENT = "guardrail"
#: ``error.type`` when an error request has no status code (the semantic conventions' fallback)
OTHER_ERROR = "_OTHER"

_W3C_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_POSITION = {f: i for i, f in enumerate(EXPORTED_FIELDS)}
_REQUEST_ID = _POSITION["request_id"]
_TRACE_ID = _POSITION["trace_id"]
_MODEL = _POSITION["model"]
_MODEL_REQUESTED = _POSITION["model_requested"]
_TIMESTAMP = _POSITION["timestamp"]
_LATENCY = _POSITION["latency_ms"]
_IS_ERROR = _POSITION["is_error"]
_STATUS_CODE = _POSITION["status_code"]
_ERROR_MESSAGE = _POSITION["error_message"]

#: exported field → the semantic-convention attributes it becomes (the rest: ``prism.<field>``)
GENAI_ATTRIBUTES = {
    "provider": ("gen_ai.provider.name",),
    "model": ("gen_ai.response.model",),
    "input_tokens": ("gen_ai.usage.input_tokens",),
    "output_tokens": ("gen_ai.usage.output_tokens",),
    "session_id": ("gen_ai.conversation.id", "session.id"),
    "user_id": ("user.id",),
    "status_code": ("http.response.status_code",),
}
#: ``model_requested`` is ``gen_ai.request.model``, falling back to ``model`` (below)
REQUEST_MODEL = "gen_ai.request.model"


def trace_id(trace: str | None, request_digest: bytes) -> bytes:
    """The record's ``trace_id`` when it is a W3C trace id (32 hex digits, not all zero), so the
    span joins the client's own trace; else the first 16 bytes of SHA-256 of the text (of
    ``request_id`` when it is null, whose digest the caller has)."""
    if trace is None:
        return request_digest[:16]
    if _W3C_TRACE_ID.match(trace) and trace.strip("0"):
        return bytes.fromhex(trace)
    return hashlib.sha256(trace.encode()).digest()[:16]


def span_id(request_digest: bytes) -> bytes:
    """The first 8 bytes of SHA-256 of ``request_id``."""
    return request_digest[:8]


class SpanRequest:
    """One ExportTraceServiceRequest being filled, and the rows its spans came from (for
    rejects: their source ids, request ids and records)."""

    __slots__ = ("message", "spans", "sources")

    def __init__(self, template: ExportTraceServiceRequest):
        self.message = ExportTraceServiceRequest()
        self.message.CopyFrom(template)
        self.spans = self.message.resource_spans[0].scope_spans[0].spans
        #: per span: (source id, reader row, parsed guardrail results or None)
        self.sources: list[tuple[int, tuple, object]] = []

    def __len__(self) -> int:
        return len(self.sources)

    def halves(self, template: ExportTraceServiceRequest) -> tuple[SpanRequest, SpanRequest]:
        middle = len(self) // 2
        first, second = SpanRequest(template), SpanRequest(template)
        first.spans.extend(self.spans[:middle])
        second.spans.extend(self.spans[middle:])
        first.sources, second.sources = self.sources[:middle], self.sources[middle:]
        return first, second

    def reject(self, index: int, reason: str, fields: tuple[str, ...] | None) -> Reject:
        source_id, row, guardrails = self.sources[index]
        record = build_records([row], {0: guardrails} if guardrails is not None else {}, fields)
        return Reject(source_id, row[_REQUEST_ID], reason, record[0])


class _Plan:
    """Which exported fields become which attributes, by value type."""

    def __init__(self, fields: list[str]):
        plan: dict[str, list[tuple[str, int]]] = {"string": [], "int": [], "double": [], "bool": []}
        for field in fields:
            kind = (
                "int"
                if field in INTEGER_FIELDS
                else "double"
                if field in FLOAT_FIELDS
                else "bool"
                if field in BOOLEAN_FIELDS
                else "string"
            )
            for key in GENAI_ATTRIBUTES.get(field, (f"prism.{field}",)):
                plan[kind].append((key, _POSITION[field]))
        self.strings = tuple(plan["string"])
        self.ints = tuple(plan["int"])
        self.doubles = tuple(plan["double"])
        self.bools = tuple(plan["bool"])

    def add_attributes(self, span: Span, row: tuple) -> None:
        add = span.attributes.add
        for key, position in self.strings:
            value = row[position]
            if value is not None:
                add(key=key).value.string_value = value
        for key, position in self.ints:
            value = row[position]
            if value is not None:
                add(key=key).value.int_value = value
        for key, position in self.doubles:
            value = row[position]
            if value is not None:
                add(key=key).value.double_value = value
        for key, position in self.bools:
            value = row[position]
            if value is not None:
                add(key=key).value.bool_value = value


#: fields with few distinct values (models, providers, codes, flags): what the span takes from
#: them (its name, status code, ``error.type`` and their attributes) is built once per
#: combination as a template span, and merged into each span by protobuf, in C
FEW_VALUES = (
    "provider",
    "model",
    "model_requested",
    "status_code",
    "is_error",
    "cache_hit",
    "guardrail_triggered",
    "routing_strategy",
    "event_type",
    "cache_status",
    "fallback_used",
    "is_stream",
)
#: templates kept at most (then they are built anew): a gateway has a few hundred combinations
MAX_TEMPLATES = 4096


class SpanBuilder:
    """Rows of a chunk → spans appended to a request. The attribute plan (which field becomes
    which attribute, with which value type) is worked out once, from the integration's fields."""

    def __init__(self, service_name: str, fields: tuple[str, ...] | None):
        self.fields = fields
        exported = [f for f in EXPORTED_FIELDS if f in set(fields or EXPORTED_FIELDS)]
        self._per_row = _Plan([f for f in exported if f not in FEW_VALUES])
        self._per_template = _Plan(
            [f for f in exported if f in FEW_VALUES and f != "model_requested"]
        )
        #: where ``gen_ai.request.model`` comes from: model_requested, else model
        self._request_model = tuple(
            _POSITION[f] for f in ("model_requested", "model") if f in exported
        )
        self._template_key = itemgetter(*(_POSITION[f] for f in FEW_VALUES))
        self._templates: dict[tuple, Span] = {}
        self.template = ExportTraceServiceRequest()
        resource_spans = self.template.resource_spans.add()
        attribute = resource_spans.resource.attributes.add(key="service.name")
        attribute.value.string_value = service_name
        scope = resource_spans.scope_spans.add().scope
        scope.name, scope.version = SCOPE_NAME, SCOPE_VERSION

    def new_request(self) -> SpanRequest:
        return SpanRequest(self.template)

    def add(self, request: SpanRequest, row: tuple, source_id: int, guardrails: object) -> None:
        """The span of one checked row (``Chunk.rows``), appended to
        ``request``; ``guardrails`` is the row's parsed guardrail results, or None."""
        key = self._template_key(row)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[key] = self._template(row)
        digest = hashlib.sha256(row[_REQUEST_ID].encode()).digest()
        start = (datetime.fromisoformat(row[_TIMESTAMP]) - _EPOCH) // _MILLISECOND * 1_000_000
        latency = row[_LATENCY]
        span = request.spans.add(
            trace_id=trace_id(row[_TRACE_ID], digest),
            span_id=span_id(digest),
            start_time_unix_nano=start,
            end_time_unix_nano=start + latency * 1_000_000 if latency else start,
        )
        span.MergeFrom(template)
        if row[_IS_ERROR] and row[_ERROR_MESSAGE]:
            span.status.message = row[_ERROR_MESSAGE]
        self._per_row.add_attributes(span, row)
        if guardrails is not None:
            _add_guardrail_events(span, guardrails, start)
        request.sources.append((source_id, row, guardrails))

    def _template(self, row: tuple) -> Span:
        """What spans of rows with these few-valued fields share: name, kind, status code, and
        the attributes of those fields."""
        span = Span(name="chat " + (row[_MODEL_REQUESTED] or row[_MODEL]), kind=KIND_CLIENT)
        add = span.attributes.add
        add(key="gen_ai.operation.name").value.string_value = "chat"
        for position in self._request_model:
            if row[position] is not None:
                add(key=REQUEST_MODEL).value.string_value = row[position]
                break
        self._per_template.add_attributes(span, row)
        if row[_IS_ERROR]:
            span.status.code = STATUS_ERROR
            status_code = row[_STATUS_CODE]
            add(key="error.type").value.string_value = (
                OTHER_ERROR if status_code is None else str(status_code)
            )
        return span


def _add_guardrail_events(span: Span, guardrails: object, time_unix_nano: int) -> None:
    """One ``guardrail`` event per result (its name, action and score), at the span's start:
    the gateway records no time of its own for a guardrail."""
    for result in guardrails if isinstance(guardrails, list) else (guardrails,):
        if not isinstance(result, dict):
            continue
        add = span.events.add(time_unix_nano=time_unix_nano, name=GUARDRAIL_EVENT).attributes.add
        for name, key in _GUARDRAIL_ATTRIBUTES:
            value = result.get(name)
            if value is None:
                continue
            kind = type(value)
            if kind is str:  # name and action, nearly always
                add(key=key).value.string_value = value
            elif kind is float:  # score
                add(key=key).value.double_value = value
            else:
                _set_value(add(key=key).value, value)


_GUARDRAIL_ATTRIBUTES = tuple((name, f"guardrail.{name}") for name in ("name", "action", "score"))


def _set_value(any_value, value) -> None:
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    elif isinstance(value, str):
        any_value.string_value = value
    else:
        any_value.string_value = orjson.dumps(value).decode()


# -- encodings -------------------------------------------------------------------------------


def encode_protobuf(request: SpanRequest) -> bytes:
    return request.message.SerializeToString()


def encode_json(request: SpanRequest) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping, then ids from base64 to hex (OTLP's deviation)."""
    return orjson.dumps(to_otlp_json(request.message))


def to_otlp_json(message) -> dict:
    """An OTLP message as OTLP/JSON: lowerCamelCase names, enums as integers, 64-bit integers
    as decimal strings (the protobuf JSON mapping, which OTLP receivers accept), and every
    ``traceId``, ``spanId`` and ``parentSpanId`` in hex."""
    body = json_format.MessageToDict(message, use_integers_for_enums=True)
    for resource_spans in body.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _ids_to_hex(span)
                for link in span.get("links", ()):
                    _ids_to_hex(link)
    return body


def _ids_to_hex(item: dict) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if key in item:
            item[key] = base64.b64decode(item[key]).hex()


def decode_response(body: bytes, content_type: str) -> ExportTraceServiceResponse:
    """The receiver's answer to a 200, in the encoding its Content-Type names; an empty or
    unreadable body is a full success (the receiver took the request)."""
    response = ExportTraceServiceResponse()
    if not body:
        return response
    try:
        if "json" in content_type:
            json_format.Parse(body, response, ignore_unknown_fields=True)
        else:
            response.ParseFromString(body)
    except (json_format.ParseError, DecodeError):
        return ExportTraceServiceResponse()
    return response


def error_text(body: bytes, content_type: str) -> str:
    """What a refusal's body says: OTLP answers a ``google.rpc.Status`` (its ``message``, field
    2, read as a Status would be), JSON with a ``message``, or plain text."""
    if not body:
        return ""
    if "protobuf" in content_type:
        try:
            return " ".join(RpcStatus.FromString(body).message.split())[:500]
        except DecodeError:  # an unreadable Status: say nothing rather than show bytes
            return ""
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and parsed.get("message"):
                text = str(parsed["message"])
        except orjson.JSONDecodeError:
            pass
    return " ".join(text.split())[:500]
