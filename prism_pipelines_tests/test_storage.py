"""The behaviours every cloud archive shows, end to end through Dagster, once per provider: the
``store`` fixture gives S3 (moto), Azure Blob (Azurite) and GCS (fake-gcs-server) in turn, each
read back with the provider's official client (the adapters in storage_helpers.py). What only
one provider does is in that provider's own test file.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from prism_pipelines.sinks.storage.formats import JSONL
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.storage_helpers import (
    KEY,
    NAME,
    AzureStore,
    GcsStore,
    H,
    S3Store,
    Store,
    partition_key,
    read_archive,
    unique_name,
)

#: the spec's layout, ``{prefix}/logs/YYYY/MM/DD/hour=HH/batch_{id}.jsonl.gz``
LAYOUT = re.compile(
    r"^(?:(?P<prefix>.+)/)?logs/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/hour=(?P<h>\d{2})/"
    r"batch_[0-9a-f]{12}\.jsonl\.gz$"
)
MB = 1_000_000
#: the large partition: rows, and the random (so hardly compressible) text that pads each row
#: so that the hour's JSONL passes 100 MB with as few rows as the memory bound allows
LARGE_ROWS = 100_000
LARGE_PADDING = 480
#: the most Python heap a sync may take, whatever the size of the file it writes
HEAP_BUDGET = 64 * 2**20


@pytest.fixture(params=["s3", "azure_blob", "gcs"], ids=["s3", "azure_blob", "gcs"])
def store(request, monkeypatch) -> Store:
    """Each provider's fresh bucket in turn, on its session server."""
    match request.param:
        case "s3":
            return S3Store(request.getfixturevalue("moto_server"), monkeypatch)
        case "azure_blob":
            return AzureStore(request.getfixturevalue("azurite"), monkeypatch)
        case "gcs":
            return GcsStore(request.getfixturevalue("fake_gcs"))


def ids_in(files: dict[str, list[dict]]) -> Counter:
    return Counter(r["request_id"] for records in files.values() for r in records)


def request_ids(rows: list[tuple]) -> list[str]:
    return [row[0] for row in rows]


def test_second_sync_adds_only_new_rows_in_a_new_file(prism, gateway, store: Store):
    prism.configure(store.integration(prefix="prism/production"))
    first_rows = gateway_rows(H, 300)
    gateway.insert_rows([first_rows])
    first = prism.sync(NAME, KEY)
    [first_key] = read_archive(store)

    new_rows = gateway_rows(H, 120, start=300)
    gateway.insert_rows([new_rows])
    second = prism.sync(NAME, KEY)

    files = read_archive(store)
    assert first.metadata["records"] == 300 and second.metadata["records"] == 120
    assert first.metadata["files"] == 1 and second.metadata["files"] == 1
    assert sorted(ids_in({first_key: files[first_key]})) == request_ids(first_rows)
    [second_key] = set(files) - {first_key}
    assert sorted(ids_in({second_key: files[second_key]})) == request_ids(new_rows)
    for key in files:
        match = LAYOUT.match(key)
        assert match and match["prefix"] == "prism/production", key
        assert (match["y"], match["m"], match["d"], match["h"]) == ("2026", "11", "22", "14")
        assert store.content_headers(key) == (JSONL.content_type, JSONL.content_encoding)
    record = files[first_key][0]
    assert record["request_id"] == first_rows[0][0] and record["timestamp"].endswith("Z")
    assert second.metadata["bytes"] > 0 and second.metadata["uncompressed_bytes"] > 0

    third = prism.sync(NAME, KEY)
    assert third.metadata["records"] == 0 and third.metadata["files"] == 0
    assert set(read_archive(store)) == {first_key, second_key}  # no rows, no file


def test_backfill_of_24_hours_puts_each_hours_rows_in_that_hours_files(
    prism, gateway, store: Store
):
    """Each hour's files hold exactly that hour's rows; an hour without traffic has no file."""
    start = datetime(2026, 11, 20, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(24)]
    counts = [0 if i == 5 else 3 + i % 5 for i in range(24)]
    gateway.insert_rows([gateway_rows(h, n) for h, n in zip(hours, counts, strict=True) if n])
    prism.configure(store.integration(prefix="archive"))

    runs = prism.backfill(NAME, [partition_key(h) for h in hours])

    assert len(runs) == 24 and all(run.success for run in runs.values())
    files = read_archive(store)
    for hour, count in zip(hours, counts, strict=True):
        folder = f"archive/logs/{hour:%Y/%m/%d}/hour={hour:%H}/"
        in_hour = {k: v for k, v in files.items() if k.startswith(folder)}
        assert sorted(ids_in(in_hour)) == request_ids(gateway_rows(hour, count)), folder
        assert len(in_hour) == (1 if count else 0), folder
        assert runs[partition_key(hour)].metadata["records"] == count
        for records in in_hour.values():
            assert all(r["timestamp"].startswith(f"{hour:%Y-%m-%dT%H}:") for r in records)
    assert set(ids_in(files).values()) == {1}


