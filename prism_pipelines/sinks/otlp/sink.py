"""OpenTelemetry traces: every record as a span, posted over OTLP/HTTP to ``{endpoint}/v1/traces``.

Anatomy, as for every sink: settings (``integrations.OtlpIntegration``) and the health check
(``validate``: an empty export request), the request builder (``spans``) and the service below,
which posts each request with ``requests`` (one keep-alive connection, from one sender thread
while the next request is built) and maps the receiver's answers the way the OTLP
specification describes them:

- 200 → acknowledged; a ``partial_success`` with ``rejected_spans`` sends that many spans to
  the rejects with the receiver's message (OTLP does not say which: the request's last ones are
  recorded, and the reason says so); it is never retried, as the specification requires;
- 413 → the request is split in halves and each half sent (a span alone still too large is a
  reject); a body over ``max_request_bytes`` is split the same way before it is sent;
- 400 → split the same way down to the spans the receiver refuses, rejected with its text,
  once it accepted others; a receiver that refuses everything (wrong encoding, not an OTLP
  endpoint) stops the run instead, with the batch open;
- 408, 429, 5xx, connection failures → retried through the one retry machine
  (``retry.RetryLogic``) with backoff and jitter, a ``Retry-After`` honoured;
- 401, 403 → ``CredentialsError``: the run fails, the cursor stays, the message names the
  headers to check;
- anything else (404, 415, …) → ``DestinationError`` saying what the receiver answered.

At least once: ``deliver`` returns when every request of the batch was acknowledged, so a crash
re-sends at most the batch in flight (``batch_rows``, 1,000 by default: about one request), and
a re-sent record carries the same trace and span ids.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait

import requests
from isal import igzip

from prism_pipelines.batch import Batch
from prism_pipelines.errors import CredentialsError, DestinationError
from prism_pipelines.sinks.base import Delivery, Sink
from prism_pipelines.sinks.otlp.spans import (
    SpanBuilder,
    SpanRequest,
    decode_response,
    encode_json,
    encode_protobuf,
    error_text,
)
from prism_pipelines.sinks.retry import (
    HTTP_BACKOFF,
    HTTP_RETRYABLE,
    HTTP_TIMEOUT,
    VALIDATE_BACKOFF,
    Action,
    Backoff,
    RetryLogic,
    Verdict,
    retry_after_seconds,
)
from prism_pipelines.sinks.storage.formats import GZIP_LEVEL

CONTENT_TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}
#: the bodies of an empty ExportTraceServiceRequest, what ``validate`` posts
EMPTY_REQUEST = {"protobuf": b"", "json": b"{}"}


class Answer(Exception):
    """An answer of the receiver other than 2xx."""

    def __init__(self, response: requests.Response, scrub):
        super().__init__(f"{response.status_code} {response.reason}")
        self.status = response.status_code
        self.reason = response.reason or ""
        self.headers = response.headers
        #: what the receiver said, any secret of the integration it echoes masked
        self.text = scrub(error_text(response.content, response.headers.get("Content-Type", "")))


class OtlpSink(Sink):
    def __init__(self, integration):
        super().__init__(integration)
        self._session: requests.Session | None = None
        #: one sender thread: a request is posted while the next one is built
        self._pool: ThreadPoolExecutor | None = None
        self._headers: dict[str, str] | None = None
        self._builder = SpanBuilder(integration.service_name, integration.fields)
        self._encode = encode_json if integration.encoding == "json" else encode_protobuf
        #: whether the receiver accepted a request of ours in this run: a 400 for one span
        #: alone is that span's fault only if the receiver takes others (see ``_send``)
        self._accepted = False

    # -- settings ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.integration.traces_url

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # the integration's endpoint, not a proxy from the env
            self._session = session
        return self._session

    @property
    def headers(self) -> dict[str, str]:
        """The request headers, the integration's secrets read from the environment now."""
        if self._headers is None:
            integration = self.integration
            headers = {
                "Content-Type": CONTENT_TYPES[integration.encoding],
                "User-Agent": "prism-pipelines (OTLP/HTTP)",
            }
            if integration.compression == "gzip":
                headers["Content-Encoding"] = "gzip"
            for name, value in integration.headers.items():
                if not isinstance(value, str):
                    value = value.value(integration.name, f"headers.{name}")
                headers[name] = value
            self._headers = headers
        return self._headers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- Validate & Continue ----------------------------------------------------------------------

    def validate(self) -> str:
        integration = self.integration
        body = self._compressed(EMPTY_REQUEST[integration.encoding])
        try:
            self._post(body, "posting an empty export request", backoff=VALIDATE_BACKOFF)
        except Answer as answer:
            if answer.status in (404, 405):
                raise DestinationError(
                    f"integration '{integration.name}': no OTLP trace receiver at {self.url} "
                    f"({answer.status} {answer.reason}): endpoint is the receiver's base URL, and "
                    "spans are posted to {endpoint}/v1/traces; check the address and path (an "
                    "OpenTelemetry Collector: http://collector:4318; Langfuse: "
                    "https://cloud.langfuse.com/api/public/otel)"
                ) from None
            if answer.status in (400, 415):
                raise DestinationError(
                    f"integration '{integration.name}': the receiver at {self.url} does not take "
                    f"OTLP/{integration.encoding} ({answer.status} {answer.reason}"
                    f"{_said(answer)}); set encoding to the one it takes: protobuf, the default, "
                    "is the one OTLP receivers take most widely"
                ) from None
            raise self._unexpected(answer, "posting an empty export request") from None
        sent = ", ".join(integration.headers) or "none"
        return (
            f"integration '{integration.name}': the OTLP receiver at {self.url} accepted an "
            f"empty export request (encoding {integration.encoding}, compression "
            f"{integration.compression}; headers sent: {sent})"
        )

    # -- delivery ------------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> Delivery:
        retries_before = self.retries.value
        delivery = Delivery(counters=Counter(span_requests=0))
        per_request = self.integration.spans_per_request
        builder = self._builder
        request = builder.new_request()
        in_flight: Future | None = None
        try:
            for chunk in batch.chunks():
                guardrails = chunk.guardrails
                for i, (row, source_id) in enumerate(zip(chunk.rows, chunk.ids, strict=True)):
                    builder.add(request, row, source_id, guardrails.get(i))
                    if len(request) >= per_request:
                        in_flight = self._hand_over(in_flight, request, delivery)
                        request = builder.new_request()
            if len(request):
                in_flight = self._hand_over(in_flight, request, delivery)
        finally:
            # After a failure, the request in flight finishes before the batch is reported
            # failed: nothing of the batch may still be sending then.
            if in_flight is not None:
                wait([in_flight])
        if in_flight is not None:
            in_flight.result()  # its failure, if it failed
        delivery.counters["spans"] = delivery.records
        delivery.retries = self.retries.value - retries_before
        return delivery

    def _hand_over(
        self, previous: Future | None, request: SpanRequest, delivery: Delivery
    ) -> Future:
        """Send ``request`` in the sender thread once ``previous`` was acknowledged (one request
        in flight, in order: memory holds two requests whatever the batch's size)."""
        if previous is not None:
            previous.result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="prism-otlp")
        return self._pool.submit(self._send, request, delivery)

    def _send(self, request: SpanRequest, delivery: Delivery) -> None:
        """Post ``request``, split in halves while it is too large or refused as bad data,
        until every span was acknowledged or rejected."""
        integration = self.integration
        limit = integration.max_request_bytes
        counters = delivery.counters
        todo = [request]
        #: spans refused alone with a 400 while the receiver had accepted nothing yet
        suspects: list[tuple[SpanRequest, Answer]] = []
        while todo:
            part = todo.pop()
            body = self._encode(part)
            if len(body) > limit:
                if len(part) > 1:
                    counters["span_requests_split"] += 1
                    todo += reversed(part.halves(self._builder.template))
                    continue
                delivery.rejects.append(
                    part.reject(
                        0,
                        f"too large: the span is {len(body)} bytes as OTLP/{integration.encoding}, "
                        f"over max_request_bytes ({limit}); raise it if the receiver takes more",
                        integration.fields,
                    )
                )
                continue
            sent = self._compressed(body)
            try:
                response = self._post(sent, "sending spans", delivery)
            except Answer as answer:
                if answer.status not in (400, 413):
                    raise self._unexpected(answer, "sending spans") from None
                if len(part) > 1:
                    counters["span_requests_split"] += 1
                    todo += reversed(part.halves(self._builder.template))
                elif answer.status == 413:
                    reason = f"too large for the receiver (413){_said(answer)}"
                    delivery.rejects.append(part.reject(0, reason, integration.fields))
                else:
                    suspects.append((part, answer))
                continue
            self._accepted = True
            delivery.records += len(part) - self._partial_success(part, response, delivery)
            delivery.bytes += len(sent)
            counters["span_requests"] += 1
        if suspects and not self._accepted:
            _, answer = suspects[0]
            raise DestinationError(
                f"integration '{integration.name}': the receiver at {self.url} refuses every "
                f"span as bad data (400 {answer.reason}{_said(answer)}); check that it is an OTLP "
                f"trace receiver and takes OTLP/{integration.encoding} (protobuf, the default, is "
                "the one OTLP receivers take most widely). The batch stays open"
            )
        for part, answer in suspects:
            reason = f"refused by the receiver (400){_said(answer)}"
            delivery.rejects.append(part.reject(0, reason, integration.fields))

    def _partial_success(
        self, part: SpanRequest, response: requests.Response, delivery: Delivery
    ) -> int:
        """Spans the receiver says it refused (``partial_success.rejected_spans``), as rejects
        with its message; returns how many."""
        answer = decode_response(response.content, response.headers.get("Content-Type", ""))
        partial = answer.partial_success
        refused = min(max(partial.rejected_spans, 0), len(part))
        message = " ".join(partial.error_message.split())[:500]
        if not refused:
            if message:  # a warning with nothing refused (the specification allows it)
                delivery.counters["partial_success_warnings"] += 1
            return 0
        reason = (
            f"refused by the receiver (partial success): {message or 'no message'} ({refused} "
            f"of the {len(part)} spans of one request; OTLP does not say which, so the "
            f"request's last {refused} are recorded)"
        )
        for index in range(len(part) - refused, len(part)):
            delivery.rejects.append(part.reject(index, reason, self.integration.fields))
        delivery.counters["spans_refused_partial_success"] += refused
        return refused

    # -- the service: one request, the receiver's answers mapped ----------------------------------

    def _compressed(self, body: bytes) -> bytes:
        if self.integration.compression == "gzip":
            return igzip.compress(body, GZIP_LEVEL)
        return body

    def _post(
        self,
        body: bytes,
        what: str,
        delivery: Delivery | None = None,
        backoff: Backoff = HTTP_BACKOFF,
    ) -> requests.Response:
        """POST ``body`` through the retry machine; 401/403 raise ``CredentialsError``, answers
        that are no retryable failure are raised as ``Answer`` for the caller to map."""
        headers = self.headers

        def attempt() -> requests.Response:
            if delivery is not None:
                delivery.requests += 1
            response = self.session.post(self.url, data=body, headers=headers, timeout=HTTP_TIMEOUT)
            if not 200 <= response.status_code < 300:
                raise Answer(response, self.integration.scrub)
            return response

        def classify(exc: Exception) -> Verdict:
            if isinstance(exc, Answer):
                if exc.status in (401, 403):
                    return Verdict(Action.FATAL, error=CredentialsError(self._refused(exc, what)))
                if exc.status not in HTTP_RETRYABLE:
                    return Verdict(Action.REJECT)  # the caller splits, rejects or maps it
                if exc.status == 429 and delivery is not None:
                    delivery.counters["throttled_429"] += 1
                return Verdict(
                    Action.RETRY,
                    f"{exc.status} {exc.reason}{_said(exc)}",
                    retry_after=retry_after_seconds(exc.headers.get("Retry-After")),
                )
            if isinstance(exc, requests.ConnectionError | requests.Timeout):
                problem = self.integration.scrub(f"{type(exc).__name__}: {exc}")
                return Verdict(Action.RETRY, f"cannot connect: {problem}")
            return Verdict(Action.FATAL)

        def give_up(tries: int, last: Verdict) -> DestinationError:
            return DestinationError(
                f"integration '{self.integration.name}': {what} to {self.url} failed {tries} "
                f"times, last with {last.reason}; check endpoint, the network and the receiver. "
                "Nothing is lost: the batch stays open and the next run sends it again"
            )

        return RetryLogic(backoff, self.retries).run(attempt, classify, give_up)

    def _refused(self, answer: Answer, what: str) -> str:
        """What to check when the receiver refuses us: the headers that carry credentials."""
        integration = self.integration
        secrets = {
            name: value.env
            for name, value in integration.headers.items()
            if not isinstance(value, str)
        }
        if secrets:
            check = "check the header(s) " + ", ".join(
                f"{name} (from the environment variable {env})" for name, env in secrets.items()
            )
        elif integration.headers:
            check = f"check the header(s) {', '.join(integration.headers)}"
        else:
            check = (
                "the integration sends no headers: add the one the receiver authenticates with, "
                "e.g. headers: {authorization: {env: VAR_NAME}}"
            )
        return (
            f"integration '{integration.name}': the OTLP receiver at {self.url} refused the "
            f"credentials ({answer.status} {answer.reason}{_said(answer)}) while "
            f"{what}: {check}. The cursor did not move: nothing is lost"
        )

    def _unexpected(self, answer: Answer, what: str) -> DestinationError:
        return DestinationError(
            f"integration '{self.integration.name}': the receiver at {self.url} answered "
            f"{answer.status} {answer.reason}{_said(answer)} while {what}; "
            "check endpoint (the receiver's base URL: spans go to {endpoint}/v1/traces) and "
            "encoding. The batch stays open and will be redone"
        )


def _said(answer: Answer) -> str:
    return f": {answer.text}" if answer.text else ""
