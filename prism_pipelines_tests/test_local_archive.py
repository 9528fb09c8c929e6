"""The foundation, end to end through Dagster with the local-folder archive, on PostgreSQL and
on SQLite (the embedded default)."""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from dagster import DefaultScheduleStatus, build_schedule_context
from sqlalchemy import delete, insert, select, text, update

from prism_pipelines.errors import IntegrationsFileError
from prism_pipelines.integrations import load_integrations
from prism_pipelines.ledger import Ledger, leases
from prism_pipelines.records import EXPORTED_FIELDS
from prism_pipelines.sinks import build_sink
from prism_pipelines.sinks.storage.local import LocalSink
from prism_pipelines.source import READER_APPLICATION, GatewaySource
from prism_pipelines.sync import deliver_partition
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import wait_for

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request):
    return request.param


@pytest.fixture
def gateway(backend, request, tmp_path, monkeypatch) -> GatewaySource:
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/gateway.db"
    )
    monkeypatch.setenv("PRISM_SOURCE_URL", url)
    source = GatewaySource(url)
    source.create_table()
    yield source
    source.engine.dispose()


@pytest.fixture
def state_url(backend, request, tmp_path) -> str:
    return (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/state.db"
    )


def archive(tmp_path: Path, **settings) -> dict:
    return {
        "name": "archive",
        "type": "local",
        "path": str(tmp_path / "bucket"),
        "prefix": "prism/prod",
        "history": {"since": "2026-11-20T00:00:00Z"},
        **settings,
    }


def read_files(folder: Path) -> dict[str, list[dict]]:
    """Every archive file, gunzipped: relative key → records."""
    return {
        str(p.relative_to(folder)): [
            orjson.loads(line) for line in gzip.open(p).read().splitlines()
        ]
        for p in sorted(folder.rglob("*.jsonl.gz"))
    }


def ids_in(files: dict[str, list[dict]]) -> Counter:
    return Counter(r["request_id"] for records in files.values() for r in records)


def test_partition_files_hold_exactly_the_partitions_rows(prism, gateway, tmp_path):
    gateway.insert_rows(
        [
            gateway_rows(H - timedelta(hours=1), 50),
            gateway_rows(H, 2_500),
            gateway_rows(H + timedelta(hours=1), 50),
        ]
    )
    prism.configure(archive(tmp_path, batch_rows=1_000))

    run = prism.sync("archive", KEY)

    files = read_files(tmp_path / "bucket")
    assert set(ids_in(files).values()) == {1}
    assert sorted(ids_in(files)) == [r[0] for r in gateway_rows(H, 2_500)]
    assert len(files) == 3
    for key, records in files.items():
        assert key.startswith("prism/prod/logs/2026/11/22/hour=14/batch_")
        for record in records:
            assert tuple(record) == EXPORTED_FIELDS
            assert record["timestamp"].startswith("2026-11-22T14:") and record[
                "timestamp"
            ].endswith("Z")
            assert len(record["timestamp"]) == len("2026-03-31T14:22:10.000Z")
    by_id = {r["request_id"]: r for records in files.values() for r in records}
    first = by_id[gateway_rows(H, 1)[0][0]]
    assert (
        first["model"] == "gpt-4o"
        and first["provider"] == "openai"
        and isinstance(first["cost"], float)
    )
    assert run.metadata["records"] == 2_500
    assert run.metadata["files"] == 3
    assert run.metadata["cursor_before"] == 0 and run.metadata["cursor_after"] == 2_550
    assert run.metadata["first_event_time"] == "2026-11-22T14:00:00.000Z"
    assert run.metadata["rejects"] == 0 and run.metadata["bytes"] > 0
    assert run.metadata["lag_seconds"] > 0


