"""The export benchmark: our archive export beside the floor, dlt and the naive way, on one table.

Run by hand, never as a test: ``.venv/bin/python bench/export_bench.py`` (about an hour on 2
cores, most of it dlt's and pandas' runs; ``--only export --rows 100000 --rounds 1`` is a quick
look). It prints one table and the targets met or missed; ``bench/README.md`` holds the latest
run and how to read it.

One PostgreSQL table of N gateway rows (``prism_pipelines.demo`` traffic, ~3 hours of a busy
gateway; database ``prism_bench`` on 127.0.0.1:5432, reused when it already holds N rows). Each
candidate exports one hour, and all rows, to gzip JSONL in a fresh local folder, in its own
subprocess, so its peak RSS (``VmHWM``) and CPU time (``wait4``) are its own. Candidates
alternate, A B C A B C …, and the table shows medians; every output is read back (line count,
each line valid JSON) before its time counts.

- ``ours``: ``sync.deliver_partition`` with the local archive (what a Dagster run does per hour)
- ``ours-parquet``: the same with ``format: parquet`` (zstd Parquet, a row group per chunk; its
  output is read back by row count, each file's schema checked)
- ``ours+dagster``: the same through Dagster: ``<name>_sync`` executed in process, one run for
  the hour (a ranged run for all rows), on a temporary SQLite-backed instance
- ``floor``: ``psql -c "COPY (SELECT row_to_json(t) …) TO STDOUT" | gzip -N``, no Python at
  all, the records shaped as ours, at the gzip level whose output size matches ours
- ``dlt-sqlalchemy`` / ``dlt-pyarrow``: dlt's ``sql_table`` → ``filesystem``, JSONL (dlt
  gzips it by default), each backend, in ``bench/.venv-dlt`` (created here; dlt is not ours)
- ``dlt-pyarrow-parquet``: dlt's pyarrow backend writing Parquet, its fastest path (the Arrow
  tables it reads go to the files as they are), beside ``ours-parquet``
- ``pandas``: ``read_sql(chunksize=…)`` + ``to_json(lines=True, compression="gzip")``

Other parts: ``memory`` (peak RSS of ours on N rows and on N/10 rows), ``scale`` (a day of
10M rows: ours on one hour and on the 24 hours, and the query plans of what the late-data sensor
and ``prism-pipelines status`` read from the gateway table), ``storage`` (the S3
stand-in, moto, beside the local folder), ``senders`` (SQS, Pub/Sub, Datadog against their
stand-ins beside one request per message; OpenTelemetry traces to a loopback OTLP receiver that
discards, beside the same spans through the OpenTelemetry SDK), ``backfill`` (720 hourly
partitions of small traffic through Dagster ranged runs, beside the same partitions through the
sync path), ``read`` (the gateway read alone: one hour into Arrow record batches of 5,000 rows,
nothing written, by the project's reader, ADBC's driver, beside psycopg 3's binary ``COPY`` and
psycopg2's named cursor, all three sending the reader's own SQL).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
SOURCE_DB = "prism_bench"
#: the ledger's database; PRISM_BENCH_STATE_DB names another (benchmarks of branches whose
#: migrations differ cannot share one)
STATE_DB = os.environ.get("PRISM_BENCH_STATE_DB", "prism_bench_state")
SOURCE_URL = f"{PG_SERVER}/{SOURCE_DB}"
STATE_URL = f"{PG_SERVER}/{STATE_DB}"
BACKFILL_TABLE = "prism_request_logs_backfill"
#: the scale part: a day of a gateway at ~115 requests/s (10M rows), one demo hour of 1/24 of
#: them copied to each hour of the day (request ids suffixed, event and ingest times shifted)
SCALE_TABLE = "prism_request_logs_scale"
SCALE_ROWS = 10_000_000
SCALE_HOURS = 24
SENDERS_TABLE = "prism_request_logs_senders"
#: each sender and its peer: one request per message (``single``), or the OpenTelemetry SDK
#: (``sdk``: TracerProvider + BatchSpanProcessor + OTLPSpanExporter, explicit times)
SENDER_PEERS = {"sqs": "single", "pubsub": "single", "datadog": "single", "otlp": "sdk"}
SENDER_KINDS = tuple(SENDER_PEERS)
#: the one-request-per-message senders run this many (their rate is steady; a full run of
#: theirs would take minutes)
SINGLE_MESSAGES = 1_000
#: a Tuesday, 14:00-17:00 UTC: the busiest hours of demo traffic's day
START = datetime(2026, 3, 31, 14, tzinfo=UTC)
HOURS = 3
ONE_HOUR = START + timedelta(hours=1)
BACKFILL_START = datetime(2026, 1, 1, tzinfo=UTC)
BACKFILL_HOURS = 720
BACKFILL_ROWS_PER_HOUR = 20
SEED = 7
INTEGRATION = "bench"

DLT_VENV = BENCH / ".venv-dlt"
#: the bench's own venv: dlt, and psycopg 3 for the read part (neither is the project's)
DLT_REQUIREMENTS = [
    "dlt==1.31.0",
    "sqlalchemy>=2.0.36,<2.2",
    "psycopg2-binary",
    "pyarrow",
    "psycopg[binary]==3.3.9",
]
EXPORT_CANDIDATES = [
    "ours",
    "ours-parquet",
    "ours+dagster",
    "floor",
    "dlt-sqlalchemy",
    "dlt-pyarrow",
    "dlt-pyarrow-parquet",
    "pandas",
]
#: the read part: one hour into Arrow record batches of ``READ_CHUNK_ROWS`` rows, nothing written
READ_CANDIDATES = ["read-adbc", "read-psycopg3", "read-psycopg2"]
READ_CHUNK_ROWS = 5_000
#: candidates run by the bench venv's Python (``DLT_VENV``) rather than the project's
BENCH_VENV_CANDIDATES = {"read-psycopg3"}

# The floor's records: ours, field for field, shaped by PostgreSQL.
FLOOR_SELECT = """SELECT row_to_json(t) FROM (SELECT request_id, model, provider, latency_ms,
 input_tokens, output_tokens, total_tokens, cost, status_code, is_error, cache_hit,
 guardrail_triggered, routing_strategy,
 to_char("timestamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "timestamp",
 event_type, trace_id, session_id, user_id, model_requested, cache_status, fallback_used,
 is_stream, error_message, guardrail_results::json AS guardrail_results
 FROM {table} {where} ORDER BY id) t"""


# -- the parent: tables, rounds, measurements, the table of results ----------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every candidate")
    parser.add_argument(
        "--messages", type=int, default=10_000, help="records per sender run (senders part)"
    )
    parser.add_argument(
        "--only",
        default="export,memory,storage,senders,backfill,scale,read",
        help="comma-separated parts: export, memory, storage, senders, backfill, scale, read",
    )
    parser.add_argument(
        "--candidates",
        default=",".join(EXPORT_CANDIDATES),
        help="comma-separated export candidates (default: all)",
    )
    parser.add_argument("--scopes", default="hour,all", help="hour, all or both")
    parser.add_argument(
        "--senders",
        default=",".join(SENDER_KINDS),
        help="comma-separated senders (senders part): sqs, pubsub, datadog, otlp",
    )
    parser.add_argument(
        "--uplink-mbit",
        type=float,
        default=400.0,
        help="storage part: ours-s3-uplink sends its uploads through a relay at this rate "
        "(Mbit/s), answers 10 ms late: a cloud host's uplink (default 400)",
    )
    parser.add_argument("--workdir", type=Path, help="where outputs go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, json.loads(args.child_args))
        return

    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prism-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir, args.rows, args.rounds, args.messages)
    print(machine_line())
    print(f"table {bench.table}: {args.rows:,} rows, {HOURS} hours from {START:%Y-%m-%d %H:%M} UTC")
    bench.prepare_databases()
    try:
        if "export" in parts:
            bench.export(
                [c for c in args.candidates.split(",") if c],
                [s for s in args.scopes.split(",") if s],
            )
        if "memory" in parts:
            bench.memory()
        if "storage" in parts:
            bench.storage(args.uplink_mbit)
        if "senders" in parts:
            bench.senders([k for k in args.senders.split(",") if k])
        if "backfill" in parts:
            bench.backfill()
        if "scale" in parts:
            bench.scale()
        if "read" in parts:
            bench.read()
    finally:
        bench.report()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {model}; "
        f"Python {platform.python_version()}; load average {load}; "
        f"a loop of 10M additions {python_loop_seconds():.2f} s of CPU"
    )


def python_loop_seconds() -> float:
    """The CPU time of a pure-Python loop of 10M additions: how fast the machine runs Python
    now. Printed at the start and the end of a run, since a shared machine's speed drifts
    within minutes and the ratios with it (bench/README.md, "Latest results"). Earlier runs'
    notes timed the same loop at a module's top level, about twice as slow."""
    started = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - started


class Run(dict):
    """One measured run: candidate, scope, rows, seconds, bytes, rss_mb, cpu_s, ..."""


class Bench:
    def __init__(self, workdir: Path, rows: int, rounds: int, messages: int):
        self.workdir = workdir
        self.rows = rows
        self.table = table_for(rows)
        self.small_table = table_for(max(rows // 10, 1))
        self.rounds = rounds
        self.runs: list[Run] = []
        self.lines: list[str] = []  # extra result lines (senders, backfill)
        self.gzip_level: int | None = None
        self.messages = messages
        self.sender_ratios: dict[str, float] = {}
        self.expected: dict[tuple[str, str], int] = {}

    # -- databases ---------------------------------------------------------------------------

    def prepare_databases(self) -> None:
        for name in (SOURCE_DB, STATE_DB):
            create_database(name)
        ensure_table(self.table, self.rows, START, HOURS)

    def expected_rows(self, table: str, scope: str) -> int:
        key = (table, scope)
        if key not in self.expected:
            from sqlalchemy import text

            where, params = scope_where(scope)
            with engine(SOURCE_URL).connect() as conn:
                self.expected[key] = conn.execute(
                    text(f"SELECT count(*) FROM {table} {where}"), params
                ).scalar_one()
        return self.expected[key]

    # -- the export --------------------------------------------------------------------------

    def export(self, candidates: list[str], scopes: list[str]) -> None:
        if any(c.startswith("dlt") for c in candidates):
            ensure_dlt_venv()
        if "floor" in candidates:
            self.gzip_level = self.matching_gzip_level()
            print(f"floor: gzip -{self.gzip_level} makes files the size of ours (isal level 1)")
        for scope in scopes:
            for round_ in range(1, self.rounds + 1):
                for candidate in candidates:
                    self.measure(candidate, scope, self.table, round_)

    def matching_gzip_level(self) -> int:
        """The ``gzip -N`` whose output is closest in size to ours on the same records."""
        import zlib

        out = self.fresh_dir("gzip-level")
        child = self.spawn("ours", {"scope": "hour", "table": self.table, "out": str(out)})
        child.wait_result()
        data = b"".join(gzip.decompress(p.read_bytes()) for p in sorted(out.rglob("*.jsonl.gz")))
        ours = sum(p.stat().st_size for p in out.rglob("*.jsonl.gz"))
        sizes = {}
        for level in range(1, 10):
            compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
            sizes[level] = len(compressor.compress(data)) + len(compressor.flush())
        shutil.rmtree(out)
        return min(sizes, key=lambda level: abs(sizes[level] - ours))

    def measure(self, candidate: str, scope: str, table: str, round_: int, **extra) -> Run:
        out = self.fresh_dir(f"{candidate}-{scope}-{round_}")
        server = ServerCpu()
        if candidate == "floor":
            run = self.run_floor(scope, table, out)
        else:
            child = self.spawn(
                candidate, {"scope": scope, "table": table, "out": str(out), **extra}
            )
            run = child.wait_result()
        run.update(candidate=candidate, scope=scope, table=table, round=round_)
        run.update(server_cpu_s=server.seconds())
        expected = self.expected_rows(table, scope)
        lines, size = check_output(out, candidate)
        if lines != expected:
            raise SystemExit(
                f"{candidate} {scope}: wrote {lines:,} lines, expected {expected:,}; "
                f"its time does not count (output kept in {out})"
            )
        run.update(rows=expected, bytes=size)
        self.runs.append(run)
        print(
            f"  round {round_} {candidate:15s} {scope:4s} {table}: {run['seconds']:7.2f} s "
            f"{expected / run['seconds']:>10,.0f} rows/s {size / 2**20:7.1f} MB "
            f"rss {run['rss_mb']:6.0f} MB (private {run['private_mb']:4.0f}) "
            f"cpu {run['cpu_s']:6.2f} s server cpu {run['server_cpu_s']:5.2f} s",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        return run

    def run_floor(self, scope: str, table: str, out: Path) -> Run:
        where, params = scope_where(scope, literal=True)
        sql = FLOOR_SELECT.format(table=table, where=where.format(**params))
        # CSV with a quote and delimiter that never occur: the JSON passes through untouched
        # (COPY's text format would escape its backslashes).
        copy = f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
        started = time.perf_counter()
        with open(out / "floor.jsonl.gz", "wb") as target:
            psql = subprocess.Popen(
                ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", SOURCE_DB],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            gz = subprocess.Popen(
                ["gzip", f"-{self.gzip_level or 1}"], stdin=psql.stdout, stdout=target
            )
            psql.stdout.close()
            watch = PeakWatch([psql.pid, gz.pid])
            psql.stdin.write(f"\\set ON_ERROR_STOP 1\n{copy};\n".encode())
            psql.stdin.close()
            usage = [wait(psql), wait(gz)]
            peak = watch.stop()
        seconds = time.perf_counter() - started
        if any(code for code, _ in usage):
            raise SystemExit(f"floor: psql | gzip failed ({[code for code, _ in usage]})")
        return Run(
            seconds=seconds,
            wall_s=seconds,
            rss_mb=peak / 1024,
            private_mb=watch.private_peak_kb() / 1024,
            cpu_s=sum(u.ru_utime + u.ru_stime for _, u in usage),
        )

    # -- memory: the same export on a tenth of the rows -----------------------------------------

    def memory(self) -> None:
        """Peak RSS of ours, in both formats, on N rows and on N/10 rows."""
        ensure_table(self.small_table, max(self.rows // 10, 1), START, HOURS)
        for round_ in range(1, self.rounds + 1):
            for candidate in ("ours", "ours-parquet"):
                for table in (self.table, self.small_table):
                    if table == self.table and self.find(candidate, "all", table, round_):
                        continue  # measured by the export part already
                    self.measure(candidate, "all", table, round_)

    # -- scale: a day of 10M rows ---------------------------------------------------------------

    def scale(self) -> None:
        ensure_scale_table()
        for round_ in range(1, self.rounds + 1):
            for scope in ("hour", "all"):
                self.measure("ours", scope, SCALE_TABLE, round_)
        hour = self.median("ours", "hour", SCALE_TABLE, "rss_mb")
        day = self.median("ours", "all", SCALE_TABLE, "rss_mb")
        self.lines.append(
            f"scale: peak RSS {hour:.0f} MB for one hour of {SCALE_TABLE}, {day:.0f} MB for its "
            f"{SCALE_HOURS} hours ({day / hour:.2f}×)"
        )
        self.lines += explain_status_queries()

    # -- read: the gateway read alone, three readers into Arrow ---------------------------------

    def read(self) -> None:
        """One hour of the table into Arrow record batches of ``READ_CHUNK_ROWS`` rows, nothing
        written: the project's reader (ADBC) beside psycopg 3's binary ``COPY`` and psycopg2's
        named cursor, all three sending the SQL the project's reader sends (``reader_sql``)."""
        ensure_dlt_venv()  # psycopg 3 is the bench venv's, not the project's
        sql = reader_sql(self.table)
        columns = read_columns(sql)
        schema = [[name, str(arrow_type(type_))] for name, type_ in columns]
        for round_ in range(1, self.rounds + 1):
            for candidate in READ_CANDIDATES:
                self.measure_read(candidate, sql, columns, schema, round_)

    def measure_read(
        self, candidate: str, sql: str, columns: list, schema: list, round_: int
    ) -> None:
        out = self.fresh_dir(f"{candidate}-{round_}")  # nothing is written: the child's log
        server = ServerCpu()
        child = self.spawn(
            candidate,
            {"scope": "hour", "table": self.table, "out": str(out), "sql": sql, "columns": columns},
        )
        run = child.wait_result()
        expected = self.expected_rows(self.table, "hour")
        problems = []
        if run["rows"] != expected:
            problems.append(f"read {run['rows']:,} rows, expected {expected:,}")
        if run["uneven"]:
            problems.append(f"{run['uneven']} batches before the last not of {READ_CHUNK_ROWS:,}")
        if run["schema"] != schema:
            problems.append(f"batches of {run['schema']}, expected {schema}")
        if problems:
            raise SystemExit(f"{candidate}: {'; '.join(problems)}; its time does not count")
        run.update(candidate=candidate, scope="hour", table=self.table, round=round_)
        run.update(server_cpu_s=server.seconds())
        self.runs.append(run)
        print(
            f"  round {round_} {candidate:15s} hour {self.table}: {run['seconds']:7.2f} s "
            f"{expected / run['seconds']:>10,.0f} rows/s {run['batches']:,} batches "
            f"{run['bytes'] / 2**20:7.1f} MB of Arrow "
            f"rss {run['rss_mb']:6.0f} MB cpu {run['cpu_s']:6.2f} s "
            f"server cpu {run['server_cpu_s']:5.2f} s",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)

    # -- storage: the S3 stand-in beside the local folder ----------------------------------------

    def storage(self, uplink_mbit: float) -> None:
        sys.path.insert(0, str(REPO))
        from prism_pipelines_tests.services import run_moto

        with run_moto(self.fresh_dir("moto-logs")) as moto:
            bucket = "prism-bench"
            moto.client("s3").create_bucket(Bucket=bucket)
            uplink = UplinkRelay(moto.endpoint_url, uplink_mbit * 1e6 / 8)
            for round_ in range(1, self.rounds + 1):
                if not self.find("ours", "hour", self.table, round_):
                    self.measure("ours", "hour", self.table, round_)
                for candidate, endpoint_url in (
                    ("ours-s3", moto.endpoint_url),
                    ("ours-s3-uplink", uplink.url),
                ):
                    self.measure(
                        candidate,
                        "hour",
                        self.table,
                        round_,
                        endpoint_url=endpoint_url,
                        bucket=bucket,
                    )

    # -- senders: queues and Datadog ------------------------------------------------------------

    def senders(self, kinds: list[str]) -> None:
        """Each sink against its stand-in, beside its peer (one request per message, or the
        OpenTelemetry SDK) sending to the same."""
        sys.path.insert(0, str(REPO))
        from prism_pipelines_tests.datadog_intake import API_KEY, DatadogIntake
        from prism_pipelines_tests.services import pubsub_env, run_moto, run_pubsub

        hour = senders_hour()
        logs = self.fresh_dir("sender-logs")
        # moto without its per-send walk of the queue (bench/moto_server.py says why)
        sqs_moto = run_moto(logs, script=BENCH / "moto_server.py")
        with sqs_moto as moto, run_pubsub(logs) as pubsub:
            intake = DatadogIntake().start()
            discard = OtlpDiscard()
            try:
                services = {
                    "sqs": Sqs(moto),
                    "pubsub": PubSubTopic(pubsub, pubsub_env),
                    "datadog": DatadogLogs(intake, API_KEY),
                    "otlp": discard,
                }
                for kind in kinds:
                    service = services[kind]
                    peer = f"send-{kind}-{SENDER_PEERS[kind]}"
                    single = SENDER_PEERS[kind] == "single"
                    runs = [
                        (f"send-{kind}", self.messages),
                        (peer, min(self.messages, SINGLE_MESSAGES) if single else self.messages),
                    ]
                    if kind == "otlp":  # memory flat in the partition's size: a tenth of it
                        runs.append((f"send-{kind}", self.messages // 10))
                    for count in {count for _, count in runs}:
                        ensure_table(f"{SENDERS_TABLE}_{count}", count, hour, 1, keep_if_hour=hour)
                    for round_ in range(1, self.rounds + 1):
                        for candidate, count in runs:
                            table = f"{SENDERS_TABLE}_{count}"
                            self.measure_sender(candidate, service, table, count, hour, round_)
                    rates = {
                        candidate: count
                        / self.median(candidate, "send", f"{SENDERS_TABLE}_{count}", "seconds")
                        for candidate, count in runs[:2]
                    }
                    self.sender_ratios[kind] = rates[f"send-{kind}"] / rates[peer]
            finally:
                intake.stop()
                discard.stop()

    def measure_sender(
        self, candidate: str, service, table: str, count: int, hour: datetime, round_: int
    ) -> None:
        out = self.fresh_dir(f"{candidate}-{round_}")
        target = service.prepare()
        server = ServerCpu()
        child = self.spawn(
            candidate,
            {"scope": "send", "table": table, "out": str(out), "hour": hour.isoformat()} | target,
        )
        run = child.wait_result()
        run.update(server_cpu_s=server.seconds())
        received = service.received(target)
        if received != count:
            raise SystemExit(
                f"{candidate}: the stand-in holds {received:,} distinct records as JSON, "
                f"expected {count:,}; its time does not count"
            )
        run.update(
            candidate=candidate, scope="send", table=table, round=round_, rows=count, bytes=0
        )
        self.runs.append(run)
        print(
            f"  round {round_} {candidate:20s} {count:,} messages: "
            f"{run['seconds']:7.2f} s {count / run['seconds']:>9,.0f} messages/s "
            f"({run.get('requests', 0):,} requests) rss {run['rss_mb']:5.0f} MB",
            flush=True,
        )

    # -- backfill: 720 hourly partitions through Dagster ----------------------------------------

    def backfill(self) -> None:
        rows = BACKFILL_HOURS * BACKFILL_ROWS_PER_HOUR
        ensure_table(BACKFILL_TABLE, rows, BACKFILL_START, BACKFILL_HOURS)
        self.expected[(BACKFILL_TABLE, "backfill")] = rows
        results = {}
        for candidate in ("backfill-sync", "backfill-dagster"):
            results[candidate] = self.measure(candidate, "backfill", BACKFILL_TABLE, 1)
        sync, dagster = results["backfill-sync"], results["backfill-dagster"]
        per_sync = sync["seconds"] / BACKFILL_HOURS
        per_dagster = dagster["seconds"] / BACKFILL_HOURS
        self.lines.append(
            f"backfill of {BACKFILL_HOURS} hourly partitions ({rows:,} rows, "
            f"{dagster['runs']} Dagster runs of up to 24 partitions): "
            f"sync path {sync['seconds']:.1f} s ({per_sync * 1000:.0f} ms/partition), "
            f"through Dagster {dagster['seconds']:.1f} s ({per_dagster * 1000:.0f} ms/partition); "
            f"Dagster's overhead {(per_dagster - per_sync) * 1000:.0f} ms/partition"
        )
        self.backfill_overhead = per_dagster - per_sync

    # -- processes and results -----------------------------------------------------------------

    def fresh_dir(self, name: str) -> Path:
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def spawn(self, candidate: str, child_args: dict) -> Child:
        in_bench_venv = candidate.startswith("dlt") or candidate in BENCH_VENV_CANDIDATES
        python = DLT_VENV / "bin" / "python" if in_bench_venv else sys.executable
        log = Path(child_args["out"]).with_suffix(".log")
        return Child(
            [
                str(python),
                str(Path(__file__).resolve()),
                "--child",
                candidate,
                "--child-args",
                json.dumps(child_args),
            ],
            log,
        )

    def find(self, candidate: str, scope: str, table: str, round_: int | None = None) -> list:
        return [
            r
            for r in self.runs
            if r["candidate"] == candidate
            and r["scope"] == scope
            and r["table"] == table
            and (round_ is None or r["round"] == round_)
        ]

    def median(self, candidate: str, scope: str, table: str, key: str) -> float | None:
        values = [r[key] for r in self.find(candidate, scope, table)]
        return statistics.median(values) if values else None

    def report(self) -> None:
        if not self.runs and not self.lines:
            return
        print()
        print(machine_line())
        print(
            f"medians of {self.rounds} round(s); time ratio = candidate's time / ours "
            "(higher is slower than ours; a read-* candidate's / read-adbc's, its output MB "
            "the Arrow batches')"
        )
        header = (
            "| candidate | scope | rows | seconds | rows/s | output MB | peak RSS MB "
            "| private MB | CPU s | server CPU s | time vs ours |"
        )
        print(header)
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        seen = []
        for r in self.runs:
            key = (r["candidate"], r["scope"], r["table"])
            if key not in seen:
                seen.append(key)
        for candidate, scope, table in seen:
            seconds = self.median(candidate, scope, table, "seconds")
            reference = "read-adbc" if candidate in READ_CANDIDATES else "ours"
            ours = self.median(reference, scope, table, "seconds")
            rows = self.find(candidate, scope, table)[0]["rows"]
            label = candidate if table == self.table else f"{candidate} ({table})"
            ratio = f"{seconds / ours:.2f}×" if ours else "–"
            print(
                f"| {label} | {scope} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} "
                f"| {self.median(candidate, scope, table, 'bytes') / 2**20:.1f} "
                f"| {self.median(candidate, scope, table, 'rss_mb'):.0f} "
                f"| {self.median(candidate, scope, table, 'private_mb'):.0f} "
                f"| {self.median(candidate, scope, table, 'cpu_s'):.2f} "
                f"| {self.median(candidate, scope, table, 'server_cpu_s'):.2f} | {ratio} |"
            )
        for line in self.lines:
            print(line)
        self.targets()

    def targets(self) -> None:
        print()
        print("targets:")

        def target(name: str, value: float | None, goal: str, ok) -> None:
            if value is None:
                print(f"  - {name}: not measured")
            else:
                print(f"  - {name}: {value:.2f} ({goal}) {'MET' if ok(value) else 'MISSED'}")

        def ratio(candidate: str, scope: str = "hour", against: str = "ours") -> float | None:
            theirs = self.median(candidate, scope, self.table, "seconds")
            ours = self.median(against, scope, self.table, "seconds")
            return theirs / ours if theirs and ours else None

        target("dlt sqlalchemy / ours, one hour", ratio("dlt-sqlalchemy"), "≥ 5", lambda v: v >= 5)
        target("dlt pyarrow / ours, one hour", ratio("dlt-pyarrow"), "≥ 2", lambda v: v >= 2)
        target(
            "dlt pyarrow Parquet / ours Parquet, one hour",
            ratio("dlt-pyarrow-parquet", against="ours-parquet"),
            "≥ 3",
            lambda v: v >= 3,
        )
        for candidate, limit in (("ours", 0.5), ("ours+dagster", 0.7)):
            target(
                f"{candidate} / floor, one hour",
                ratio(candidate, against="floor"),
                f"≤ {limit}",
                lambda v, limit=limit: v <= limit,
            )
        for candidate, limit in (("ours", 300), ("ours-parquet", 150)):
            big = self.median(candidate, "all", self.table, "rss_mb")
            small = self.median(candidate, "all", self.small_table, "rss_mb")
            target(
                f"{candidate} peak RSS MB, all {self.rows:,} rows",
                big,
                f"< {limit}",
                lambda v, limit=limit: v < limit,
            )
            target(
                f"{candidate} peak RSS, N rows / N/10 rows",
                big / small if big and small else None,
                "≤ 1.2",
                lambda v: v <= 1.2,
            )
        for kind, peer in SENDER_PEERS.items():
            goal = 5 if peer == "single" else 3
            target(
                f"{kind} sender / "
                + ("one message per request" if peer == "single" else "the OpenTelemetry SDK"),
                self.sender_ratios.get(kind),
                f"≥ {goal}",
                lambda v, goal=goal: v >= goal,
            )
        overhead = getattr(self, "backfill_overhead", None)
        target(
            "Dagster overhead s/partition, 720-partition backfill", overhead, "< 1", lambda v: v < 1
        )


class Child:
    """A candidate in its own process; its last stdout line is its result as JSON, its stderr
    goes to a log file (shown if it fails)."""

    def __init__(self, argv: list[str], log: Path):
        self.started = time.perf_counter()
        self.log = log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, text=True
            )
        self.watch = PeakWatch([self.proc.pid])

    def wait_result(self) -> Run:
        output = self.proc.stdout.read()
        code, usage = wait(self.proc)
        peak = self.watch.stop()
        wall = time.perf_counter() - self.started
        if code:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise SystemExit(f"{self.proc.args[3]} failed with exit code {code}:\n{tail}")
        result = json.loads(output.strip().splitlines()[-1])
        return Run(
            **result,
            wall_s=wall,
            rss_mb=max(peak, result.pop("peak_rss_kb", 0)) / 1024,
            private_mb=self.watch.private_peak_kb() / 1024,
            cpu_s=usage.ru_utime + usage.ru_stime,
        )


class PeakWatch:
    """Peak RSS of some processes, from ``/proc/<pid>/status`` (VmHWM), summed; and the peak of
    their private memory (``RssAnon``, polled every 20 ms, so a spike shorter than that can be
    missed).

    Not ``wait4``'s ``ru_maxrss``: on Linux a child's counts the RSS of the parent it was forked
    from, which here is this script with everything it imported. The private peak is there
    because RSS also counts the pages of shared libraries the process has mapped, and how many
    of those are resident is the kernel's doing: the same code on the same machine measured
    17–20 MB apart 40 minutes apart (bench/README.md, "Latest results").
    """

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.peaks = dict.fromkeys(pids, 0)
        self.private = dict.fromkeys(pids, 0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while not self.done.is_set():
            for pid in self.pids:
                status = proc_status_kb(pid)
                self.peaks[pid] = max(self.peaks[pid], status.get("VmHWM", 0))
                self.private[pid] = max(self.private[pid], status.get("RssAnon", 0))
            self.done.wait(0.02)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return sum(self.peaks.values())

    def private_peak_kb(self) -> int:
        return sum(self.private.values())


def proc_status_kb(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of ``/proc/<pid>/status`` (VmHWM, RssAnon, …); empty once it has ended."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[name] = int(value.split()[0])
    return fields


class ServerCpu:
    """The CPU the PostgreSQL server spent for one candidate: what the backends (and parallel
    workers) that ended meanwhile used, which their parent, the postmaster, collects when it
    reaps them (``cutime`` + ``cstime`` of ``/proc/<postmaster>/stat``). Read once the
    candidate's backends are gone; the server's long-lived processes (checkpointer, walwriter)
    are not counted, nor the bench's own idle connections. Zero where the server's processes
    cannot be read (another host, another user)."""

    def __init__(self):
        self.backends = _backends()
        self.before = _reaped_cpu_s()

    def seconds(self) -> float:
        deadline = time.monotonic() + 5
        while _backends() > self.backends and time.monotonic() < deadline:
            time.sleep(0.02)  # a client gone, its backend still ending
        time.sleep(0.05)  # and the postmaster reaping it
        return max(_reaped_cpu_s() - self.before, 0.0)


def _backends() -> int:
    return _server_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
        "('client backend', 'parallel worker') AND pid <> pg_backend_pid()"
    )


def _server_scalar(sql: str):
    """One value from the server, on a connection closed right after (no pool: an idle
    pooled connection would count as a backend still running)."""
    import psycopg2

    with closing(psycopg2.connect(f"{PG_SERVER}/postgres")) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


@cache
def _postmaster_pid() -> int | None:
    """The parent of one of the server's backends; None where its process cannot be read."""
    fields = _proc_stat(_server_scalar("SELECT pg_backend_pid()"))
    return int(fields[1]) if fields else None


def _reaped_cpu_s() -> float:
    """The postmaster's ``cutime`` + ``cstime`` (fields 16 and 17 of its stat), in seconds."""
    pid = _postmaster_pid()
    fields = _proc_stat(pid) if pid else []
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command's closing parenthesis (so
    ``[0]`` is the state, field 3); empty if it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


class UplinkRelay:
    """A loopback TCP relay to ``endpoint_url`` whose uploads (client to server, all
    connections together) pass at ``bytes_per_s`` and whose answers come ``latency_s`` late:
    moto as a cloud host would reach S3, where an upload takes time the export can overlap.
    In the benchmark's own process (Linux's ``tc`` would need qdisc modules this machine
    lacks); it costs some CPU, as moto does."""

    def __init__(self, endpoint_url: str, bytes_per_s: float, latency_s: float = 0.01):
        host, port = endpoint_url.rsplit("/", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.bytes_per_s, self.latency_s = bytes_per_s, latency_s
        self._lock = threading.Lock()
        self._free_at = time.monotonic()  # when the uplink is free for the next bytes
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True, name="uplink").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, target, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, target, up), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(65536):
                if up:
                    with self._lock:
                        self._free_at = max(self._free_at, time.monotonic())
                        self._free_at += len(data) / self.bytes_per_s
                        until = self._free_at
                    time.sleep(max(0.0, until - time.monotonic()))
                else:
                    time.sleep(self.latency_s)
                target.sendall(data)
        except OSError:
            pass  # either side closed
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def wait(proc: subprocess.Popen):
    """Exit code and resource usage (peak RSS, CPU) of this one child."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def check_output(out: Path, candidate: str) -> tuple[int, int]:
    """Records written (each JSONL line checked to be one JSON object, each of our Parquet
    files' schema to be the contract's; dlt's have dlt's) and bytes of the data files."""
    import orjson
    import pyarrow.parquet as pq
    from isal import igzip

    from prism_pipelines.sinks.storage.parquet import SCHEMA as PARQUET_SCHEMA

    lines = size = 0
    for path in sorted(out.rglob("*.parquet")):
        if "_dlt_" in str(path.relative_to(out)):
            continue
        parquet = pq.ParquetFile(path)
        if not candidate.startswith("dlt") and parquet.schema_arrow != PARQUET_SCHEMA:
            raise SystemExit(f"{candidate}: {path} does not have the contract's schema")
        size += path.stat().st_size
        lines += parquet.metadata.num_rows
    for path in sorted(out.rglob("*.jsonl.gz")):
        if "_dlt_" in str(path.relative_to(out)):
            continue
        size += path.stat().st_size
        with igzip.open(path, "rb") as data:
            for line in data:
                if not isinstance(orjson.loads(line), dict):
                    raise SystemExit(f"{candidate}: {path} holds a line that is not an object")
                lines += 1
    return lines, size


# -- databases -----------------------------------------------------------------------------------


def table_for(rows: int) -> str:
    return f"prism_request_logs_{rows}"


def engine(url: str):
    from sqlalchemy import create_engine

    return create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))


def create_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(
        f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg2://')}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        if not conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def ensure_table(
    table: str, rows: int, start: datetime, hours: int, keep_if_hour: datetime | None = None
) -> None:
    """The table with exactly ``rows`` demo rows over ``hours`` from ``start``; kept if so
    (and, with ``keep_if_hour``, if its rows start in that hour)."""
    from sqlalchemy import inspect, text

    sys.path.insert(0, str(REPO))
    from prism_pipelines.demo import generate_rows
    from prism_pipelines.source import GatewaySource

    source = GatewaySource(SOURCE_URL, table=table)
    if inspect(source.engine).has_table(table):
        with source.engine.connect() as conn:
            count, first = conn.execute(
                text(f'SELECT count(*), min("timestamp") FROM {table}')
            ).one()
            fresh = keep_if_hour is None or (
                first is not None and first.replace(minute=0, second=0, microsecond=0) == start
            )
            if count == rows and fresh:
                return
        source.table.drop(source.engine)
    print(f"seeding {table}: {rows:,} rows over {hours} hours …", flush=True)
    started = time.perf_counter()
    source.create_table()
    end = start + timedelta(hours=hours)
    source.insert_rows(generate_rows(rows, start=start, end=end, seed=SEED))
    with source.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {table}"))
    print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)


def ensure_scale_table() -> None:
    """``SCALE_ROWS`` rows over ``SCALE_HOURS`` hours from ``START`` (kept when present)."""
    from sqlalchemy import inspect, text

    from prism_pipelines.source import INSERT_COLUMNS, GatewaySource

    per_hour = SCALE_ROWS // SCALE_HOURS
    source = GatewaySource(SOURCE_URL, table=SCALE_TABLE)
    if inspect(source.engine).has_table(SCALE_TABLE):
        with source.engine.connect() as conn:
            if conn.execute(text(f"SELECT count(*) FROM {SCALE_TABLE}")).scalar() == (
                per_hour * SCALE_HOURS
            ):
                return
        source.table.drop(source.engine)
    base = f"{SCALE_TABLE}_hour"
    ensure_table(base, per_hour, START, 1)
    print(f"copying {base} to {SCALE_HOURS} hours of {SCALE_TABLE} …", flush=True)
    started = time.perf_counter()
    source.create_table()
    shifted = {
        "request_id": "request_id || '_' || h",
        "timestamp": '"timestamp" + make_interval(hours => h)',
        "ingested_at": "ingested_at + make_interval(hours => h)",
    }
    columns = ", ".join(f'"{c}"' for c in INSERT_COLUMNS)
    values = ", ".join(shifted.get(c, f'"{c}"') for c in INSERT_COLUMNS)
    with source.engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {SCALE_TABLE} ({columns}) SELECT {values} FROM {base}, "
                f"generate_series(0, {SCALE_HOURS - 1}) AS h ORDER BY h, id"
            )
        )
    with source.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {SCALE_TABLE}"))
    print(f"  copied in {time.perf_counter() - started:.0f} s", flush=True)


def explain_status_queries() -> list[str]:
    """EXPLAIN ANALYZE of every query the late-data sensor (its hourly full look, a tick between
    them) and ``prism-pipelines status`` send to the gateway table, as they send them (captured
    from the engine), on the scale table, with a ledger that delivered its first hours (so the
    lag query has a cursor to look up)."""
    from sqlalchemy import event

    from prism_pipelines.backlog import (
        backlog,
        hours_backlog,
        newest_delivered_event,
        pending_rows,
    )
    from prism_pipelines.sinks import build_sink
    from prism_pipelines.source import GatewaySource
    from prism_pipelines.sync import deliver_partition

    ledger = _fresh_ledger()
    source = GatewaySource(SOURCE_URL, table=SCALE_TABLE)
    integration, _ = _integration(Path(tempfile.mkdtemp(prefix="prism-scale-")))
    sink = build_sink(integration)
    deliver_partition(integration, sink, source, ledger, START, settle_seconds=0)
    sink.close()
    end = START + timedelta(hours=SCALE_HOURS)
    sent: list[tuple[str, str, dict]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if SCALE_TABLE in statement:
            sent.append((what, statement, parameters))

    event.listen(source.engine, "before_cursor_execute", capture)
    lines = []
    # The sensor's and status's window: the last 48 hours (here the whole day, ending at its
    # end); and 2 hours, the same share of this day (8%) as 48 hours are of a month's table.
    for what, call in (
        (
            "backlog over 48 hours (the late-data sensor's hourly full look)",
            lambda: backlog(source, ledger, INTEGRATION, end - timedelta(hours=48), end),
        ),
        (
            "backlog over 2 hours (48 hours of a month's table)",
            lambda: backlog(source, ledger, INTEGRATION, end - timedelta(hours=2), end),
        ),
        (
            "pending rows over 48 hours (status)",
            lambda: pending_rows(source, ledger, INTEGRATION, end),
        ),
        (
            "newest delivered event (status: lag)",
            lambda: newest_delivered_event(source, ledger, INTEGRATION),
        ),
        (
            # a tick of the late-data sensor between its hourly full looks, a minute of this
            # traffic (~6,900 rows) after its watermark: the hours those rows fell in, then
            # those hours' summaries
            "late-data sensor tick, a minute of traffic past its watermark",
            lambda: hours_backlog(
                source, ledger, INTEGRATION, source.hours_after(SCALE_ROWS - 6_900)
            ),
        ),
    ):
        started = time.perf_counter()
        call()
        lines.append(f"{what}: {time.perf_counter() - started:.3f} s")
    event.remove(source.engine, "before_cursor_execute", capture)
    raw = source.engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            for what, statement, parameters in sent:
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                lines.append(f"\n{what}:\n{statement}\n{plan}")
    finally:
        raw.close()
    return lines


def scope_where(scope: str, literal: bool = False) -> tuple[str, dict]:
    if scope != "hour":
        return "", {}
    params = {"start": ONE_HOUR.isoformat(), "end": (ONE_HOUR + timedelta(hours=1)).isoformat()}
    if literal:
        return """WHERE "timestamp" >= '{start}' AND "timestamp" < '{end}'""", params
    return 'WHERE "timestamp" >= :start AND "timestamp" < :end', params


def reader_sql(table: str) -> str:
    """The SQL the project's reader sends for ``ONE_HOUR`` of ``table`` (after id 0, settle
    delay 0)."""
    from prism_pipelines.source import GatewaySource

    source = GatewaySource(SOURCE_URL, table=table)
    return source.postgresql_text(source.read_statement(ONE_HOUR, after_id=0, settle_seconds=0))


def read_columns(sql: str) -> list[list[str]]:
    """``sql``'s columns: name and PostgreSQL type name (what psycopg 3's binary ``COPY`` is
    told, and ``arrow_type`` maps), from the server (``LIMIT 0``)."""
    import psycopg2

    with closing(psycopg2.connect(SOURCE_URL)) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
        names = [d.name for d in cursor.description]
        oids = [d.type_code for d in cursor.description]
        cursor.execute("SELECT oid::int, typname::text FROM pg_type WHERE oid = ANY(%s)", (oids,))
        types = dict(cursor.fetchall())
    return [[name, types[oid]] for name, oid in zip(names, oids, strict=True)]


def arrow_type(pg_type: str):
    """The Arrow type ADBC's PostgreSQL driver reads a PostgreSQL type as."""
    import pyarrow as pa

    return {
        "text": pa.string(),
        "int4": pa.int32(),
        "int8": pa.int64(),
        "float8": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us"),
    }[pg_type]


def ensure_dlt_venv() -> None:
    python = DLT_VENV / "bin" / "python"
    marker = DLT_VENV / ".installed"
    if marker.exists() and marker.read_text() == " ".join(DLT_REQUIREMENTS):
        return
    print(f"creating {DLT_VENV} with {' '.join(DLT_REQUIREMENTS)} …", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(DLT_VENV)], check=True)
    (DLT_VENV / ".gitignore").write_text("*\n")  # git, and so ruff, leave it alone
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *DLT_REQUIREMENTS, "psutil"], check=True
    )
    marker.write_text(" ".join(DLT_REQUIREMENTS))


# -- the children: one candidate each, timing only the export ------------------------------------


def run_child(candidate: str, args: dict) -> None:
    out = Path(args["out"])
    scope = args["scope"]
    table = args["table"]
    runner = CHILDREN[candidate]
    result = runner(scope=scope, table=table, out=out, args=args)
    # this process's own peak (threads included)
    result["peak_rss_kb"] = proc_status_kb().get("VmHWM", 0)
    print(json.dumps(result))


def _hours(scope: str, table: str) -> list[datetime]:
    if scope == "hour":
        return [ONE_HOUR]
    if table == BACKFILL_TABLE:
        return [BACKFILL_START + timedelta(hours=i) for i in range(BACKFILL_HOURS)]
    if table == SCALE_TABLE:
        return [START + timedelta(hours=i) for i in range(SCALE_HOURS)]
    return [START + timedelta(hours=i) for i in range(HOURS)]


def _fresh_ledger():
    """The state database with nothing recorded for the bench integration."""
    from sqlalchemy import delete

    from prism_pipelines import ledger as ledger_module

    ledger = ledger_module.Ledger(STATE_URL)
    with ledger.engine.begin() as conn:
        for table in (
            ledger_module.batches,
            ledger_module.partitions,
            ledger_module.rejects,
        ):
            conn.execute(delete(table).where(table.c.integration == INTEGRATION))
    return ledger


def _integration(out: Path, **settings):
    from prism_pipelines.integrations import IntegrationsFile

    entry = {
        "name": INTEGRATION,
        "history": {"since": BACKFILL_START.isoformat()},
        **(settings or {"type": "local", "path": str(out)}),
    }
    return IntegrationsFile.model_validate({"integrations": [entry]}).integrations[0], entry


def child_ours(
    scope: str, table: str, out: Path, args: dict, sink_type: str = "local", format_: str = "jsonl"
) -> dict:
    from prism_pipelines.sinks import build_sink
    from prism_pipelines.source import GatewaySource
    from prism_pipelines.sync import deliver_partition

    _import_encoder(format_)
    if sink_type == "s3":
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_EC2_METADATA_DISABLED="true",
        )
        integration, _ = _integration(
            out,
            type="s3",
            bucket=args["bucket"],
            region="us-east-1",
            prefix=f"run-{out.name}",
            endpoint_url=args["endpoint_url"],
        )
    else:
        integration, _ = _integration(out, type="local", path=str(out), format=format_)
    ledger = _fresh_ledger()
    source = GatewaySource(SOURCE_URL, table=table)
    sink = build_sink(integration)
    started = time.perf_counter()
    records = 0
    for hour in _hours(scope, table):
        records += deliver_partition(
            integration, sink, source, ledger, hour, settle_seconds=0
        ).records
    seconds = time.perf_counter() - started
    sink.close()
    if sink_type == "s3":
        _download(integration, out)
    return {"seconds": seconds, "records": records}


