"""A stand-in for Datadog's intake and API on 127.0.0.1, answering the way Datadog documents.

It takes what the Datadog sink sends through the official ``datadog-api-client``:

- ``POST /api/v2/logs``: 202 ``{}``; 413 above 5 MB uncompressed; 400 above 1000 entries;
- ``POST /api/v2/series``: 202 ``{"errors": []}``; 413 above 512 000 bytes on the wire or
  5 242 880 bytes decompressed;
- ``GET /api/v1/validate``: 200 ``{"valid": true}``, or 403 for a key it does not know;
- ``GET|POST /api/v1/dashboard``, ``GET|PUT /api/v1/dashboard/<id>`` (application key needed).

Bodies are parsed as strict JSON, as Datadog's intake does: ``NaN`` and ``Infinity`` (which
Python's ``json`` writes and reads by default) get a 400.

Every request is recorded (method, path, query, headers, the raw body and the body decoded from
gzip/deflate JSON), with the status it got and when. Faults come on demand: ``fail_next``
(any status, headers and body), ``throttle_next`` (429 with Datadog's ``X-RateLimit-*``
headers), ``refuse_logs_where`` and ``refuse_series_where`` (400 for any request holding a
matching entry or series), so the sink's answers to 400, 403, 413, 429 and 5xx are tested
against a real HTTP exchange.

Use the session fixture ``datadog_intake``; call ``reset()`` at the start of each test.
"""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

API_KEY = "dd-test-api-key-0123456789abcdef"
APP_KEY = "dd-test-app-key-0123456789abcdef0123456789"

# Datadog's documented limits (the sink keeps under them; the stand-in enforces them).
LOGS_MAX_UNCOMPRESSED = 5_000_000
LOGS_MAX_ENTRIES = 1000
METRICS_MAX_COMPRESSED = 512_000
METRICS_MAX_DECOMPRESSED = 5_242_880


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: object  # decoded JSON (None when there is no body)
    decoded_size: int
    status: int = 0
    at: float = 0.0  # time.monotonic() when the request arrived

    @property
    def kind(self) -> str:
        return _kind(self.method, self.path)


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None


def _kind(method: str, path: str) -> str:
    if path == "/api/v2/logs":
        return "logs"
    if path == "/api/v2/series":
        return "metrics"
    if path == "/api/v1/validate":
        return "validate"
    if path.startswith("/api/v1/dashboard"):
        return "dashboards"
    return "other"