def test_a_file_holds_batch_rows_rows_whatever_the_readers_chunk_size(prism, gateway, tmp_path):
    # JSONL is read 15,000 rows at a time (formats.JSONL.chunk_rows): batches of 12,000 end
    # inside a chunk, and the chunk's rest begins the next file
    gateway.insert_rows([gateway_rows(H, 25_000)])
    prism.configure(archive(tmp_path, batch_rows=12_000))

    run = prism.sync("archive", KEY)

    files = read_files(tmp_path / "bucket")
    assert sorted(len(records) for records in files.values()) == [1_000, 12_000, 12_000]
    assert set(ids_in(files).values()) == {1}
    assert sorted(ids_in(files)) == [r[0] for r in gateway_rows(H, 25_000)]
    assert run.metadata["records"] == 25_000 and run.metadata["files"] == 3
    assert run.metadata["cursor_after"] == 25_000


def test_second_sync_delivers_only_new_rows(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path))
    gateway.insert_rows([gateway_rows(H, 300)])
    assert prism.sync("archive", KEY).metadata["records"] == 300

    gateway.insert_rows([gateway_rows(H, 120, start=300)])
    second = prism.sync("archive", KEY)

    assert second.metadata["records"] == 120
    files = read_files(tmp_path / "bucket")
    assert (
        len(files) == 2
        and set(ids_in(files).values()) == {1}
        and sum(ids_in(files).values()) == 420
    )
    assert prism.sync("archive", KEY).metadata["records"] == 0
    assert len(read_files(tmp_path / "bucket")) == 2  # no rows, no file


def test_late_row_in_closed_hour_is_delivered_by_a_later_sync(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path))
    gateway.insert_rows([gateway_rows(H, 100)])
    prism.sync("archive", KEY)
    late = gateway_rows(H, 1, start=100, ingested_at=H + timedelta(hours=5))
    gateway.insert_rows([late])

    assert prism.sync("archive", KEY).metadata["records"] == 1
    assert ids_in(read_files(tmp_path / "bucket"))[late[0][0]] == 1


def test_row_committed_below_the_cursor_is_not_skipped(prism, gateway, tmp_path):
    """A row whose id is lower than rows already delivered (its transaction committed late):
    the batch whose range it falls in is re-sent under the same name, so it lands exactly once."""
    prism.configure(archive(tmp_path, batch_rows=100))
    rows = gateway_rows(H, 300)
    gateway.insert_rows([rows[:150]])
    with gateway.engine.begin() as conn:  # leave a hole at ids 151..160
        conn.execute(text("UPDATE prism_request_logs SET id = id + 10 WHERE id > 140"))
        if gateway.engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('prism_request_logs_id_seq', 160)"))
    gateway.insert_rows([rows[150:]])
    prism.sync("archive", KEY)
    before = set(read_files(tmp_path / "bucket"))

    late = gateway_rows(H, 1, start=300)[0]
    with gateway.engine.begin() as conn:
        conn.execute(
            gateway.table.insert().values(
                id=145, **dict(zip(gateway.table.c.keys()[1:], late, strict=True))
            )
        )
    run = prism.sync("archive", KEY)

    files = read_files(tmp_path / "bucket")
    assert run.metadata["redone_batches"] == 1
    assert set(files) == before  # the batch's file was rewritten, not a new one added
    assert set(ids_in(files).values()) == {1} and sum(ids_in(files).values()) == 301


def test_rows_younger_than_the_settle_delay_wait_for_the_next_sync(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path), source={"settle_seconds": 3600})
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    gateway.insert_rows([gateway_rows(now, 10, ingested_at=datetime.now(UTC))])
    key = now.strftime("%Y-%m-%d-%H:%M")

    held = prism.sync("archive", key)
    assert held.metadata["records"] == 0 and held.metadata["held_back_unsettled_rows"] is True

    prism.configure(archive(tmp_path), source={"settle_seconds": 0})
    assert prism.sync("archive", key).metadata["records"] == 10