def _import_encoder(format_: str) -> None:
    """The format's encoder, imported before the timer as every other import is ("How it
    measures"): the project imports it on the first chunk, which put polars' import (0.1 s)
    inside the hour. Only the format's own, so the peak RSS stays the format's."""
    if format_ == "parquet":
        import prism_pipelines.sinks.storage.parquet  # noqa: F401
    else:
        import prism_pipelines.jsonl  # noqa: F401


def _download(integration, out: Path) -> None:
    """After timing: the run's objects, into ``out``, for the parent's check."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=integration.endpoint_url, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=integration.bucket, Prefix=integration.prefix
    )
    for page in pages:
        for item in page.get("Contents", []):
            target = out / "downloaded" / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(integration.bucket, item["Key"], str(target))
            s3.delete_object(Bucket=integration.bucket, Key=item["Key"])


def child_ours_s3(scope: str, table: str, out: Path, args: dict) -> dict:
    return child_ours(scope, table, out, args, sink_type="s3")


def child_dagster(scope: str, table: str, out: Path, args: dict) -> dict:
    import yaml
    from dagster import DagsterInstance

    from prism_pipelines.dagster_defs.definitions import build_definitions
    from prism_pipelines.integrations import load_integrations

    _, entry = _integration(out)
    config_path = out.parent / f"{out.name}.integrations.yaml"
    config_path.write_text(
        yaml.safe_dump({"integrations": [entry], "source": {"table": table, "settle_seconds": 0}})
    )
    os.environ.update(
        PRISM_INTEGRATIONS=str(config_path), PRISM_SOURCE_URL=SOURCE_URL, PRISM_STATE_URL=STATE_URL
    )
    _fresh_ledger()
    _import_encoder("jsonl")
    keys = [h.strftime("%Y-%m-%d-%H:%M") for h in _hours(scope, table)]
    per_run = 24
    with tempfile.TemporaryDirectory() as home:
        instance = DagsterInstance.local_temp(home)
        started = time.perf_counter()
        defs = build_definitions(load_integrations(config_path))
        job = defs.resolve_job_def(f"{INTEGRATION}_sync")
        defs_seconds = time.perf_counter() - started
        records = runs = 0
        for i in range(0, len(keys), per_run):
            chunk = keys[i : i + per_run]
            if len(chunk) == 1:
                selection = {"partition_key": chunk[0]}
            else:
                selection = {
                    "tags": {
                        "dagster/asset_partition_range_start": chunk[0],
                        "dagster/asset_partition_range_end": chunk[-1],
                    }
                }
            result = job.execute_in_process(instance=instance, **selection)
            runs += 1
            if not result.success:
                raise SystemExit("the Dagster run failed")
            for event in result.get_asset_materialization_events():
                records += event.materialization.metadata["records"].value
        seconds = time.perf_counter() - started
    config_path.unlink()
    return {"seconds": seconds, "records": records, "runs": runs, "defs_s": defs_seconds}


def child_backfill_sync(scope: str, table: str, out: Path, args: dict) -> dict:
    return child_ours("all", table, out, args)


def child_backfill_dagster(scope: str, table: str, out: Path, args: dict) -> dict:
    return child_dagster("all", table, out, args)


def child_dlt(
    scope: str, table: str, out: Path, args: dict, backend: str, file_format: str = "jsonl"
) -> dict:
    import dlt
    from dlt.destinations import filesystem
    from dlt.sources.sql_database import sql_table

    def one_hour(query, sql_table_):
        c = sql_table_.c
        return query.where(c.timestamp >= ONE_HOUR).where(
            c.timestamp < ONE_HOUR + timedelta(hours=1)
        )

    started = time.perf_counter()
    source = sql_table(
        credentials=SOURCE_URL.replace("postgresql://", "postgresql+psycopg2://"),
        table=table,
        backend=backend,
        query_adapter_callback=one_hour if scope == "hour" else None,
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{backend}_{out.name}".replace("-", "_"),
        destination=filesystem(bucket_url=out.as_uri()),
        dataset_name="bench",
        pipelines_dir=str(out.parent / f"{out.name}.dlt"),
    )
    pipeline.run(source, loader_file_format=file_format)
    seconds = time.perf_counter() - started
    shutil.rmtree(out.parent / f"{out.name}.dlt", ignore_errors=True)
    return {"seconds": seconds}


def child_pandas(scope: str, table: str, out: Path, args: dict) -> dict:
    import pandas as pd
    from sqlalchemy import text

    where, params = scope_where(scope)
    started = time.perf_counter()
    db = engine(SOURCE_URL)
    query = text(f"SELECT * FROM {table} {where}")
    chunks = pd.read_sql(query, db, params=params, chunksize=50_000)
    for i, chunk in enumerate(chunks):
        chunk.to_json(
            out / f"part-{i:05d}.jsonl.gz",
            orient="records",
            lines=True,
            date_format="iso",
            compression="gzip",
        )
    seconds = time.perf_counter() - started
    return {"seconds": seconds}


# -- read: the gateway read alone ------------------------------------------------------------------


class _NoPandas:
    """A meta path finder that hides pandas: ``pa.array`` imports pandas when it is installed
    (pyarrow's pandas shim looks for array-likes), ~50 MB and a fraction of a second that the
    project's reader never pays (``records``: arrays from buffers); the read children that call
    ``pa.array`` should not pay them either."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is hidden from the read part's children")
        return None


