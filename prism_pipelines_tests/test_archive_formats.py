"""The archive's formats, layouts and manifests (DESIGN.md, "Archive formats, layouts and
manifests"), through real syncs, read back as consumers read them: DuckDB over the local folder
and over S3 (moto) with hive partitioning, pyarrow for the Parquet schema, each provider's
official client for crash-and-redo, and the manifest checked against the files themselves.
The manifest's clock is set by the test (the hours are fixed past hours)."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import build_sensor_context
from sqlalchemy import select

from prism_pipelines import manifest as manifest_module
from prism_pipelines.dagster_defs import sensors as sensors_module
from prism_pipelines.demo import generate_rows
from prism_pipelines.errors import IntegrationsFileError
from prism_pipelines.integrations import parse_integrations
from prism_pipelines.records import format_timestamp
from prism_pipelines.sinks.storage.formats import JSONL, PARQUET
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.storage_helpers import (
    HISTORY,
    KEY,
    NAME,
    BotoFileSystem,
    H,
    S3Store,
    Store,
    partition_key,
)
from prism_pipelines_tests.test_storage import (
    HEAP_BUDGET,
    LARGE_ROWS,
    MB,
    insert_large_partition,
    measure_memory,
    store,  # noqa: F401 - the fixture, reused
)

GUARDRAILS = '[{"name": "pii", "action": "redact", "score": 0.91}]'
#: guardrail results as a gateway may space and spell them (jsonb's text, a hand-written JSON)
SPACED_GUARDRAILS = '[ {"name" : "pii",  "score": 1E2, "x": [1.50, "\\u00e9"]} ]'
#: the Parquet schema the contract fixes, written out here independently of the code's
CONTRACT_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("model", pa.string()),
        ("provider", pa.string()),
        ("latency_ms", pa.int64()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost", pa.float64()),
        ("status_code", pa.int64()),
        ("is_error", pa.bool_()),
        ("cache_hit", pa.bool_()),
        ("guardrail_triggered", pa.bool_()),
        ("routing_strategy", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("event_type", pa.string()),
        ("trace_id", pa.string()),
        ("session_id", pa.string()),
        ("user_id", pa.string()),
        ("model_requested", pa.string()),
        ("cache_status", pa.string()),
        ("fallback_used", pa.bool_()),
        ("is_stream", pa.bool_()),
        ("error_message", pa.string()),
        ("guardrail_results", pa.string()),
    ]
)
EXTENSION = {"jsonl": JSONL.extension, "parquet": PARQUET.extension}
COLUMN = {name: i for i, name in enumerate(INSERT_COLUMNS)}
#: the most of Arrow's memory pool a Parquet export may take, whatever the file's size: the
#: chunk being written, the chunks read ahead (``source.READ_AHEAD``), the compressed row group
ARROW_BUDGET = 20 * MB


def local(tmp_path: Path, **settings) -> dict:
    return {
        "name": NAME,
        "type": "local",
        "path": str(tmp_path / "bucket"),
        "prefix": "prism",
        "history": HISTORY,
        **settings,
    }


def read_records(key: str, raw: bytes) -> list[dict]:
    """A data file's records: Parquet through pyarrow, gzip JSONL through orjson."""
    if key.endswith(PARQUET.extension):
        return pq.read_table(io.BytesIO(raw)).to_pylist()
    return [orjson.loads(line) for line in gzip.decompress(raw).splitlines()]


# -- JSON lines: written from columns, the bytes of a record per row ---------------------------