@pytest.mark.parametrize("crash", ["before_upload", "after_upload"])
def test_crash_after_some_batches_then_rerun_leaves_each_record_in_one_file(
    prism, gateway, store: Store, monkeypatch, crash
):
    """The third of six uploads crashes — before it reaches the service, or after the object
    is stored but before the ledger records it; the rerun leaves every record in one file."""
    prism.configure(store.integration(batch_rows=100))
    rows = gateway_rows(H, 550)
    gateway.insert_rows([rows])
    real_put, uploads = store.sink_class.put, []

    def put(self, key, *args):
        uploads.append(key)
        if len(uploads) == 3:
            if crash == "after_upload":
                real_put(self, key, *args)
            raise RuntimeError("simulated crash")
        return real_put(self, key, *args)

    monkeypatch.setattr(store.sink_class, "put", put)
    crashed = prism.sync(NAME, KEY, raise_on_error=False)
    assert not crashed.success and "simulated crash" in crashed.error
    assert prism.ledger.cursor(NAME, H) == 200  # the cursor stopped before the crashed batch
    visible = read_archive(store)
    assert len(visible) == (3 if crash == "after_upload" else 2)
    assert all(len(records) == 100 for records in visible.values())  # only whole files
    monkeypatch.setattr(store.sink_class, "put", real_put)

    rerun = prism.sync(NAME, KEY)

    files = read_archive(store)
    assert len(files) == 6 and uploads[2] in files  # the crashed batch kept its name
    assert sorted(ids_in(files)) == request_ids(rows) and set(ids_in(files).values()) == {1}
    assert rerun.metadata["cursor_after"] == 550 and rerun.metadata["records"] == 350


def test_transient_503_is_retried_by_the_sdk_and_counted_in_the_run(
    prism, gateway, store: Store, monkeypatch
):
    """S3's 503 SlowDown, Azure's 503 ServerBusy, GCS's 503: the provider's SDK retries it."""
    prism.configure(store.integration())
    rows = gateway_rows(H, 40)
    gateway.insert_rows([rows])
    injected = store.fail_next_upload_once(monkeypatch)

    run = prism.sync(NAME, KEY)

    assert len(injected) == 1
    assert run.metadata["retries"] == 1 and run.metadata["records"] == 40
    assert sorted(ids_in(read_archive(store))) == request_ids(rows)


def test_changing_the_prefix_applies_to_new_files_only(prism, gateway, store: Store):
    prism.configure(store.integration(prefix="prism/v1"))
    old_rows, new_rows = gateway_rows(H, 100), gateway_rows(H, 50, start=100)
    gateway.insert_rows([old_rows])
    prism.sync(NAME, KEY)
    before = read_archive(store)

    prism.configure(store.integration(prefix="prism/v2"))
    gateway.insert_rows([new_rows])
    prism.sync(NAME, KEY)

    files = read_archive(store)
    old = {k: v for k, v in files.items() if k.startswith("prism/v1/logs/")}
    new = {k: v for k, v in files.items() if k.startswith("prism/v2/logs/")}
    assert old == before  # not moved, not rewritten
    assert len(new) == 1 and sorted(ids_in(new)) == request_ids(new_rows)
    assert len(files) == 2

    # A re-delivery of recorded batches rewrites each under the key it was recorded with.
    again = prism.sync(NAME, KEY, full=True)
    assert again.metadata["redone_batches"] == 2
    assert read_archive(store) == files


