"""The fault matrix: what each fault may cost at each destination type, as the suite asserts it,
and what the suite observed.

``EXPECTED`` is the contract the tests check their observations against (``Results.record``
raises if one breaks it); docs/reliability.md's tables are ``render_doc()`` of it, and
test_matrix.py keeps the two equal. The observations (per run: duplicates seen, kills that
landed, the messages) go to ``fault_results.json`` and ``fault_matrix.md`` under pytest's base
temporary directory.

``python -m prism_pipelines_tests.faults.matrix`` prints the doc's tables.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from prism_pipelines.source import RECONNECTS
from prism_pipelines_tests.faults.destinations import STORAGE, TYPES

ONE_BATCH = "≤ 1 batch"


@dataclass(frozen=True)
class Expect:
    """One fault at one destination type: records lost (always 0), duplicates a consumer may
    see, how the suite recovers, and what the operator sees meanwhile."""

    duplicates: str
    recovered: str
    lost: int = 0


@dataclass(frozen=True)
class Operator:
    """What an operator sees: the sync's exit code, the status ``prism-pipelines status`` shows
    after the failed sync (None: not checked), and text the failed sync's message holds."""

    exit_code: str
    status: str | None
    message: str


@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    types: tuple[str, ...]
    storage: Expect | None
    queues: Expect | None
    operator: Operator
    not_covered: tuple[tuple[str, str], ...] = ()

    def expect(self, kind: str) -> Expect:
        return self.storage if kind in STORAGE else self.queues


_REDO = "the next sync redoes the open batch under the same name"
_RESEND = "the next sync re-sends the open batch"
_READ_ON = "the reader reconnects and reads on after the last row it handed over"

FAULTS = (
    Fault(
        "kill",
        "`kill -9` of the sync process mid-batch, rows added between attempts",
        TYPES,
        Expect("0", _REDO),
        Expect(ONE_BATCH, _RESEND),
        Operator("killed; the next sync exits 0", None, ""),
    ),
    Fault(
        "stall",
        "sync stopped (SIGSTOP) past its lease; another sync takes over and delivers more",
        ("local", "s3"),
        Expect("0", "the destination refuses the stalled run's late write (fencing)"),
        None,
        Operator("1 for the woken run, 0 for the one that took over", None, "taken over"),
    ),
    Fault(
        "stall_emptying",
        "sync stopped past its lease as it empties a redone file (its rows left the gateway); "
        "another sync takes over with the rows back (both layouts)",
        STORAGE,
        Expect("0", "the destination refuses the stalled run's write (fencing): nothing deleted"),
        None,
        Operator("1 for the woken run, 0 for the one that took over", None, "taken over"),
    ),
    Fault(
        "stall_manifest",
        "sync stopped past its lease as it writes the hour's manifest; another sync takes over "
        "with late rows (both layouts)",
        STORAGE,
        Expect("0", "the newer manifest is kept: the stalled run's write and record are fenced"),
        None,
        Operator("1 for the woken run, 0 for the one that took over", None, "taken over"),
    ),
    Fault(
        "kill_publishing",
        "`kill -9` of the sync as it publishes a file, `layout: hive`, `format: parquet`",
        STORAGE,
        Expect("0", "the next sync removes what the killed run left and redoes the batch"),
        None,
        Operator("killed; the next sync exits 0", None, ""),
    ),
    Fault(
        "reset",
        "connection reset by the network (before, and after the request reached the service)",
        TYPES[1:],
        Expect("0", "the SDK's retry (same object name)"),
        Expect(ONE_BATCH, "the SDK's / sink's retry"),
        Operator("0", None, ""),
    ),
    Fault(
        "stall_then_reset",
        "the service stops answering for 2 s, then the connection drops",
        TYPES[1:],
        Expect("0", "the SDK's retry"),
        Expect(ONE_BATCH, "the SDK's / sink's retry"),
        Operator("0", None, ""),
    ),
    Fault(
        "http_5xx",
        "a burst of HTTP 503 answers",
        ("s3", "azure_blob", "gcs", "sqs", "datadog", "otlp"),
        Expect("0", "the SDK's retry with backoff"),
        Expect(ONE_BATCH, "the SDK's / sink's retry with backoff"),
        Operator("0", None, ""),
        (("pubsub", "gRPC, not HTTP/1.1: resets only"),),
    ),
    Fault(
        "http_429",
        "a burst of HTTP 429 with Retry-After: 1",
        ("s3", "gcs", "sqs", "datadog", "otlp"),
        Expect("0", "the SDK's retry; Datadog waits the Retry-After"),
        Expect(ONE_BATCH, "the SDK's / sink's retry; Datadog and OTLP wait the Retry-After"),
        Operator("0", None, ""),
        (
            ("pubsub", "gRPC, not HTTP/1.1: resets only"),
            ("azure_blob", "Azure Storage throttles with 503 Server Busy (the 503 row), not 429"),
        ),
    ),
    Fault(
        "source_terminated",
        "the gateway database ends the connection the sync reads through, mid-read "
        "(`pg_terminate_backend`)",
        ("local", "s3", "datadog"),
        Expect("0", _READ_ON),
        Expect("0", _READ_ON),
        Operator("0", None, ""),
    ),
    Fault(
        "source_lost_repeatedly",
        "the gateway database ends the sync's reading connection more often than the reader "
        f"reconnects ({RECONNECTS + 1} times in one read)",
        ("local", "s3", "datadog"),
        Expect("0", "the next sync redoes the open batch"),
        Expect(ONE_BATCH, "the next sync re-sends the open batch"),
        Operator("1; the next sync 0", "Error", "the connection was lost"),
    ),
    Fault(
        "state_unreachable",
        "the state database refuses connections mid-run",
        ("local", "datadog"),
        Expect("0", "the next sync, once the database is back, redoes the open batch"),
        Expect(ONE_BATCH, "the next sync re-sends the open batch"),
        Operator("1; the next sync 0", None, "failed"),
    ),
    Fault(
        "disk_full",
        "the local archive's disk is full (2 MB tmpfs)",
        ("local",),
        Expect("0", "the next sync after space is freed"),
        None,
        Operator("1; 0 once space is freed", "Error", "No space left on device"),
    ),
    Fault(
        "credentials",
        "the destination refuses the credentials",
        ("s3", "azure_blob", "sqs", "datadog"),
        Expect("0", "the next sync with valid credentials"),
        Expect("0", "the next sync with valid credentials"),
        Operator("1; 0 with the right credentials", "Error", "refused"),
        (
            ("local", "a folder has no credentials"),
            ("gcs", "fake-gcs-server does not authenticate"),
            ("pubsub", "the Pub/Sub emulator does not authenticate"),
            ("otlp", "the APM test agent takes any header (test_otlp.py: a strict receiver)"),
        ),
    ),
)
BY_NAME = {f.name: f for f in FAULTS}


