"""Network faults between a real sync process and the destination's stand-in, through the fault
proxy (the integration's endpoint points at it): connection resets before and after the request
reached the service, a peer that stops answering, bursts of 503 and of 429 with Retry-After.
The sync absorbs them all (exit 0) and the destination, read back, has every row."""

from __future__ import annotations

import threading

import pytest

from prism_pipelines_tests.faults.conftest import SEED
from prism_pipelines_tests.faults.matrix import BY_NAME
from prism_pipelines_tests.faults.proxy import FaultProxy

BATCH_ROWS = 40
HTTP_FAULTS = ("reset", "stall_then_reset", "http_5xx", "http_429")


@pytest.fixture
def proxy(harness):
    made = FaultProxy(harness.destination.endpoint(), http=harness.destination.type != "pubsub")
    yield made
    made.close()


def _queue_http_faults(proxy: FaultProxy, faults: tuple[str, ...]) -> None:
    """Each fault followed by a request that passes, so no one request meets them all."""
    proxy.reset(1)
    proxy.pass_through(1)
    proxy.reset(1, after_forwarding=True)
    proxy.pass_through(1)
    proxy.stall(1, seconds=2.0)
    proxy.pass_through(1)
    proxy.answer(2, 503)
    proxy.pass_through(1)
    if "http_429" in faults:
        proxy.answer(2, 429, {"Retry-After": "1"})
        proxy.pass_through(1)


@pytest.mark.parametrize("kind", BY_NAME["reset"].types)
def test_resets_stalls_5xx_and_429_bursts_lose_nothing(harness, proxy, kind):
    harness.configure(endpoint_url=proxy.url, batch_rows=BATCH_ROWS)
    harness.traffic.add(400)
    if proxy.http:
        faults = tuple(f for f in HTTP_FAULTS if kind in BY_NAME[f].types)
        _queue_http_faults(proxy, faults)
        ran = harness.sync()
    else:
        # gRPC keeps one connection open: reset it mid-stream, and the reconnects after.
        proxy.stall(1, seconds=2.0)
        proxy.reset(2)
        proc = harness.start_sync()
        resets = [
            threading.Timer(harness.rng.uniform(4.0, 9.0), proxy.reset_open) for _ in range(2)
        ]
        for timer in resets:
            timer.start()
        ran = harness.finish(proc)
        for timer in resets:
            timer.cancel()
        faults = ("reset", "stall_then_reset")
    where = f"{kind} through the fault proxy (seed {SEED}, injected {proxy.injected})"
    assert ran.code == 0, f"{where}: {ran.output}"
    assert proxy.pending == 0, f"{where}: {proxy.pending} faults were never met"
    injected = len(proxy.injected)
    duplicates = harness.assert_delivered(injected, where)
    for fault in faults:
        harness.results.record(
            fault, kind, lost=0, duplicates=duplicates, injected=proxy.injected, seed=SEED
        )