class _Batches:
    """The record batches a reader makes, counted and dropped (nothing is written); with
    ``columns`` (name, PostgreSQL type), made from chunks of row tuples, column-wise
    (``pa.array(values, type)``) in the types ADBC's driver reads."""

    def __init__(self, columns: list | None = None):
        self.names = [name for name, _ in columns or ()]
        self.types = [arrow_type(type_) for _, type_ in columns or ()]
        self.sizes: list[int] = []
        self.bytes = 0
        self.schema = None

    def add(self, rows: list[tuple]) -> None:
        import pyarrow as pa

        values = zip(*rows, strict=True)
        arrays = [pa.array(v, t) for v, t in zip(values, self.types, strict=True)]
        self.count(pa.RecordBatch.from_arrays(arrays, names=self.names))

    def count(self, batch) -> None:
        self.sizes.append(batch.num_rows)
        self.bytes += batch.nbytes
        if self.schema is None:
            self.schema = [[field.name, str(field.type)] for field in batch.schema]

    def result(self, seconds: float) -> dict:
        return {
            "seconds": seconds,
            "rows": sum(self.sizes),
            "batches": len(self.sizes),
            "uneven": sum(size != READ_CHUNK_ROWS for size in self.sizes[:-1]),
            "bytes": self.bytes,
            "schema": self.schema,
        }