def cases(fault: str, open_today: dict[str, str] | None = None) -> list:
    """The fault's destination types as pytest parameters; ``open_today`` maps a type to the
    fix it still waits for, marked ``xfail(strict=True)`` (red again once the fix lands)."""
    open_today = open_today or {}
    return [
        pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=open_today[kind]))
        if kind in open_today
        else kind
        for kind in BY_NAME[fault].types
    ]


class Results:
    """The observations of one session, checked against ``EXPECTED`` as they are recorded."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows: list[dict] = []

    def record(self, fault: str, kind: str, *, lost: int, duplicates: int, **seen) -> None:
        spec = BY_NAME[fault]
        assert kind in spec.types, f"{fault} at {kind} is not in the matrix"
        expect = spec.expect(kind)
        assert lost == expect.lost, f"{fault} at {kind}: {lost} records lost"
        if expect.duplicates == "0":
            assert duplicates == 0, f"{fault} at {kind}: {duplicates} duplicates"
        with self._lock:
            self._rows.append(
                {"fault": fault, "type": kind, "lost": lost, "duplicates": duplicates, **seen}
            )

    def as_list(self) -> list[dict]:
        with self._lock:
            return list(self._rows)

    def render(self) -> str:
        """The observed matrix: per fault and type, what the runs saw."""
        lines = ["| fault | type | lost | duplicates seen | details |", "|---|---|---|---|---|"]
        for row in self.as_list():
            details = ", ".join(
                f"{k}={v}"
                for k, v in row.items()
                if k not in ("fault", "type", "lost", "duplicates")
            )
            lines.append(
                f"| {row['fault']} | {row['type']} | {row['lost']} | {row['duplicates']} | "
                f"{details} |"
            )
        return "\n".join(lines) + "\n"


def render_doc() -> str:
    """docs/reliability.md's "Fault matrix" and "What an operator sees" sections."""
    out = [
        "## Fault matrix",
        "",
        "What each fault may cost at each destination type: records lost / duplicate deliveries "
        "a consumer may see, as the fault suite (`prism_pipelines_tests/faults/`) asserts it. "
        "Storage is exactly once: each source row in exactly one file, no duplicate file, no "
        "temporary file, block or multipart upload left behind. Queues, Datadog and OTLP are at "
        "least once, the duplicates bounded by the batch in flight (`batch_rows`) per fault. "
        "Generated from `prism_pipelines_tests/faults/matrix.py` "
        "(`python -m prism_pipelines_tests.faults.matrix`); a test keeps this section equal to "
        "it. What one run observed (duplicates seen, kills that landed, messages) is written to "
        "`fault_results.json` and `fault_matrix.md` in pytest's base temporary directory.",
        "",
        "| fault | " + " | ".join(TYPES) + " | recovered by |",
        "|---|" + "---|" * (len(TYPES) + 1),
    ]
    notes: dict[str, int] = {}
    for fault in FAULTS:
        cells = []
        skipped = dict(fault.not_covered)
        for kind in TYPES:
            if kind in fault.types:
                expect = fault.expect(kind)
                cells.append(f"{expect.lost} / {expect.duplicates}")
            elif kind in skipped:
                number = notes.setdefault(skipped[kind], len(notes) + 1)
                cells.append(f"not tested ({number})")
            else:
                cells.append("—")
        recovered = "; ".join(
            f"{label}: {expect.recovered}"
            for label, expect in (("storage", fault.storage), ("queues", fault.queues))
            if expect is not None
        )
        out.append(f"| {fault.title} | " + " | ".join(cells) + f" | {recovered} |")
    out.append("")
    out += [f"({number}) {reason}." for reason, number in notes.items()]
    out += [
        "",
        "## What an operator sees",
        "",
        "| fault | `prism-pipelines sync` exits | `prism-pipelines status` after the failed sync "
        "| the message says |",
        "|---|---|---|---|",
    ]
    for fault in FAULTS:
        op = fault.operator
        message = f"“{op.message}”" if op.message else "nothing: the fault is absorbed"
        status = op.status or "not checked"
        out.append(f"| {fault.title} | {op.exit_code} | {status} | {message} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_doc(), end="")