@pytest.mark.parametrize("backend", ["postgresql"])  # the reader that reads ahead
def test_a_sync_held_back_mid_read_leaves_no_connection_to_the_gateway(prism, gateway, tmp_path):
    """The read stops at the first unsettled row while the reader is chunks ahead of it, with
    more chunks to come: its thread stops and its connection closes with the sync, not when
    the process ends (a run over many hours would hold one per hour). Parquet reads 5,000 rows
    a chunk: the read stops in the third of ten."""
    prism.configure(archive(tmp_path, format="parquet"), source={"settle_seconds": 3600})
    unsettled = gateway_rows(H, 40_000, start=10_000, ingested_at=datetime.now(UTC))
    gateway.insert_rows([gateway_rows(H, 10_000), unsettled])

    held = prism.sync("archive", KEY)

    assert held.metadata["records"] == 10_000 and held.metadata["held_back_unsettled_rows"]
    readers = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = :reader"
    )
    with gateway.engine.connect() as conn:  # a closed connection's backend exits on its own time
        wait_for(
            "the reader's connections closed after the sync",
            lambda: conn.execute(readers, {"reader": READER_APPLICATION}).scalar(),
            timeout=10,
            interval=0.05,
            until=lambda left: left == 0,
        )


@pytest.mark.parametrize("crash_in", ["upload", "ledger"])
def test_crash_mid_partition_then_rerun_leaves_every_row_in_one_file(
    prism, gateway, tmp_path, monkeypatch, crash_in
):
    """Raise after k of n batches — before the file is written, or after it is written but
    before the ledger records it — then rerun."""
    prism.configure(archive(tmp_path, batch_rows=100))
    gateway.insert_rows([gateway_rows(H, 550)])
    target, method = (LocalSink, "put") if crash_in == "upload" else (Ledger, "finish_batch")
    real, calls = getattr(target, method), []

    def crash_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(target, method, crash_on_third)
    crashed = prism.sync("archive", KEY, raise_on_error=False)
    assert not crashed.success and "simulated crash" in crashed.error
    monkeypatch.setattr(target, method, real)

    rerun = prism.sync("archive", KEY)

    files = read_files(tmp_path / "bucket")
    assert set(ids_in(files).values()) == {1} and sum(ids_in(files).values()) == 550
    assert len(files) == 6
    assert not list((tmp_path / "bucket").rglob("*.tmp"))
    assert rerun.metadata["cursor_after"] == 550


def skipped_as_busy(run) -> str:
    """Why a run skipped its partition: another run held it (an observation, no failure)."""
    [observed] = run.result.get_asset_observation_events()
    metadata = observed.asset_observation_data.asset_observation.metadata
    assert metadata["skipped"].value == "busy"
    return metadata["reason"].value


def test_a_partition_is_delivered_by_one_run_at_a_time(prism, gateway, tmp_path, monkeypatch):
    """A run started while another delivers the same partition (a CLI sync beside the
    schedule's run, say) skips it and sends nothing, without failing; the partition is not in
    error."""
    prism.configure(archive(tmp_path, batch_rows=100))
    gateway.insert_rows([gateway_rows(H, 250)])
    first_put, go_on = threading.Event(), threading.Event()
    real_put = LocalSink.put

    def put_then_stall(self, *args, **kwargs):
        first_put.set()
        go_on.wait(timeout=60)
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(LocalSink, "put", put_then_stall)
    integration = prism.config.integrations[0]
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(
            deliver_partition,
            integration,
            build_sink(integration),
            gateway,
            Ledger(prism.ledger.url),
            H,
            settle_seconds=0,
            who="the other run",
        )
        assert first_put.wait(timeout=60)
        busy = prism.sync("archive", KEY, raise_on_error=False)
        go_on.set()
        assert other.result(timeout=60).records == 250

    assert busy.success and busy.metadata == {}  # nothing delivered, nothing materialized
    reason = skipped_as_busy(busy)
    assert "is being delivered by the other run" in reason and "sync it again then" in reason
    assert prism.ledger.partition_state("archive", H).last_error is None
    again = prism.sync("archive", KEY)
    assert again.metadata["records"] == 0
    assert sum(ids_in(read_files(tmp_path / "bucket")).values()) == 250


