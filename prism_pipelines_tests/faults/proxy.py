"""A TCP fault proxy on loopback, between a sink and its stand-in (the integration's
``endpoint_url`` points here).

Faults are queued and each one is used by the next connection (raw mode) or the next HTTP
request (HTTP mode) it applies to:

- ``reset(n)``: the next n connections / requests are answered with a TCP reset (RST, via
  SO_LINGER 0). With ``after_forwarding=True`` (HTTP) the request reaches the stand-in first and
  only its answer is lost: the sender cannot know it was delivered, the case that makes
  duplicates.
- ``stall(n, seconds)``: the next n connections / requests hang for ``seconds``, then are reset
  (a peer that stopped answering; the SDKs' own read timeouts are a minute, too long for a test,
  and a timeout and a reset take the same retry path in every SDK).
- ``answer(n, status, headers)`` (HTTP): the next n requests get ``status`` without reaching the
  stand-in, e.g. 503, or 429 with ``Retry-After``.
- ``reset_open()``: reset every connection open now (a long-lived gRPC channel mid-stream).

HTTP mode parses HTTP/1.1 requests and responses (Content-Length and chunked bodies, ``Expect:
100-continue`` answered by the proxy) so faults apply per request on keep-alive connections.
Raw mode relays bytes (gRPC's HTTP/2, anything else).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
_REASONS |= {503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Fault:
    kind: str  # reset | reset_after | stall | answer | pass
    seconds: float = 0.0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], http: bool = True):
        self.upstream = upstream
        self.http = http
        self.injected: list[str] = []  # what was done, in order (for the tests' messages)
        self.requests = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    # -- the faults ----------------------------------------------------------------------------

    def reset(self, times: int = 1, after_forwarding: bool = False) -> None:
        self._queue(times, Fault("reset_after" if after_forwarding else "reset"))

    def stall(self, times: int = 1, seconds: float = 2.0) -> None:
        self._queue(times, Fault("stall", seconds=seconds))

    def answer(self, times: int, status: int, headers: dict[str, str] | None = None) -> None:
        assert self.http, "answers need HTTP mode"
        self._queue(times, Fault("answer", status=status, headers=dict(headers or {})))

    def pass_through(self, times: int = 1) -> None:
        """The next ``times`` connections / requests go through untouched (spaces out faults,
        so one request's retries do not meet them all)."""
        self._queue(times, Fault("pass"))

    def reset_open(self) -> int:
        """Reset every connection open now; returns how many."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _rst(sock)
        self.injected.append(f"reset {len(sockets)} open connections")
        return len(sockets)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _queue(self, times: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        return None if fault is None or fault.kind == "pass" else fault

    # -- relaying ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            handler = self._serve_http if self.http else self._serve_raw
            threading.Thread(target=self._guarded, args=(handler, client), daemon=True).start()

    def _guarded(self, handler, client: socket.socket) -> None:
        with self._lock:
            self._open.add(client)
        upstream = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=120)
            with self._lock:
                self._open.add(upstream)
            handler(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.close()

    def _serve_raw(self, client: socket.socket, upstream: socket.socket) -> None:
        fault = self._next_fault()
        if fault is not None:
            self._apply_without_forwarding(fault, client)
            return
        pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pump.start()
        _pump(client, upstream)
        pump.join()

    def _serve_http(self, client: socket.socket, upstream: socket.socket) -> None:
        reader, back = _Reader(client), _Reader(upstream)
        while True:
            request = reader.message(request=True, on_continue=client)
            if request is None:
                return
            with self._lock:
                self.requests += 1
            fault = self._next_fault()
            if fault is not None and fault.kind != "reset_after":
                self._apply_without_forwarding(fault, client)
                if fault.kind != "answer":
                    return
                continue
            upstream.sendall(request.raw)
            response = back.message(request=False, method=request.method)
            if response is None:
                return
            if fault is not None:  # reset_after: delivered, but the answer is lost
                self.injected.append("reset after forwarding")
                _rst(client)
                return
            client.sendall(response.raw)

    def _apply_without_forwarding(self, fault: Fault, client: socket.socket) -> None:
        if fault.kind == "answer":
            headers = {"Content-Length": "0", **fault.headers}
            head = f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            client.sendall((head + "\r\n").encode())
            self.injected.append(f"answered {fault.status}")
            return
        if fault.kind == "stall":
            time.sleep(fault.seconds)
            self.injected.append(f"stalled {fault.seconds:g}s")
        else:
            self.injected.append("reset")
        _rst(client)


def _rst(sock: socket.socket) -> None:
    """Close with a TCP reset rather than a clean FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@dataclass
class _Message:
    raw: bytes
    method: str


class _Reader:
    """HTTP/1.1 messages off one socket, whole (head and body), as raw bytes."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise OSError("connection closed mid-message")
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise OSError("connection closed mid-message")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def message(
        self, request: bool, method: str = "", on_continue: socket.socket | None = None
    ) -> _Message | None:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if request:
            method = lines[0].split(" ", 1)[0]
            if headers.get("expect", "").lower() == "100-continue" and on_continue is not None:
                on_continue.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                lines = [x for x in lines if not x.lower().startswith("expect:")]
                head = "\r\n".join(lines).encode("latin-1")
        else:
            status = int(lines[0].split(" ", 2)[1])
            if status == 100:
                return self.message(request, method)
            if method == "HEAD" or status in (204, 304):
                return _Message(head + b"\r\n\r\n", method)
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._line()
                size = int(size_line.split(b";")[0], 16)
                body += size_line + self._take(size + 2)
                if size == 0:
                    break
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        elif not request:
            while self._fill():  # a response delimited by the connection's end
                pass
            body, self.buffer = self.buffer, b""
        return _Message(head + b"\r\n\r\n" + body, method)