def _records_row_by_row(gateway) -> list[bytes]:
    """The hour's records the way the export wrote them before it read Arrow (and the way a
    queue message is still built): each row read as Python values, a dict per row, orjson per
    record. Written here independently of the code: the oracle."""
    c = gateway.table.c
    fields = [
        "request_id", "model", "provider", "latency_ms", "input_tokens", "output_tokens",
        "total_tokens", "cost", "status_code", "is_error", "cache_hit", "guardrail_triggered",
        "routing_strategy", "timestamp", "event_type", "trace_id", "session_id", "user_id",
        "model_requested", "cache_status", "fallback_used", "is_stream", "error_message",
        "guardrail_results",
    ]  # fmt: skip
    with gateway.engine.connect() as conn:
        rows = conn.execute(
            select(*(c[f] for f in fields))
            .where(c.timestamp >= H, c.timestamp < H + timedelta(hours=1))
            .order_by(c.id)
        ).all()
    lines = []
    for row in rows:
        record = dict(zip(fields, row, strict=True))
        record["timestamp"] = format_timestamp(record["timestamp"])
        if record["cost"] is not None and not math.isfinite(record["cost"]):
            record["cost"] = None
        if record["guardrail_results"] is not None:
            record["guardrail_results"] = orjson.loads(record["guardrail_results"])
        lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    return lines


def test_jsonl_written_from_columns_is_byte_for_byte_the_records_of_the_row_path(
    prism, gateway, tmp_path
):
    """A demo hour (guardrail results spaced as the gateway writes them, errors, streams) and
    rows with every kind of text JSON escapes, non-ASCII text, costs of every magnitude and
    none, microsecond times: the archive's JSON lines are the row path's bytes, line for line."""
    gateway.insert_rows(generate_rows(6_000, start=H, end=H + timedelta(hours=1), seed=11))
    nasty = [
        'quote " backslash \\ slash / tab \t newline \n soh \x01 bell \x07 del \x7f',
        "unicode é 漢字 🦜 \u2028 \u2029 \ufeff",
        "",
    ]
    costs = [0.0, -0.0, 1.0, 1e-05, 1e-7, 0.1 + 0.2, 123456789.125, 1e16, 1e22, 5e-324, None]
    rows = gateway_rows(H, len(costs), start=90_000)
    for i, row in enumerate(rows):
        row = list(row)
        row[COLUMN["error_message"]] = nasty[i % len(nasty)]
        row[COLUMN["user_id"]] = nasty[(i + 1) % len(nasty)]
        row[COLUMN["cost"]] = costs[i]
        row[COLUMN["timestamp"]] += timedelta(microseconds=999_999 - i)
        row[COLUMN["guardrail_results"]] = SPACED_GUARDRAILS
        rows[i] = tuple(row)
    gateway.insert_rows([rows])
    prism.configure(local(tmp_path))

    run = prism.sync(NAME, KEY)

    [path] = (tmp_path / "bucket").rglob("*.jsonl.gz")
    written = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    expected = _records_row_by_row(gateway)
    assert run.metadata["records"] == len(expected) == 6_000 + len(costs)
    assert written == expected


# -- Parquet: the schema ----------------------------------------------------------------------


def test_parquet_file_has_the_contracts_columns_and_types_and_a_narrowed_integration_fewer(
    prism, gateway, tmp_path
):
    rows = gateway_rows(H, 40) + gateway_rows(
        H, 5, start=40, guardrail_triggered=True, guardrail_results=GUARDRAILS
    )
    gateway.insert_rows([rows])
    narrowed = ["request_id", "cost", "timestamp", "guardrail_results"]
    prism.configure(
        local(tmp_path, format="parquet"),
        local(tmp_path, name="narrow", prefix="narrow", format="parquet", fields=narrowed),
    )

    run = prism.sync(NAME, KEY)
    prism.sync("narrow", KEY)

    [path] = (tmp_path / "bucket/prism").rglob("*.parquet")
    assert re.fullmatch(
        r"prism/logs/2026/11/22/hour=14/batch_[0-9a-f]{12}\.parquet",
        str(path.relative_to(tmp_path / "bucket")),
    )
    assert run.metadata["records"] == 45 and run.metadata["bytes"] == path.stat().st_size
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == CONTRACT_SCHEMA
    assert {parquet.metadata.row_group(0).column(i).compression for i in range(24)} == {"ZSTD"}
    table = parquet.read().to_pylist()
    assert [r["request_id"] for r in table] == [row[COLUMN["request_id"]] for row in rows]
    for record, row in zip(table, rows, strict=True):
        assert record["timestamp"] == row[COLUMN["timestamp"]]
        assert record["cost"] == row[COLUMN["cost"]]
        assert record["total_tokens"] == row[COLUMN["total_tokens"]]
        assert record["is_stream"] is row[COLUMN["is_stream"]]
    assert orjson.loads(table[-1]["guardrail_results"]) == orjson.loads(GUARDRAILS)
    assert table[0]["guardrail_results"] is None

    [narrow] = (tmp_path / "bucket/narrow").rglob("*.parquet")
    assert pq.read_schema(narrow) == pa.schema([CONTRACT_SCHEMA.field(f) for f in narrowed])