def test_missing_bucket_fails_the_run_and_keeps_the_cursor_until_it_exists(
    prism, gateway, store: Store
):
    """The run fails with the message, the cursor stays; once the bucket (Azure: container)
    exists, the next run delivers every row."""
    missing = unique_name()
    prism.configure(store.integration(**{store.bucket_field: missing}))
    rows = gateway_rows(H, 30)
    gateway.insert_rows([rows])

    failed = prism.sync(NAME, KEY, raise_on_error=False)

    assert not failed.success and f"'{missing}' does not exist" in failed.error
    assert prism.ledger.cursor(NAME, H) == 0
    assert f"'{missing}' does not exist" in prism.ledger.partition_state(NAME, H).last_error
    store.create(missing)
    store.bucket = missing
    assert prism.sync(NAME, KEY).metadata["records"] == 30
    assert sorted(ids_in(read_archive(store))) == request_ids(rows)


def test_validate_writes_and_deletes_a_marker(prism, store: Store):
    prism.configure(store.integration(prefix="prism/production"))
    ok, message = prism.validate(NAME)
    assert ok, message
    assert "wrote and deleted" in message and "_prism_validate_" in message
    assert store.object_keys() == []
    assert store.location("prism/production/_prism_validate_") in message


# -- the large partition --------------------------------------------------------------------


def insert_large_partition(gateway) -> None:
    """``LARGE_ROWS`` rows in hour ``H`` whose JSONL passes 100 MB: each row's error_message
    carries random text, so the gzip file stays large too and must go up in pieces."""
    column = INSERT_COLUMNS.index("error_message")

    def chunks():
        for start in range(0, LARGE_ROWS, 10_000):
            rows = gateway_rows(H, min(10_000, LARGE_ROWS - start), start=start)
            text = base64.b64encode(os.urandom(len(rows) * LARGE_PADDING)).decode()
            yield [
                row[:column]
                + (text[i * LARGE_PADDING : (i + 1) * LARGE_PADDING],)
                + row[column + 1 :]
                for i, row in enumerate(rows)
            ]

    gateway.insert_rows(chunks())


@dataclass
class MemoryUse:
    heap_peak: int  # tracemalloc's peak of Python allocations during the call
    rss_growth: int  # highest resident set size seen during the call, less the one before
    seconds: float


def measure_memory(call: Callable[[], object]) -> tuple[object, MemoryUse]:
    process = psutil.Process()
    rss_before = peak_rss = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while not done.wait(0.02):
            peak_rss = max(peak_rss, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = call()
        _, heap_peak = tracemalloc.get_traced_memory()
    finally:
        seconds = time.monotonic() - started
        tracemalloc.stop()
        done.set()
        sampler.join()
    return result, MemoryUse(heap_peak, peak_rss - rss_before, seconds)


def test_100mb_partition_goes_up_in_pieces_without_holding_the_file_in_memory(
    prism, gateway, store: Store, monkeypatch
):
    """One 100 MB+ batch goes up in parts / blocks / chunks, and the Python heap stays within a
    budget that does not depend on the file's size (a few chunks of rows, the spool's in-memory
    head, the upload's pieces in flight): nothing holds the whole file in memory."""
    insert_large_partition(gateway)
    prism.configure(store.integration(batch_rows=LARGE_ROWS))
    store.watch_uploads(monkeypatch)
    # What a process loads once whatever the file's size (the SDK, botocore's S3 model: 12 MB of
    # heap) is loaded by a validation first: the budget is for what a file's size could change.
    assert prism.validate(NAME)[0]

    run, memory = measure_memory(lambda: prism.sync(NAME, KEY))

    jsonl_bytes, object_bytes = run.metadata["uncompressed_bytes"], run.metadata["bytes"]
    [key] = store.object_keys()
    numbers = {
        "jsonl_mb": round(jsonl_bytes / MB, 1),
        "gzip_mb": round(object_bytes / MB, 1),
        "pieces": store.upload_pieces(key),
        "heap_peak_mb": round(memory.heap_peak / MB, 1),
        "rss_growth_mb": round(memory.rss_growth / MB, 1),
        "sync_seconds": round(memory.seconds, 1),
    }
    print(f"\nlarge partition on {type(store).__name__}: {numbers}")
    assert run.metadata["records"] == LARGE_ROWS and run.metadata["files"] == 1
    assert jsonl_bytes >= 100 * MB
    assert numbers["pieces"] >= object_bytes // (8 * 2**20), numbers  # 8 MiB pieces at most
    assert memory.heap_peak < HEAP_BUDGET < jsonl_bytes * 2 / 3, numbers
    files = read_archive(store)
    assert len(files[key]) == LARGE_ROWS and len(ids_in(files)) == LARGE_ROWS