def child_read_adbc(scope: str, table: str, out: Path, args: dict) -> dict:
    """The project's reader: ``GatewaySource.stream_chunks`` (ADBC's binary ``COPY`` into
    Arrow, re-cut to 5,000 rows, the next batch read ahead in a thread)."""
    from prism_pipelines.source import GatewaySource

    if reader_sql(table) != args["sql"]:
        raise SystemExit("the reader's SQL is not the one the parent passed")
    source = GatewaySource(SOURCE_URL, table=table)
    batches = _Batches()
    started = time.perf_counter()
    for batch in source.stream_chunks(
        ONE_HOUR, after_id=0, settle_seconds=0, chunk_rows=READ_CHUNK_ROWS
    ):
        batches.count(batch)
    return batches.result(time.perf_counter() - started)


def child_read_psycopg3(scope: str, table: str, out: Path, args: dict) -> dict:
    """psycopg 3's binary ``COPY`` of the reader's SQL (in the bench venv), its rows typed by
    ``set_types``, each 5,000 made a record batch."""
    sys.meta_path.insert(0, _NoPandas)
    import psycopg

    batches = _Batches(args["columns"])
    started = time.perf_counter()
    with (
        psycopg.connect(SOURCE_URL) as conn,
        conn.cursor() as cursor,
        cursor.copy(f"COPY ({args['sql']}) TO STDOUT (FORMAT BINARY)") as copy,
    ):
        copy.set_types([type_ for _, type_ in args["columns"]])
        rows = []
        for row in copy.rows():
            rows.append(row)
            if len(rows) == READ_CHUNK_ROWS:
                batches.add(rows)
                rows = []
        if rows:
            batches.add(rows)
    return batches.result(time.perf_counter() - started)