def test_parquet_export_of_a_large_hour_keeps_memory_bounded(prism, gateway, tmp_path):
    """One batch of ``LARGE_ROWS`` padded rows: a row group per chunk goes to the staging file
    as it is made, so neither the Python heap nor Arrow's memory pool holds the file."""
    insert_large_partition(gateway)
    prism.configure(local(tmp_path, format="parquet", batch_rows=LARGE_ROWS))
    pool = pa.default_memory_pool()
    pool.release_unused()

    run, memory = measure_memory(lambda: prism.sync(NAME, KEY))

    arrow_peak = pool.max_memory()
    [path] = (tmp_path / "bucket").rglob("*.parquet")
    numbers = {
        "file_mb": round(path.stat().st_size / MB, 1),
        "heap_peak_mb": round(memory.heap_peak / MB, 1),
        "arrow_peak_mb": round(arrow_peak / MB, 1),
        "sync_seconds": round(memory.seconds, 1),
    }
    print(f"\nlarge Parquet hour: {numbers}")
    assert run.metadata["records"] == LARGE_ROWS and run.metadata["files"] == 1
    assert pq.ParquetFile(path).metadata.num_row_groups == LARGE_ROWS // 5_000
    assert memory.heap_peak < HEAP_BUDGET, numbers
    # Arrow holds a few chunks' columns and a compressed row group: a part of the file.
    assert arrow_peak < ARROW_BUDGET < path.stat().st_size, numbers


