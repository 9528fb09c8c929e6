"""The one place for hand-written retry timing.

The SDKs retry their own requests (botocore's retry modes, google-api-core, azure-core); this
is for what they cannot see: SQS entries that failed inside a successful batch call, and
Datadog's answers (429 with its reset header, 408, 5xx). Full jitter, as AWS's architecture
blog recommends, so that many workers do not retry in step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_seconds: float = 0.2
    cap_seconds: float = 20.0
    attempts: int = 8

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); the service's own
        ``retry_after`` wins when it gives one."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_seconds * 3)
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))

    def wait(self, attempt: int, retry_after: float | None = None) -> None:
        time.sleep(self.delay(attempt, retry_after))