def child_read_psycopg2(scope: str, table: str, out: Path, args: dict) -> dict:
    """What the export read with before ADBC: a psycopg2 named (server-side) cursor of the
    reader's SQL, 5,000 tuples a fetch, each chunk made a record batch."""
    sys.meta_path.insert(0, _NoPandas)
    import psycopg2

    batches = _Batches(args["columns"])
    started = time.perf_counter()
    with closing(psycopg2.connect(SOURCE_URL)) as conn:
        with conn.cursor(name="prism_bench_read") as cursor:
            cursor.itersize = READ_CHUNK_ROWS
            cursor.execute(args["sql"])
            while rows := cursor.fetchmany(READ_CHUNK_ROWS):
                batches.add(rows)
        conn.rollback()  # read only: end the transaction the named cursor lived in
    return batches.result(time.perf_counter() - started)


# -- senders: the stand-ins, and the children that send -----------------------------------------


def senders_hour() -> datetime:
    """A closed hour recent enough for Datadog's 18-hour logs window, and old enough that demo
    traffic's late rows (up to 3 hours) were all ingested."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)


class Sqs:
    """A fresh standard queue per run on moto; read back with ReceiveMessage after the run."""

    def __init__(self, moto):
        self.moto = moto
        self.client = moto.client("sqs")

    def prepare(self) -> dict:
        name = f"prism-bench-{time.monotonic_ns()}"
        url = self.client.create_queue(QueueName=name)["QueueUrl"]
        return {"queue_url": url, "endpoint_url": self.moto.endpoint_url}

    def received(self, target: dict) -> int:
        import orjson

        ids = set()
        while True:
            messages = self.client.receive_message(
                QueueUrl=target["queue_url"], MaxNumberOfMessages=10, VisibilityTimeout=600
            ).get("Messages", [])
            if not messages:
                break
            ids.update(orjson.loads(m["Body"])["request_id"] for m in messages)
        self.client.delete_queue(QueueUrl=target["queue_url"])
        return len(ids)


class PubSubTopic:
    """A fresh topic and subscription per run on the Pub/Sub emulator; read back with Pull."""

    def __init__(self, server, env):
        from google.cloud import pubsub_v1

        self.server = server
        self.env = env
        with env(server):
            self.publisher = pubsub_v1.PublisherClient()
            self.subscriber = pubsub_v1.SubscriberClient()

    def prepare(self) -> dict:
        suffix = time.monotonic_ns()
        topic = f"projects/{self.server.project}/topics/prism-bench-{suffix}"
        subscription = f"projects/{self.server.project}/subscriptions/prism-bench-{suffix}"
        self.publisher.create_topic(name=topic)
        self.subscriber.create_subscription(name=subscription, topic=topic)
        return {"topic_path": topic, "subscription": subscription, "host": self.server.host}

    def received(self, target: dict) -> int:
        import orjson

        ids, empty = set(), 0
        while empty < 3:
            response = self.subscriber.pull(
                request={
                    "subscription": target["subscription"],
                    "max_messages": 1000,
                    "return_immediately": True,
                },
                timeout=30,
            )
            if not response.received_messages:
                empty += 1
                continue
            ids.update(
                orjson.loads(r.message.data)["request_id"] for r in response.received_messages
            )
            self.subscriber.acknowledge(
                request={
                    "subscription": target["subscription"],
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )
        self.subscriber.delete_subscription(subscription=target["subscription"])
        self.publisher.delete_topic(topic=target["topic_path"])
        return len(ids)


class DatadogLogs:
    """The Datadog stand-in intake (in this process); counts the log entries it took."""

    def __init__(self, intake, api_key: str):
        self.intake = intake
        self.api_key = api_key

    def prepare(self) -> dict:
        self.intake.reset()
        return {"endpoint_url": self.intake.url, "api_key": self.api_key}

    def received(self, target: dict) -> int:
        return len({e["request_id"] for e in self.intake.logs if isinstance(e, dict)})


class OtlpDiscard:
    """A loopback OTLP/HTTP receiver that discards what it takes (answering 200 with an empty
    ExportTraceServiceResponse) after counting the distinct span ids, in a thread of this
    process: both candidates post to it, so neither is slowed by a backend."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.span_ids: set[bytes] = set()
        discard = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as every OTLP exporter expects

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                discard.span_ids.update(
                    span.span_id
                    for resource_spans in request.resource_spans
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def prepare(self) -> dict:
        self.span_ids = set()
        return {"endpoint": f"http://127.0.0.1:{self.server.server_address[1]}"}

    def received(self, target: dict) -> int:
        return len(self.span_ids)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sender_integration(kind: str, args: dict):
    from prism_pipelines.integrations import IntegrationsFile

    entry = {"name": INTEGRATION, "history": {"since": BACKFILL_START.isoformat()}}
    if kind == "sqs":
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        entry |= {
            "type": "sqs",
            "queue_url": args["queue_url"],
            "region": "us-east-1",
            "endpoint_url": args["endpoint_url"],
        }
    elif kind == "pubsub":
        os.environ["PUBSUB_EMULATOR_HOST"] = args["host"]
        entry |= {
            "type": "pubsub",
            "topic_path": args["topic_path"],
            "endpoint_url": f"http://{args['host']}",
        }
    elif kind == "otlp":
        entry |= {"type": "otlp", "endpoint": args["endpoint"]}
    else:
        os.environ["PRISM_BENCH_DD_API_KEY"] = args["api_key"]
        entry |= {
            "type": "datadog",
            "api_key": {"env": "PRISM_BENCH_DD_API_KEY"},
            "endpoint_url": args["endpoint_url"],
        }
    return IntegrationsFile.model_validate({"integrations": [entry]}).integrations[0]


def child_send(scope: str, table: str, out: Path, args: dict, kind: str) -> dict:
    """Ours: the sink, through the sync path, as a scheduled run would deliver the hour."""
    from prism_pipelines.sinks import build_sink
    from prism_pipelines.source import GatewaySource
    from prism_pipelines.sync import deliver_partition

    integration = _sender_integration(kind, args)
    ledger = _fresh_ledger()
    source = GatewaySource(SOURCE_URL, table=table)
    sink = build_sink(integration)
    started = time.perf_counter()
    result = deliver_partition(
        integration, sink, source, ledger, datetime.fromisoformat(args["hour"]), settle_seconds=0
    )
    seconds = time.perf_counter() - started
    sink.close()
    return {"seconds": seconds, "records": result.records, "requests": result.requests}


def child_send_single(scope: str, table: str, out: Path, args: dict, kind: str) -> dict:
    """The naive sender: the same records, read the same way, one request per message, each
    acknowledged before the next."""
    from prism_pipelines.batch import Chunk
    from prism_pipelines.records import check_chunk
    from prism_pipelines.source import GatewaySource

    integration = _sender_integration(kind, args)
    source = GatewaySource(SOURCE_URL, table=table)
    hour = datetime.fromisoformat(args["hour"])
    send = _single_sender(kind, integration, args)
    started = time.perf_counter()
    requests = 0
    for rows in source.stream_chunks(hour, after_id=0):
        chunk = Chunk(check_chunk(rows))
        for record, line, source_id in zip(chunk.records, chunk.lines, chunk.ids, strict=True):
            send(record, line, source_id)
            requests += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "records": requests, "requests": requests}