def test_a_dead_runs_partition_is_free_once_its_lease_runs_out(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path))
    gateway.insert_rows([gateway_rows(H, 30)])
    now = datetime.now(UTC)
    with prism.ledger.engine.begin() as conn:
        conn.execute(
            insert(leases).values(
                integration="archive",
                hour=H,
                holder="Dagster run 1234 (killed)",
                acquired_at=now - timedelta(minutes=5),
                expires_at=now + timedelta(seconds=60),
            )
        )
    busy = prism.sync("archive", KEY, raise_on_error=False)
    assert busy.success and "Dagster run 1234 (killed)" in skipped_as_busy(busy)
    assert not (tmp_path / "bucket").exists()

    with prism.ledger.engine.begin() as conn:
        conn.execute(update(leases).values(expires_at=now - timedelta(seconds=1)))
    assert prism.sync("archive", KEY).metadata["records"] == 30
    with prism.ledger.engine.connect() as conn:
        assert conn.execute(select(leases)).all() == []  # released when the run ended


def test_a_run_that_lost_its_lease_stops_without_moving_the_cursor(
    prism, gateway, tmp_path, monkeypatch
):
    """A run that stalled past its lease while another took the partition over must not
    record the batch it had in flight: the new holder redoes it under the same name."""
    prism.configure(archive(tmp_path, batch_rows=100))
    gateway.insert_rows([gateway_rows(H, 250)])
    real_put, puts = LocalSink.put, []

    def taken_over_during_second_put(self, *args, **kwargs):
        puts.append(1)
        if len(puts) == 2:
            with prism.ledger.engine.begin() as conn:
                conn.execute(update(leases).values(holder="the run that took over"))
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(LocalSink, "put", taken_over_during_second_put)
    stopped = prism.sync("archive", KEY, raise_on_error=False)
    assert not stopped.success and "taken over by another run" in stopped.error
    assert prism.ledger.cursor("archive", H) == 100  # the first batch only

    monkeypatch.setattr(LocalSink, "put", real_put)
    with prism.ledger.engine.begin() as conn:
        conn.execute(delete(leases))  # the run that took over ended
    assert prism.sync("archive", KEY).metadata["records"] == 150
    files = read_files(tmp_path / "bucket")
    assert len(files) == 3 and set(ids_in(files).values()) == {1}


def test_full_redelivery_rewrites_the_same_files(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path, batch_rows=100))
    gateway.insert_rows([gateway_rows(H, 250)])
    prism.sync("archive", KEY)
    before = read_files(tmp_path / "bucket")

    assert prism.sync("archive", KEY).metadata["records"] == 0
    again = prism.sync("archive", KEY, full=True)

    assert again.metadata["records"] == 250 and again.metadata["redone_batches"] == 3
    assert read_files(tmp_path / "bucket") == before


def test_malformed_row_goes_to_rejects_and_its_neighbours_are_delivered(prism, gateway, tmp_path):
    prism.configure(archive(tmp_path))
    rows = gateway_rows(H, 20)
    bad = gateway_rows(H, 1, start=20, guardrail_results="{not json")
    gateway.insert_rows([rows, bad])

    run = prism.sync("archive", KEY)

    assert run.metadata["records"] == 20 and run.metadata["rejects"] == 1
    assert run.metadata["reject_reasons"] == {"malformed row": 1}
    [reject] = prism.ledger.rejects("archive")
    assert reject["request_id"] == bad[0][0] and "guardrail_results is not JSON" in reject["reason"]
    assert sum(ids_in(read_files(tmp_path / "bucket")).values()) == 20