def _error_body(status: int, kind: str, detail: str | None = None) -> object:
    """Datadog's error shapes: the logs intake answers JSON:API errors, the rest a list of text."""
    titles = {
        400: "Bad Request",
        403: "Forbidden",
        408: "Request Timeout",
        413: "Payload Too Large",
        429: "Too many requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    title = titles.get(status, "Error")
    if kind == "logs":
        return {"errors": [{"status": str(status), "title": title, "detail": detail or title}]}
    return {"errors": [detail or title]}


class DatadogIntake:
    def __init__(self):
        self.api_keys = {API_KEY}
        self.app_keys = {APP_KEY}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DatadogIntake:
        intake = self

        class Handler(_Handler):
            pass

        Handler.intake = intake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests: list[Recorded] = []
            self.dashboards: dict[str, dict] = {}
            self._faults: dict[str, deque[Fault]] = defaultdict(deque)
            self._refuse_logs: Callable[[dict], str | None] | None = None
            self._refuse_series: Callable[[dict], str | None] | None = None
            self._ids = itertools.count(1)
            self.api_keys = {API_KEY}
            self.app_keys = {APP_KEY}

    def fail_next(
        self,
        kind: str,
        status: int,
        times: int = 1,
        *,
        headers: dict[str, str] | None = None,
        body: object = None,
    ) -> None:
        """The next ``times`` requests of ``kind`` (logs, metrics, validate, dashboards) answer
        ``status`` (with Datadog's error body unless ``body`` is given)."""
        with self._lock:
            for _ in range(times):
                self._faults[kind].append(Fault(status, dict(headers or {}), body))

    def throttle_next(self, kind: str, times: int = 1, reset_seconds: int = 1) -> None:
        """429 with the rate-limit headers Datadog sends: the limit resets in ``reset_seconds``."""
        headers = {
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Period": "60",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_seconds),
            "X-RateLimit-Name": f"{kind}_intake",
        }
        self.fail_next(kind, 429, times, headers=headers)

    def refuse_logs_where(self, predicate: Callable[[dict], str | None] | None) -> None:
        """Answer 400 to any log request holding an entry for which ``predicate`` returns an
        error text (the whole request is refused, as Datadog does)."""
        with self._lock:
            self._refuse_logs = predicate

    def refuse_series_where(self, predicate: Callable[[dict], str | None] | None) -> None:
        """Answer 400 to any metrics request holding a series for which ``predicate`` returns an
        error text (the whole request is refused)."""
        with self._lock:
            self._refuse_series = predicate

    # -- what was received ------------------------------------------------------------------------

    def recorded(self, kind: str, status: int | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.kind == kind and (status is None or r.status == status)
            ]

    @property
    def logs(self) -> list[dict]:
        """Every log entry Datadog accepted, in arrival order."""
        return [e for r in self.recorded("logs", 202) for e in r.body]

    @property
    def series(self) -> list[dict]:
        """Every metric series Datadog accepted, in arrival order."""
        return [s for r in self.recorded("metrics", 202) for s in r.body["series"]]

    # -- answering (called by the handler threads) -------------------------------------------------

    def _answer(self, request: Recorded) -> tuple[int, dict[str, str], object]:
        kind = request.kind
        with self._lock:
            self.requests.append(request)
            fault = self._faults[kind].popleft() if self._faults[kind] else None
        if fault is not None:
            return fault.status, fault.headers, fault.body or _error_body(fault.status, kind)
        if kind == "other":
            return 404, {}, {"errors": ["Not found"]}
        if request.headers.get("dd-api-key") not in self.api_keys:
            return 403, {}, _error_body(403, kind)
        if kind == "logs":
            return self._logs(request)
        if kind == "metrics":
            return self._metrics(request)
        if kind == "validate":
            return 200, {}, {"valid": True}
        if request.headers.get("dd-application-key") not in self.app_keys:
            return 403, {}, _error_body(403, kind)
        return self._dashboards(request)

    def _logs(self, request: Recorded):
        if request.decoded_size > LOGS_MAX_UNCOMPRESSED:
            return 413, {}, _error_body(413, "logs", "Payload too large")
        entries = request.body
        if not isinstance(entries, list):
            entries = [entries]
            request.body = entries
        if len(entries) > LOGS_MAX_ENTRIES:
            return 400, {}, _error_body(400, "logs", "Too many log entries in one request")
        refuse = self._refuse_logs
        if refuse:
            for entry in entries:
                detail = refuse(entry)
                if detail:
                    return 400, {}, _error_body(400, "logs", detail)
        return 202, {}, {}

    def _metrics(self, request: Recorded):
        if (
            len(request.raw) > METRICS_MAX_COMPRESSED
            or request.decoded_size >= METRICS_MAX_DECOMPRESSED
        ):
            return 413, {}, _error_body(413, "metrics", "Payload too large")
        if not isinstance(request.body, dict) or not isinstance(request.body.get("series"), list):
            return 400, {}, _error_body(400, "metrics", "series is required")
        refuse = self._refuse_series
        if refuse:
            for series in request.body["series"]:
                detail = refuse(series)
                if detail:
                    return 400, {}, _error_body(400, "metrics", detail)
        return 202, {}, {"errors": []}

    def _dashboards(self, request: Recorded):
        now = datetime.now(UTC).isoformat()
        parts = request.path.rstrip("/").split("/")
        dashboard_id = parts[4] if len(parts) > 4 else None
        with self._lock:
            if request.method == "GET" and dashboard_id is None:
                start = int(request.query.get("start", ["0"])[0])
                count = int(request.query.get("count", ["100"])[0])
                summaries = [_summary(d) for d in self.dashboards.values()]
                return 200, {}, {"dashboards": summaries[start : start + count]}
            if request.method == "POST" and dashboard_id is None:
                number = next(self._ids)
                dashboard_id = f"abc-{number:03d}-xyz"
                dashboard = dict(request.body)
                dashboard.update(
                    id=dashboard_id,
                    url=f"/dashboard/{dashboard_id}/{_slug(dashboard.get('title', ''))}",
                    author_handle="prism@example.com",
                    created_at=now,
                    modified_at=now,
                )
                self.dashboards[dashboard_id] = dashboard
                return 200, {}, dashboard
            dashboard = self.dashboards.get(dashboard_id)
            if dashboard is None:
                return 404, {}, {"errors": ["Dashboard not found"]}
            if request.method == "GET":
                return 200, {}, dashboard
            if request.method == "PUT":
                updated = dict(request.body)
                updated.update(
                    {k: dashboard[k] for k in ("id", "url", "author_handle", "created_at")},
                    modified_at=now,
                )
                self.dashboards[dashboard_id] = updated
                return 200, {}, updated
        return 405, {}, {"errors": ["Method not allowed"]}


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _summary(dashboard: dict) -> dict:
    return {
        k: dashboard.get(k)
        for k in (
            "id",
            "title",
            "url",
            "layout_type",
            "author_handle",
            "created_at",
            "modified_at",
            "description",
        )
    } | {"is_read_only": False}


def _not_json(constant: str):
    """``NaN``, ``Infinity``, ``-Infinity``: not JSON (RFC 8259), refused like Datadog does."""
    raise ValueError(f"{constant} is not a valid JSON number")


def _decode(raw: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


class _Handler(BaseHTTPRequestHandler):
    intake: DatadogIntake
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _handle(self) -> None:
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            decoded = _decode(raw, headers.get("content-encoding"))
            body = json.loads(decoded, parse_constant=_not_json) if decoded else None
        except (OSError, zlib.error, ValueError) as exc:
            request = Recorded(
                self.command, url.path, {}, headers, raw, None, len(raw), 400, arrived
            )
            with self.intake._lock:
                self.intake.requests.append(request)
            self._reply(
                400,
                {},
                _error_body(400, _kind(self.command, url.path), f"Malformed payload: {exc}"),
            )
            return
        request = Recorded(
            self.command,
            url.path,
            parse_qs(url.query),
            headers,
            raw,
            body,
            len(decoded),
            at=arrived,
        )
        status, extra, answer = self.intake._answer(request)
        request.status = status
        self._reply(status, extra, answer)

    def _reply(self, status: int, headers: dict[str, str], body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


@pytest.fixture(scope="session")
def datadog_intake():
    """The stand-in Datadog (``.url`` for ``endpoint_url``; keys ``API_KEY`` / ``APP_KEY``)."""
    intake = DatadogIntake().start()
    yield intake
    intake.stop()
