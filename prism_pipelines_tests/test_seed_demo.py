"""``prism-pipelines seed-demo --live``: a gateway in use, for a living `make ui`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select


def test_live_demo_keeps_inserting_current_traffic_until_ctrl_c(gateway):
    started = datetime.now(UTC)
    live = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from prism_pipelines.cli import run; run()",
            "seed-demo",
            "--live",
            "--rate",
            "20",
        ],
        env={**os.environ, "PRISM_SOURCE_URL": gateway.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    c = gateway.table.c

    def count() -> int:
        with gateway.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(gateway.table)).scalar_one()

    def not_ended_yet() -> int:
        """Rows written before their request ended: a gateway writes a row once it has."""
        with gateway.engine.connect() as conn:
            return conn.execute(
                select(func.count()).where(c.ingested_at > func.clock_timestamp())
            ).scalar_one()

    try:
        deadline = time.monotonic() + 120
        early = 0
        while count() < 40 and time.monotonic() < deadline:
            early += not_ended_yet()
            time.sleep(0.5)
        first = count()
        deadline = time.monotonic() + 30  # a slow machine's next insert, not a fixed sleep
        while count() == first and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count() > first >= 40  # still coming
        assert early + not_ended_yet() == 0
    finally:
        live.send_signal(signal.SIGINT)
        try:
            out, err = live.communicate(timeout=60)
        finally:
            live.kill()  # if it is still running the test has failed: the demo must not outlive it
    assert live.returncode == 0, err[-2000:]
    assert f"{count():,} live requests inserted" in out
    assert "Traceback" not in err
    with gateway.engine.connect() as conn:
        oldest, newest = conn.execute(select(func.min(c.timestamp), func.max(c.timestamp))).one()
    assert started - timedelta(seconds=2) <= oldest <= newest <= datetime.now(UTC)