def test_backfill_of_48_hours_delivers_each_hour_once(prism, gateway, tmp_path):
    start = datetime(2026, 11, 20, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(48)]
    gateway.insert_rows([gateway_rows(h, 5 + i % 7) for i, h in enumerate(hours)])
    prism.configure(archive(tmp_path))

    runs = prism.backfill("archive", [h.strftime("%Y-%m-%d-%H:%M") for h in hours])

    assert all(r.success for r in runs.values()) and len(runs) == 48
    files = read_files(tmp_path / "bucket")
    for i, hour in enumerate(hours):
        in_hour = [
            r for k, rs in files.items() if f"{hour:%Y/%m/%d}/hour={hour:%H}/" in k for r in rs
        ]
        assert sorted(r["request_id"] for r in in_hour) == [
            row[0] for row in gateway_rows(hour, 5 + i % 7)
        ]
        assert runs[hour.strftime("%Y-%m-%d-%H:%M")].metadata["records"] == 5 + i % 7
    # A second backfill delivers nothing new.
    again = prism.backfill("archive", [h.strftime("%Y-%m-%d-%H:%M") for h in hours])
    assert sum(r.metadata["records"] for r in again.values()) == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_backfill_run_reads_each_hour_on_a_connection_of_its_own_and_the_type_catalog_once(
    prism, gateway, tmp_path, backend
):
    """ADBC's database handle is made once per run: one per read opened a second session for
    every hour, to read the server's type catalog. Each read still has its own connection (ADBC
    1.8 aborts the process on a query sent over a session the server ended)."""
    start = datetime(2026, 11, 20, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(12)]
    gateway.insert_rows([gateway_rows(h, 5) for h in hours])
    prism.configure(archive(tmp_path))

    def sessions() -> int:  # sessions opened on the gateway's database so far
        with gateway.engine.connect() as conn:
            statement = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            return conn.execute(text(statement)).scalar_one()

    before = sessions()
    runs = prism.backfill("archive", [h.strftime("%Y-%m-%d-%H:%M") for h in hours])

    assert sum(r.metadata["records"] for r in runs.values()) == 5 * len(hours)
    # A reader's session per hour, the catalog's once, the pooled ones of the ledger and checks.
    assert len(hours) <= sessions() - before < 2 * len(hours)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_schedule_syncs_the_current_hour_and_the_previous_during_grace(prism, tmp_path, backend):
    prism.configure(
        archive(tmp_path, sync_interval_minutes=1),
        archive(tmp_path, name="paused_one", paused=True),
    )
    schedule = prism.defs.resolve_schedule_def("archive_schedule")

    def keys_at(moment: datetime) -> list[str]:
        context = build_schedule_context(
            instance=prism.instance,
            scheduled_execution_time=moment,
            repository_def=prism.defs.get_repository_def(),
        )
        return sorted(r.partition_key for r in schedule.evaluate_tick(context).run_requests)

    assert schedule.cron_schedule == "*/1 * * * *"
    assert keys_at(datetime(2026, 11, 23, 0, 2, tzinfo=UTC)) == [
        "2026-11-22-23:00",
        "2026-11-23-00:00",
    ]
    assert keys_at(datetime(2026, 11, 23, 0, 30, tzinfo=UTC)) == ["2026-11-23-00:00"]
    assert keys_at(datetime(2026, 11, 23, 13, 59, tzinfo=UTC)) == ["2026-11-23-13:00"]
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert (
        prism.defs.resolve_schedule_def("paused_one_schedule").default_status
        == DefaultScheduleStatus.STOPPED
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_integrations_file_names_each_integration_and_field(tmp_path, backend):
    path = tmp_path / "integrations.yaml"
    path.write_text(
        """
integrations:
  - name: good
    type: local
  - name: s3_archive
    type: s3
    region: us-east-1
    secret_access_key: AKIAVERYSECRETVALUE123
    sync_interval_minutes: 7
  - name: Bad-Name
    type: local
  - name: queue
    type: kafka
  - name: good
    type: local
"""
    )
    with pytest.raises(IntegrationsFileError) as raised:
        load_integrations(path)
    message = str(raised.value)
    assert "integration 'queue': type 'kafka' is not one of local, s3" in message
    path.write_text(path.read_text().replace("type: kafka", "type: local"))
    with pytest.raises(IntegrationsFileError) as raised:
        load_integrations(path)
    message = str(raised.value)
    assert "integration 's3_archive': bucket: Field required" in message
    assert (
        "integration 's3_archive': secret_access_key: a secret is never written inline" in message
    )
    assert (
        "integration 's3_archive': sync_interval_minutes: must be one of 1, 2, 5, 10, 15, 30, 60"
        in message
    )
    assert "integration 'Bad-Name': name:" in message
    assert "AKIAVERYSECRETVALUE123" not in message
