"""The one retry machine: backoff with full jitter, the service's retry-after honoured, and one
way of counting retries for the run's metadata.

Where an SDK's own retry does the job it is used, configured in the sink's client and counted
through the SDK's hook into the sink's ``RetryCount``: botocore's *standard* mode (S3, SQS
calls; see ``aws.py``), azure-core's ``ExponentialRetry`` (Azure Blob), google-api-core's
``Retry`` (GCS, Pub/Sub). ``RetryLogic`` is for what they cannot see: entries that failed
inside a successful SQS call, and Datadog's answers (429 with its reset header, which
datadog-api-client's ``enable_retry`` does not read; see ``datadog/sink.py``).

Each caller fills ``RetryLogic`` with its classifier: a function that says of a failure whether
to retry it (``RETRY``), retry only its failed part (``RETRY_PART``: the attempt keeps what is
left), hand it back as refused for good (``REJECT``: the caller records rejects or splits the
request), or stop (``FATAL``: its error is raised, the batch stays open).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from prism_pipelines.hours import utcnow

T = TypeVar("T")


class Action(Enum):
    RETRY = "retry"
    RETRY_PART = "retry_part"
    REJECT = "reject"
    FATAL = "fatal"


@dataclass(frozen=True)
class Verdict:
    """A classifier's decision about one failure."""

    action: Action
    #: what went wrong, for the message when the attempts run out
    reason: str = ""
    #: seconds the service asked us to wait (429 reset, Retry-After)
    retry_after: float | None = None
    #: how many retries this counts as (``RETRY_PART``: the entries sent again)
    items: int = 1
    #: ``FATAL``: what to raise (None: the failure itself)
    error: Exception | None = None


class PartFailed(Exception):
    """Raised by an attempt that was accepted in part; the attempt keeps what is left to send."""

    def __init__(self, items: int, reason: str):
        super().__init__(reason)
        self.items = items
        self.reason = reason


class RetryCount:
    """Retries made for a sink, by ``RetryLogic`` or the SDK's own hooks (from several threads,
    hence the lock). ``Delivery.retries`` is its growth over the batch."""

    def __init__(self):
        self._value = 0
        self._lock = threading.Lock()

    def add(self, retries: int = 1) -> None:
        if retries:
            with self._lock:
                self._value += retries

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


@dataclass(frozen=True)
class Backoff:
    base_seconds: float = 0.2
    cap_seconds: float = 20.0
    attempts: int = 8

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); the service's own
        ``retry_after`` wins when it gives one. Full jitter (AWS architecture blog), so that
        many workers do not retry in step."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_seconds * 3)
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


#: What the HTTP senders (Datadog, OTLP) share: connect and read timeouts of one request, in
#: seconds; the statuses they retry (429, 408 and every 5xx: a 500 is mostly a backend the
#: receiver could not reach); their backoffs, Validate & Continue answering within seconds even
#: when the endpoint is unreachable.
HTTP_TIMEOUT = (10, 60)
HTTP_RETRYABLE = frozenset({408, 429} | set(range(500, 600)))
HTTP_BACKOFF = Backoff()
VALIDATE_BACKOFF = Backoff(attempts=3)


class RetryLogic:
    def __init__(self, backoff: Backoff, count: RetryCount):
        self.backoff = backoff
        self.count = count

    def run(
        self,
        attempt: Callable[[], T],
        classify: Callable[[Exception], Verdict],
        give_up: Callable[[int, Verdict], Exception],
    ) -> T:
        """``attempt()`` until it returns; each failure is classified, and after
        ``backoff.attempts`` tries ``give_up(tries, last verdict)`` is raised."""
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except Exception as exc:  # the classifier decides about every failure
                verdict = classify(exc)
                if verdict.action is Action.REJECT:
                    raise
                if verdict.action is Action.FATAL:
                    if verdict.error is None:
                        raise
                    raise verdict.error from None
            if tries >= self.backoff.attempts:
                raise give_up(tries, verdict)
            self.count.add(verdict.items)
            time.sleep(self.backoff.delay(tries, verdict.retry_after))


def part_failed(exc: Exception) -> Verdict | None:
    """The shared classification of ``PartFailed``; None for any other failure."""
    if isinstance(exc, PartFailed):
        return Verdict(Action.RETRY_PART, exc.reason, items=exc.items)
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds an HTTP ``Retry-After`` header asks us to wait: a number of seconds or an HTTP
    date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - utcnow()).total_seconds()