def _single_sender(kind: str, integration, args: dict):
    if kind == "sqs":
        import boto3

        client = boto3.client("sqs", endpoint_url=args["endpoint_url"], region_name="us-east-1")
        return lambda record, line, source_id: client.send_message(
            QueueUrl=args["queue_url"], MessageBody=line.decode()
        )
    if kind == "pubsub":
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1)
        )
        return lambda record, line, source_id: publisher.publish(args["topic_path"], line).result()
    import requests

    from prism_pipelines.sinks.datadog.logs import LogEncoder

    session = requests.Session()
    encoder = LogEncoder(integration, datetime.now(UTC))
    url = f"{args['endpoint_url'].rstrip('/')}/api/v2/logs"
    headers = {"DD-API-KEY": args["api_key"], "Content-Type": "application/json"}

    def send(record: dict, line: bytes, source_id: int) -> None:
        entry = encoder.encode(record, source_id, datetime.fromisoformat(record["timestamp"]))
        session.post(url, json=[entry.body], headers=headers).raise_for_status()

    return send


def child_send_sdk(scope: str, table: str, out: Path, args: dict, kind: str) -> dict:
    """The peer of ``send-otlp``: the same records, read the same way, as spans of the
    OpenTelemetry SDK (TracerProvider, BatchSpanProcessor, OTLPSpanExporter over HTTP/protobuf)
    with the record's times and the same attributes; ids are the SDK's own (random). Its queue
    holds the whole run, because the default 2,048 drops spans when the exporter falls behind."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from prism_pipelines.batch import Chunk
    from prism_pipelines.records import EXPORTED_FIELDS, check_chunk
    from prism_pipelines.sinks.otlp.spans import GENAI_ATTRIBUTES, REQUEST_MODEL
    from prism_pipelines.source import GatewaySource

    source = GatewaySource(SOURCE_URL, table=table)
    hour = datetime.fromisoformat(args["hour"])
    provider = TracerProvider(resource=Resource.create({"service.name": "prism-gateway"}))
    exporter = OTLPSpanExporter(endpoint=f"{args['endpoint']}/v1/traces")
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=1 << 22, max_export_batch_size=1000)
    )
    tracer = provider.get_tracer("prism-pipelines")
    keys = {f: GENAI_ATTRIBUTES.get(f, (f"prism.{f}",)) for f in EXPORTED_FIELDS}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    spans = 0
    for rows in source.stream_chunks(hour, after_id=0):
        for record in Chunk(check_chunk(rows)).records:
            when = datetime.fromisoformat(record["timestamp"])
            start = (when - epoch) // timedelta(milliseconds=1) * 1_000_000
            attributes = {"gen_ai.operation.name": "chat"}
            attributes[REQUEST_MODEL] = record["model_requested"] or record["model"]
            for field, value in record.items():
                if value is not None and field != "model_requested":
                    if field == "guardrail_results":
                        value = json.dumps(value)
                    for key in keys[field]:
                        attributes[key] = value
            span = tracer.start_span(
                f"chat {attributes[REQUEST_MODEL]}",
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=start,
            )
            if record["is_error"]:
                span.set_attribute("error.type", str(record["status_code"]))
                span.set_status(Status(StatusCode.ERROR, record["error_message"]))
            for result in record["guardrail_results"] or ():
                span.add_event(
                    "guardrail",
                    {
                        f"guardrail.{k}": result[k]
                        for k in ("name", "action", "score")
                        if k in result
                    },
                    timestamp=start,
                )
            span.end(end_time=start + (record["latency_ms"] or 0) * 1_000_000)
            spans += 1
    provider.force_flush()
    provider.shutdown()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "records": spans, "requests": 0}


CHILDREN = {
    "ours": child_ours,
    "ours-s3": child_ours_s3,
    "ours-s3-uplink": child_ours_s3,
    "ours-parquet": partial(child_ours, format_="parquet"),
    "ours+dagster": child_dagster,
    "backfill-sync": child_backfill_sync,
    "backfill-dagster": child_backfill_dagster,
    "dlt-sqlalchemy": lambda **kw: child_dlt(**kw, backend="sqlalchemy"),
    "dlt-pyarrow": lambda **kw: child_dlt(**kw, backend="pyarrow"),
    "dlt-pyarrow-parquet": lambda **kw: child_dlt(**kw, backend="pyarrow", file_format="parquet"),
    "pandas": child_pandas,
    "read-adbc": child_read_adbc,
    "read-psycopg3": child_read_psycopg3,
    "read-psycopg2": child_read_psycopg2,
    **{f"send-{kind}": partial(child_send, kind=kind) for kind in SENDER_KINDS},
    **{
        f"send-{kind}-single": partial(child_send_single, kind=kind)
        for kind, peer in SENDER_PEERS.items()
        if peer == "single"
    },
    "send-otlp-sdk": partial(child_send_sdk, kind="otlp"),
}


if __name__ == "__main__":
    main()