# -- DuckDB over the hive layout, both formats, local and S3 --------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("format_", ["jsonl", "parquet"])
def test_duckdb_reads_the_hive_layout_and_prunes_by_date_and_hour(
    prism, gateway, tmp_path, request, monkeypatch, where, format_
):
    """Two hours across midnight, several files each: DuckDB's counts and sums per hour equal
    the source's, and ``WHERE date = … AND hour = …`` returns exactly that hour."""
    hours = [datetime(2026, 11, 21, 23, tzinfo=UTC), datetime(2026, 11, 22, 0, tzinfo=UTC)]
    counts = [30, 45]
    source = {h: gateway_rows(h, n) for h, n in zip(hours, counts, strict=True)}
    gateway.insert_rows(list(source.values()))
    settings = {"format": format_, "layout": "hive", "batch_rows": 20}
    con = duckdb.connect()
    if where == "s3":
        s3 = S3Store(request.getfixturevalue("moto_server"), monkeypatch)
        prism.configure(s3.integration(prefix="prism", **settings))
        con.register_filesystem(BotoFileSystem(s3.client))
        root = f"s3://{s3.bucket}/prism/logs"
    else:
        prism.configure(local(tmp_path, **settings))
        root = f"{tmp_path}/bucket/prism/logs"
    prism.backfill(NAME, [partition_key(h) for h in hours])
    reader = "read_parquet" if format_ == "parquet" else "read_json"
    files = f"{reader}('{root}/*/*/*{EXTENSION[format_]}', hive_partitioning = true)"

    per_hour = con.sql(
        f"""SELECT date::VARCHAR, hour::INTEGER, count(*), count(DISTINCT request_id),
                   sum(total_tokens), round(sum(cost), 6)
            FROM {files} GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    one_hour = con.sql(
        f"SELECT request_id FROM {files} WHERE date = DATE '2026-11-22' AND hour = 0 ORDER BY 1"
    ).fetchall()

    assert per_hour == [
        (
            f"{h:%Y-%m-%d}",
            h.hour,
            len(rows),
            len(rows),
            sum(r[COLUMN["total_tokens"]] for r in rows),
            round(sum(r[COLUMN["cost"]] for r in rows), 6),
        )
        for h, rows in source.items()
    ]
    assert [r[0] for r in one_hour] == sorted(r[COLUMN["request_id"]] for r in source[hours[1]])


# -- exactly once across a crash, per provider and format ------------------------------------


@pytest.mark.parametrize("format_", ["jsonl", "parquet"])
def test_crash_after_an_upload_then_rerun_leaves_each_record_in_one_file(
    prism,
    gateway,
    store: Store,  # noqa: F811 - the fixture imported above
    monkeypatch,
    format_,
):
    """The third of four uploads is stored and the run crashes before the ledger records it;
    the rerun rewrites it under the same name, and every record is in exactly one file."""
    prism.configure(store.integration(batch_rows=100, format=format_))
    rows = gateway_rows(H, 350)
    gateway.insert_rows([rows])
    real_put, uploads = store.sink_class.put, []

    def put(self, key, *args):
        uploads.append(key)
        published = real_put(self, key, *args)
        if len(uploads) == 3:
            raise RuntimeError("simulated crash")
        return published

    monkeypatch.setattr(store.sink_class, "put", put)
    crashed = prism.sync(NAME, KEY, raise_on_error=False)
    assert not crashed.success and "simulated crash" in crashed.error
    monkeypatch.setattr(store.sink_class, "put", real_put)

    rerun = prism.sync(NAME, KEY)

    keys = store.object_keys()
    assert len(keys) == 4 and uploads[2] in keys
    name = re.compile(
        rf"logs/2026/11/22/hour=14/batch_[0-9a-f]{{12}}{re.escape(EXTENSION[format_])}"
    )
    assert all(name.fullmatch(k) for k in keys), keys
    ids = Counter(r["request_id"] for k in keys for r in read_records(k, store.read(k)))
    assert sorted(ids) == [r[COLUMN["request_id"]] for r in rows] and set(ids.values()) == {1}
    assert rerun.metadata["records"] == 150
    expected = (
        (PARQUET.content_type, None) if format_ == "parquet" else (JSONL.content_type, "gzip")
    )
    assert {store.content_headers(k) for k in keys} == {expected}


# -- the manifest ------------------------------------------------------------------------------


def check_manifest(folder: Path, records: int, rejects: int, written_at: datetime) -> dict:
    """The manifest lists exactly the folder's data files, each with the records, size and
    sha256 of the file as read back, and the hour's totals."""
    manifest = orjson.loads((folder / "_manifest.json").read_bytes())
    data_files = sorted(p.name for p in folder.iterdir() if p.name.startswith("batch_"))
    assert sorted(f["name"] for f in manifest["files"]) == data_files
    for entry in manifest["files"]:
        raw = (folder / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
        assert entry["bytes"] == len(raw)
        assert entry["records"] == len(read_records(entry["name"], raw))
    assert manifest["partition"] == KEY
    assert manifest["records"] == records == sum(f["records"] for f in manifest["files"])
    assert manifest["rejects"] == rejects
    assert manifest["written_at"] == format_timestamp(written_at)
    assert list(manifest) == [
        "partition",
        "records",
        "rejects",
        "first_event_time",
        "last_event_time",
        "written_at",
        "files",
    ]
    return manifest


@pytest.mark.parametrize("format_", ["jsonl", "parquet"])
def test_manifest_appears_once_the_hour_is_complete_and_is_rewritten_after_late_rows(
    prism, gateway, tmp_path, monkeypatch, format_
):
    clock = {"now": H + timedelta(minutes=30)}
    monkeypatch.setattr(manifest_module, "utcnow", lambda: clock["now"])
    monkeypatch.setattr(sensors_module, "utcnow", lambda: clock["now"])
    monkeypatch.setenv("PRISM_LATE_DATA_LOOKBACK_HOURS", "6")
    prism.configure(local(tmp_path, format=format_, layout="hive", manifest=True, batch_rows=50))
    rows = gateway_rows(H, 120)
    bad = gateway_rows(H + timedelta(minutes=59), 1, start=120, guardrail_results="not json")
    gateway.insert_rows([rows, bad])
    folder = tmp_path / "bucket/prism/logs/date=2026-11-22/hour=14"

    prism.sync(NAME, KEY)  # the hour is open
    assert (folder / "_manifest.json").exists() is False
    clock["now"] = H + timedelta(minutes=70)  # closed, within its 15 minutes of grace
    prism.sync(NAME, KEY)
    assert not (folder / "_manifest.json").exists()
    assert not (tmp_path / "bucket/prism/logs/date=2026-11-22/hour=15").exists()  # no traffic

    # Past the grace period no schedule syncs the hour: the late-data sensor asks for it.
    clock["now"] = H + timedelta(minutes=76)
    repository = prism.defs.get_repository_def()
    tick = repository.get_sensor_def(f"{NAME}_late_data").evaluate_tick(
        build_sensor_context(instance=prism.instance, repository_def=repository)
    )
    assert [(r.partition_key, r.tags["prism/trigger"]) for r in tick.run_requests] == [
        (KEY, "manifest")
    ]
    written = prism.sync(NAME, KEY)
    first = check_manifest(folder, records=120, rejects=1, written_at=clock["now"])
    assert written.metadata["manifest"].endswith("date=2026-11-22/hour=14/_manifest.json")
    assert len(first["files"]) == 3
    times = [r[COLUMN["timestamp"]] for r in rows + bad]
    assert first["first_event_time"] == format_timestamp(min(times))
    assert first["last_event_time"] == format_timestamp(max(times))

    clock["now"] = H + timedelta(hours=2)
    assert "manifest" not in prism.sync(NAME, KEY).metadata  # nothing changed, not rewritten
    assert orjson.loads((folder / "_manifest.json").read_bytes()) == first

    late = gateway_rows(H, 30, start=500)
    gateway.insert_rows([late])
    clock["now"] = H + timedelta(hours=3)
    prism.sync(NAME, KEY)
    second = check_manifest(folder, records=150, rejects=1, written_at=clock["now"])
    assert len(second["files"]) == 4


def test_an_hour_with_no_traffic_gets_an_empty_manifest_once_complete(
    prism, gateway, tmp_path, monkeypatch
):
    """A consumer that waits for ``_manifest.json`` does not wait forever for a quiet hour."""
    clock = {"now": H + timedelta(minutes=30)}
    monkeypatch.setattr(manifest_module, "utcnow", lambda: clock["now"])
    monkeypatch.setattr(sensors_module, "utcnow", lambda: clock["now"])
    monkeypatch.setenv("PRISM_LATE_DATA_LOOKBACK_HOURS", "6")
    prism.configure(local(tmp_path, layout="hive", manifest=True))
    folder = tmp_path / "bucket/prism/logs/date=2026-11-22/hour=14"
    repository = prism.defs.get_repository_def()

    def sensor_requests() -> list[tuple[str, str]]:
        tick = repository.get_sensor_def(f"{NAME}_late_data").evaluate_tick(
            build_sensor_context(instance=prism.instance, repository_def=repository)
        )
        return [(r.partition_key, r.tags["prism/trigger"]) for r in tick.run_requests]

    prism.sync(NAME, KEY)  # the schedule's sync of the open hour, which has no rows
    assert not folder.exists()
    clock["now"] = H + timedelta(minutes=76)  # closed and past its grace period
    assert sensor_requests() == [(KEY, "manifest")]
    written = prism.sync(NAME, KEY)

    assert written.metadata["manifest"].endswith("date=2026-11-22/hour=14/_manifest.json")
    assert orjson.loads((folder / "_manifest.json").read_bytes()) == {
        "partition": KEY,
        "records": 0,
        "rejects": 0,
        "first_event_time": None,
        "last_event_time": None,
        "written_at": format_timestamp(clock["now"]),
        "files": [],
    }
    assert sorted(p.name for p in folder.iterdir()) == ["_manifest.json"]
    clock["now"] = H + timedelta(minutes=90)
    assert sensor_requests() == []  # written: not requested again


def test_manifest_on_each_cloud_is_rewritten_in_place_after_late_rows(
    prism,
    gateway,
    store: Store,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    """On S3, Azure Blob and GCS the rewrite replaces the manifest it found (a conditional
    write, like the data files'), and each version lists exactly the folder's files."""
    monkeypatch.setattr(manifest_module, "utcnow", lambda: H + timedelta(hours=2))
    prism.configure(store.integration(format="parquet", layout="hive", manifest=True))
    folder = "logs/date=2026-11-22/hour=14/"

    def manifest_and_files() -> tuple[dict, dict[str, bytes]]:
        keys = store.object_keys()
        files = {k.rpartition("/")[2]: store.read(k) for k in keys if "/batch_" in k}
        assert f"{folder}_manifest.json" in keys and all(k.startswith(folder) for k in keys)
        return orjson.loads(store.read(f"{folder}_manifest.json")), files

    for round_, count in enumerate((40, 25)):
        gateway.insert_rows([gateway_rows(H, count, start=round_ * 100)])
        prism.sync(NAME, KEY)
        manifest, files = manifest_and_files()
        assert sorted(f["name"] for f in manifest["files"]) == sorted(files)
        assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
            name: hashlib.sha256(raw).hexdigest() for name, raw in files.items()
        }
        assert manifest["records"] == (40 if round_ == 0 else 65)
    assert store.content_headers(f"{folder}_manifest.json")[0] == "application/json"


def test_format_layout_and_manifest_are_checked_and_only_storage_types_take_them():
    entry = {"name": "lake", "type": "s3", "bucket": "b", "region": "us-east-1"}
    queue = {"name": "events", "type": "sqs", "queue_url": "https://q", "region": "us-east-1"}
    wrong = {"format": "csv", "layout": "flat", "manifest": "sometimes"}
    with pytest.raises(IntegrationsFileError) as storage_error:
        parse_integrations({"integrations": [{**entry, **wrong}]}, "integrations.yaml")
    with pytest.raises(IntegrationsFileError) as queue_error:
        parse_integrations({"integrations": [{**queue, "format": "parquet"}]}, "integrations.yaml")

    assert storage_error.value.problems == [
        "integration 'lake': format: must be jsonl or parquet (gzip JSONL, the default, or "
        "Parquet)",
        "integration 'lake': layout: must be spec or hive (logs/YYYY/MM/DD/hour=HH, the "
        "default, or logs/date=…/hour=HH)",
        "integration 'lake': manifest: must be true or false",
    ]
    assert queue_error.value.problems == [
        "integration 'events': format: only storage types (local, s3, azure_blob, gcs) take "
        "format; remove it"
    ]
    parsed = parse_integrations({"integrations": [entry]}, "integrations.yaml").integrations[0]
    assert (parsed.format, parsed.layout, parsed.manifest) == ("jsonl", "spec", False)
