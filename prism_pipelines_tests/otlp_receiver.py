"""A strict OTLP/HTTP trace receiver, for the answers Datadog's APM test agent cannot give: a
refused credential (401 unless the ``authorization`` header carries its token), a
``partial_success`` that refuses some spans, and a 400 for a request holding a span it cannot
take. Every other OTLP test runs against the agent
(services.py); this one exists only because the agent takes every request.

It decodes each request with opentelemetry-proto (protobuf, gzip or not) and answers the way
the OTLP specification says: a ``google.rpc.Status`` body on failures, an
``ExportTraceServiceResponse`` on success.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class StrictReceiver:
    def __init__(
        self,
        token: str,
        refuse: Callable[[Span], str | None] | None = None,
        bad_data: Callable[[Span], str | None] | None = None,
    ):
        self.token = token
        #: a span → why the receiver refuses it in a partial success (None: taken)
        self.refuse = refuse or (lambda span: None)
        #: a span → why a request holding it is answered 400 as a whole (None: taken)
        self.bad_data = bad_data or (lambda span: None)
        self.spans: list[Span] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, answer = receiver.answer(self.path, self.headers, body)
                receiver.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # quiet: the tests read statuses, not logs
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, path: str, headers, body: bytes) -> tuple[int, bytes]:
        if path != "/v1/traces":
            return 404, Status(code=5, message=f"no such path {path}").SerializeToString()
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, Status(code=16, message="invalid or missing token").SerializeToString()
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            span
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        bad = sorted(set(filter(None, map(self.bad_data, spans))))
        if bad:
            return 400, Status(code=3, message="; ".join(bad)).SerializeToString()
        refused, reasons = 0, set()
        for span in spans:
            reason = self.refuse(span)
            if reason:
                refused += 1
                reasons.add(reason)
            else:
                self.spans.append(span)
        response = ExportTraceServiceResponse()
        if refused:
            response.partial_success.rejected_spans = refused
            response.partial_success.error_message = "; ".join(sorted(reasons))
        return 200, response.SerializeToString()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
