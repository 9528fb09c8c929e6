"""The gateway's table, ``prism_request_logs``, and the streaming reader over one hour of it.

Rows are read by event time (``timestamp``) and ordered by the ingest sequence (``id``, the
cursor). Table and column names can differ from ours: every column has our name as its key and
the gateway's as its name, so the rest of the code only ever says ``table.c.timestamp``.

The reader is the export's hot path. It hands over rows as Arrow record batches already in the
exported record's shape (``records.EXPORTED_FIELDS``, then ``id``), never a Python object per
value on PostgreSQL: ADBC's driver reads the query with binary ``COPY`` straight into Arrow
arrays, the next chunk read in a thread while the caller works on this one. SQLite's rows are
read as tuples and made record batches (``records.rows_to_batch``): the embedded demo's
gateway, where the speed of a server's is not needed.

SQLite has no time type: writers store text, and not all the same text (SQLAlchemy's
``2026-11-29 17:30:00.000000``, ISO's ``2026-11-29T17:30:00``, with ``Z`` or ``+00:00``).
``sqlite_utc`` reads every such form as UTC, and the export, the reconciliation, the alerts,
the late-data sensor and ``status`` all place a row in its hour through ``row_hour`` (the one
definition of a row's partition), so none of them can disagree about where a row belongs. See
docs/reliability.md, "Bad rows", for what happens to rows that cannot be read.

A lost connection mid-read (a replica restarting, a failover, a proxy's timeout) is routine: the
reader reconnects and reads on after the last row it handed over (``_resuming``), up to
``RECONNECTS`` times per read; see docs/reliability.md, "The gateway database".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from prism_pipelines.batch import CHUNK_ROWS
from prism_pipelines.database import make_engine, source_url
from prism_pipelines.errors import PrismError
from prism_pipelines.hours import HOUR, utc
from prism_pipelines.records import EXPORTED_FIELDS, ROW_ID, rows_to_batch
from prism_pipelines.sinks.retry import Backoff
from prism_pipelines.workers import worker

# Our column names, in the order the reader selects them (records.py indexes rows by position).
COLUMN_TYPES = {
    "id": BigInteger().with_variant(Integer, "sqlite"),  # SQLite autoincrements INTEGER only
    "request_id": Text,
    "timestamp": DateTime(timezone=True),
    "ingested_at": DateTime(timezone=True),
    "trace_id": Text,
    "session_id": Text,
    "user_id": Text,
    "model": Text,
    "model_requested": Text,
    "provider": Text,
    "latency_ms": Integer,
    "input_tokens": Integer,
    "output_tokens": Integer,
    "total_tokens": Integer,
    "cost": Double,
    "status_code": Integer,
    "is_error": Boolean,
    "error_message": Text,
    "cache_hit": Boolean,
    "cache_status": Text,
    "guardrail_triggered": Boolean,
    "guardrail_results": Text,
    "routing_strategy": Text,
    "fallback_used": Boolean,
    "is_stream": Boolean,
    "event_type": Text,
}
COLUMNS = tuple(COLUMN_TYPES)
INSERT_COLUMNS = COLUMNS[1:]  # id is the gateway's ingest sequence, never ours to choose
NOT_NULL = {"request_id", "timestamp", "ingested_at", "model", "provider"}
DEFAULTS = {"routing_strategy": "", "event_type": "request"}
#: the span of times a record's ``timestamp`` can hold (four-digit years, ``records``)
_FIRST_TIME = datetime(1, 1, 1, tzinfo=UTC)
_PAST_TIME = "10000-01-01 00:00:00+00"
#: SQLite's canonical UTC text: what ``sqlite_utc`` makes of every text form, and sorts as time
SQLITE_UTC_FORMAT = "%Y-%m-%d %H:%M:%f"
_SQLITE_HOUR_FORMAT = "%Y-%m-%d %H:00:00"
#: the error sqlite3 raises for text that is not UTF-8 (its message quotes the row's text)
_SQLITE_NOT_UTF8 = "Could not decode to UTF-8"
#: how often one read reconnects after losing its connection before the sync fails: a restart
#: or failover costs one, connecting while the server is still down one per try
RECONNECTS = 4
#: the waits before those reconnects: up to 1, 2, 4, 8 s (full jitter), about 15 s at most
RECONNECT_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=8.0, attempts=RECONNECTS)
#: the ``application_name`` of the reader's PostgreSQL connections (``pg_stat_activity``: which
#: backend is reading)
READER_APPLICATION = "prism-pipelines-reader"
#: the severity of an error that ends the session, as libpq writes it ("FATAL:  terminating …")
_SESSION_ENDED = re.compile(r"\b(FATAL|PANIC):  ")
#: ADBC's option for the size of the record batches it reads, in bytes of rows
_BATCH_BYTES = "adbc.postgresql.batch_size_hint_bytes"
#: about what a gateway row takes in Arrow (demo traffic: 280 bytes), so that the driver's
#: batches are about a chunk each
_ROW_BYTES_HINT = 300
#: chunks read ahead of the one the export works on: two keep the cores busier than one (2%
#: faster, four no faster than two: bench/README.md) for one more chunk of memory
READ_AHEAD = 2
#: the end of a read, as ``_read_ahead``'s producer hands it over
_END = object()


def sqlite_utc(column):
    """A SQLite time stored as text in any common form, as canonical UTC text
    (``SQLITE_UTC_FORMAT``); NULL when the text is no valid time."""
    return func.strftime(SQLITE_UTC_FORMAT, column)


def _sqlite_hour_text(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime(_SQLITE_HOUR_FORMAT)


def unknown_columns_problem(columns: Mapping[str, str]) -> str | None:
    """What is wrong with a mapping of our column names to the gateway's, if anything."""
    unknown = set(columns) - set(COLUMNS)
    if not unknown:
        return None
    return (
        f"unknown column name(s) {', '.join(sorted(unknown))}: the keys are our names, one of "
        f"{', '.join(COLUMNS)}"
    )


def gateway_table(
    name: str = "prism_request_logs",
    columns: Mapping[str, str] | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """The gateway table under its real names (``columns`` maps ours to theirs)."""
    columns = dict(columns or {})
    problem = unknown_columns_problem(columns)
    if problem:
        raise PrismError(f"source.columns: {problem}")
    return Table(
        name,
        metadata or MetaData(),
        *(
            Column(
                columns.get(key, key),
                type_,
                key=key,
                primary_key=key == "id",
                autoincrement=key == "id",
                nullable=key not in NOT_NULL and key != "id",
                unique=key == "request_id",
                index=key == "timestamp",
                server_default=DEFAULTS.get(key),
            )
            for key, type_ in COLUMN_TYPES.items()
        ),
    )


class GatewaySource:
    """Read access to the gateway's request logs (which may be a read replica)."""

    def __init__(
        self,
        url: str | None = None,
        table: str = "prism_request_logs",
        columns: Mapping[str, str] | None = None,
        engine: Engine | None = None,
    ):
        self.url = url or source_url()
        self.engine = engine or make_engine(self.url)
        self.table = gateway_table(table, columns)
        c = self.table.c
        postgresql = self.engine.dialect.name == "postgresql"
        exported = {
            **{key: c[key] for key in EXPORTED_FIELDS},
            "cost": cast(c.cost, Double),  # a float whatever the gateway's numeric type
            "guardrail_results": cast(c.guardrail_results, Text),  # parsed by records.py
        }
        # NULL for a time that is no time, or none a record can hold: the row is rejected
        # (records.check_chunk)
        if postgresql:  # UTC, as a time without zone: Arrow's timestamp, no text formatted
            exported["timestamp"] = case(
                (
                    (c.timestamp >= literal(_FIRST_TIME)) & (c.timestamp < literal(_PAST_TIME)),
                    func.timezone("UTC", c.timestamp),
                )
            )
        else:  # text in any form: canonical UTC text, made a time by records.rows_to_batch
            exported["timestamp"] = sqlite_utc(c.timestamp)
        # Labelled by our names, whatever the gateway's: the record batches' column names.
        self._select = select(*(v.label(k) for k, v in exported.items()), c.id.label("id"))

    @property
    def _postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def row_hour(self):
        """The hour a row belongs to (its partition), as the database computes it. On SQLite
        (text): the UTC hour of its ``timestamp`` in any text form, else, for text that is no
        valid time but starts with one's date and hour (``2026-11-29 14:75:00``), that hour: so
        the row is read, and rejected, there instead of belonging to none."""
        ts = self.table.c.timestamp
        if self._postgresql:
            return func.date_trunc("hour", ts)
        named = func.strftime(_SQLITE_HOUR_FORMAT, func.substr(ts, 1, 13, type_=String) + ":00:00")
        return func.coalesce(func.strftime(_SQLITE_HOUR_FORMAT, ts), named)

    def _in_hours(self, start: datetime, end: datetime):
        """Rows whose ``row_hour`` lies in ``[start, end)`` (hours)."""
        ts = self.table.c.timestamp
        if self._postgresql:
            return (ts >= start) & (ts < end)
        # The raw text first, so SQLite's index on timestamp narrows the scan: every text form
        # starts with a date, at most a day from the UTC one (offsets are under 15 hours). Text
        # that starts with the last such date sorts after the date alone, so the bound is the
        # day after it: a row of 22:00 UTC written at +02:00 starts with the next day's date.
        day = timedelta(days=1)
        return and_(
            ts >= literal(f"{start - day:%Y-%m-%d}"),
            ts < literal(f"{end + 2 * day:%Y-%m-%d}"),
            self.row_hour() >= _sqlite_hour_text(start),
            self.row_hour() < _sqlite_hour_text(end),
        )

    def _unsettled(self, settle_seconds: float):
        """Whether a row was ingested within ``settle_seconds`` of now by the database's own
        clock (the host's may differ). A row stamped further in the future than that is not
        waited for (a wrong clock or value would hold the rest of its hour back): it is visible,
        so committed, and a row committed below it is found by the redo (``sync``)."""
        ingested = self.table.c.ingested_at
        if self._postgresql:
            settle = timedelta(seconds=settle_seconds)
            now = func.statement_timestamp(type_=DateTime(timezone=True))
            return (ingested > now - settle) & (ingested <= now + settle)
        ingested = sqlite_utc(ingested)
        return (
            ingested > func.strftime(SQLITE_UTC_FORMAT, "now", f"-{settle_seconds} seconds")
        ) & (ingested <= func.strftime(SQLITE_UTC_FORMAT, "now", f"+{settle_seconds} seconds"))

    def create_table(self) -> None:
        """Create the table (demo, tests, benchmark); production reads the gateway's own."""
        self.table.metadata.create_all(self.engine)

    def in_hour(self, hour: datetime):
        """Rows of ``hour`` (its ``row_hour``): the one filter for everything that reads an
        hour (the export, the reconciliation, the alerts)."""
        return self._in_hours(hour, hour + HOUR)

    def read_statement(
        self,
        hour: datetime,
        *,
        after_id: int,
        through_id: int | None = None,
        settle_seconds: float | None = None,
    ):
        """The query ``stream_chunks`` reads: rows of ``hour`` with ``after_id < id
        [<= through_id]``, by id, with, given ``settle_seconds``, the column
        ``unsettled`` (``_unsettled``)."""
        c = self.table.c
        where = self.in_hour(hour) & (c.id > after_id)
        if through_id is not None:
            where &= c.id <= through_id
        statement = self._select
        if settle_seconds is not None:
            statement = statement.add_columns(self._unsettled(settle_seconds).label("unsettled"))
        return statement.where(where).order_by(c.id)

    def postgresql_text(self, statement) -> str:
        """``statement`` as the reader sends it to PostgreSQL: its values (our own ids and
        hours) rendered as literals, since a query with parameters would not be read by
        ``COPY``."""
        compiled = statement.compile(
            dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}
        )
        return str(compiled)

    def stream_chunks(
        self,
        hour: datetime,
        *,
        after_id: int,
        through_id: int | None = None,
        settle_seconds: float | None = None,
        chunk_rows: int = CHUNK_ROWS,
        counters: Counter | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows of ``hour`` with ``after_id < id [<= through_id]``, by id, as Arrow
        record batches of ``chunk_rows`` rows (the last one shorter).

        Columns (``records.ARROW_TYPES``): ``records.EXPORTED_FIELDS`` (``timestamp`` a UTC
        time, null if the row's is no valid time; ``cost`` a float), ``id``, and, with
        ``settle_seconds``, ``unsettled``: whether the row is younger than that by the database's
        clock (``_unsettled``; the caller stops there: see ``sync._until_unsettled``; one
        snapshot, so no row can slip in between a check and the read). SQLite adds
        ``malformed``, what is wrong with a row that could not be read whole. One query per
        call (``read_statement``), streamed, so memory holds a few chunks whatever the
        size of the hour; read on after the last row handed over if the connection is lost
        (``_resuming``, each reconnect counted in ``counters["source_reconnects"]``).
        """
        statement = self.read_statement(
            hour,
            after_id=after_id,
            through_id=through_id,
            settle_seconds=settle_seconds,
        )
        _keep_freed_memory_for_reuse()
        chunks = self._resuming(statement, chunk_rows, hour, counters)
        return _read_ahead(chunks) if self._postgresql else chunks

    def _resuming(
        self, statement, chunk_rows: int, hour: datetime, counters: Counter | None
    ) -> Iterator[pa.RecordBatch]:
        """The rows of ``statement``; when the connection is lost mid-read, the same statement
        again after the last row handed over, on a new connection, after a backoff.

        The rows come by id, so reading on after the last id handed over skips and repeats
        nothing: the caller sees one stream, and the batch being read goes on into the same
        file. The resumed read is a new snapshot, as the next sync's would be: the settle rule
        holds in it, and a row committed below the cursor meanwhile is found by the redo's
        count check (``sync``) as it would be then. After ``RECONNECTS`` reconnects the read
        fails: nothing past the last recorded batch is recorded, and the next sync goes on
        from the cursor.
        """
        fetch = self._fetch_postgresql if self._postgresql else self._fetch_sqlite
        after, lost = None, 0
        while True:
            resumed = statement if after is None else statement.where(self.table.c.id > after)
            try:
                with closing(_rechunked(fetch(resumed, chunk_rows), chunk_rows)) as chunks:
                    for chunk in chunks:
                        after = chunk.column("id")[-1].as_py()
                        yield chunk
                return
            except Exception as exc:  # classified: only a lost connection is read again
                if not self._connection_lost(exc, reconnecting=lost > 0):
                    raise
                lost += 1
                detail = _first_line(exc)
                if lost > RECONNECTS:
                    raise PrismError(
                        f"reading partition {hour:%Y-%m-%d %H:00} from the gateway database "
                        f"failed: the connection was lost {lost} times, and {RECONNECTS} "
                        f"reconnects are the most one read makes (last: {detail}); the next "
                        "sync reads on from the last delivered batch"
                    ) from None
            if counters is not None:
                counters["source_reconnects"] += 1
            time.sleep(RECONNECT_BACKOFF.delay(lost))

    def _connection_lost(self, exc: Exception, reconnecting: bool) -> bool:
        """Whether ``exc`` means the connection to the gateway database is gone (and, while
        ``reconnecting``, cannot be had yet), as opposed to an error in the query or the data.

        On PostgreSQL the reader is ADBC's driver: a connection refused or ended while the
        query starts is its ``OperationalError``, one already gone its ``InterfaceError``, and
        the server ending the session mid-read (restart, failover, ``pg_terminate_backend``, a
        hot standby cancelling the read for recovery) fails the record batch reader with an
        ``OSError`` ("PQgetCopyData() failed") when it ends in the middle of sending rows. When
        it ends between two of COPY's messages (while the server computes the next rows), the
        reader fails with the server's own error as ``ArrowInvalid``, the class of a query's
        errors too (with ``ProgrammingError`` and ``DataError``): its severity tells them
        apart, FATAL and PANIC ending the session (PostgreSQL's "Message Severity Levels").
        The connection cannot be asked instead: adbc-driver-postgresql up to 1.10 aborts the
        process when a query is sent over a session the server ended (apache/arrow-adbc#3878).
        On SQLite only SQLAlchemy says so (``connection_invalidated``).
        """
        if isinstance(exc, DBAPIError):
            return exc.connection_invalidated
        if not self._postgresql:
            return False
        if isinstance(exc, pa.ArrowInvalid):
            return bool(_SESSION_ENDED.search(str(exc)))
        import adbc_driver_manager

        return isinstance(
            exc, (adbc_driver_manager.OperationalError, adbc_driver_manager.InterfaceError, OSError)
        )

    def _fetch_postgresql(self, statement, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches from ADBC's PostgreSQL driver, which reads with binary ``COPY`` straight
        into Arrow (no Python object per value): of the readers measured, the fastest and the
        one that leaves the most CPU to the rest of the export (bench/README.md, "read"), sent
        as ``postgresql_text``. Through ADBC's low-level API: its DB-API module imports pandas
        and polars (95 MB) for helpers we do not use."""
        import adbc_driver_manager

        sql = self.postgresql_text(statement)
        try:
            with (
                adbc_driver_manager.AdbcConnection(self._adbc_database) as connection,
                adbc_driver_manager.AdbcStatement(connection) as query,
            ):
                # The driver's batches are as large as this many bytes of rows (16 MB by
                # default, 60,000 rows): a chunk's worth keeps the reader's memory that of a
                # couple of chunks.
                query.set_options(**{_BATCH_BYTES: str(chunk_rows * _ROW_BYTES_HINT)})
                query.set_sql_query(sql)
                stream, _ = query.execute_query()
                with pa.RecordBatchReader.from_stream(stream) as reader:
                    yield from reader
        except Exception:
            self._forget_adbc_database()  # after a failure the server may be another one
            raise

    @functools.cached_property
    def _adbc_database(self):
        """ADBC's database handle for the gateway, made once per source: making one reads the
        server's type catalog over a session of its own, 10 ms and a backend per read (a
        backfill of 720 small hours: 30 ms a partition with a handle per read, 20 ms with this
        one; bench/README.md). It keeps no session open: every read still connects anew
        (``_fetch_postgresql``), so no query is ever sent over a session the server ended
        (``_connection_lost``), and a failed read makes the next one ask the catalog again
        (``_forget_adbc_database``)."""
        import adbc_driver_postgresql

        return adbc_driver_postgresql.connect(self._adbc_uri)

    def _forget_adbc_database(self) -> None:
        database = self.__dict__.pop("_adbc_database", None)
        # ADBC refuses to close a database while a connection of it is open, which a failed
        # close of that connection could leave: then it is only dropped (it holds no session).
        with suppress(RuntimeError):
            if database is not None:
                database.close()

    @functools.cached_property
    def _adbc_uri(self) -> str:
        """The gateway URL as libpq takes it (no SQLAlchemy driver name), naming the reader's
        connections ``READER_APPLICATION`` (``pg_stat_activity.application_name``)."""
        url = self.engine.url.set(drivername="postgresql")
        url = url.update_query_dict({"application_name": READER_APPLICATION})
        return url.render_as_string(hide_password=False)

    def _fetch_sqlite(self, statement, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """SQLite, through SQLAlchemy (which makes its 0/1 booleans bools), each chunk of rows
        made a record batch (``records.rows_to_batch``).

        SQLite keeps whatever bytes a writer stored as text; the driver fails the whole read at
        the first value that is not UTF-8. Then the chunk from there is read again as bytes
        (``_fetch_undecodable``), its rows that are not text handed on as malformed, and the
        strict (fast) read resumes after it.
        """
        c = self.table.c
        after = None

        def resumed():
            return statement if after is None else statement.where(c.id > after)

        names = [column.key for column in statement.selected_columns]
        while True:
            try:
                with self.engine.connect() as conn:
                    result = conn.execution_options(
                        stream_results=True, yield_per=chunk_rows
                    ).execute(resumed())
                    for rows in result.partitions():
                        yield rows_to_batch(rows, names)
                        after = rows[-1][ROW_ID]
                return
            except OperationalError as exc:
                if _SQLITE_NOT_UTF8 not in str(exc.orig):
                    raise
            rows, malformed = self._fetch_undecodable(resumed().limit(chunk_rows))
            if not rows:
                return
            yield rows_to_batch(rows, names, malformed)
            after = rows[-1][ROW_ID]

    def _fetch_undecodable(self, statement) -> tuple[list[tuple], dict[int, str]]:
        """One chunk read with text as bytes, and what is wrong with each row whose text is not
        UTF-8, by position, naming the column (never quoting the bytes, which may be anything)."""
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            driver.text_factory = bytes
            try:
                raw = conn.execute(statement).all()
            finally:
                driver.text_factory = str
        rows, malformed = [], {}
        for row in raw:
            values, bad = list(row), []
            for i, value in enumerate(values):
                if isinstance(value, bytes):  # text columns are all exported fields
                    try:
                        values[i] = value.decode()
                    except UnicodeDecodeError:
                        bad.append(EXPORTED_FIELDS[i])
                        values[i] = value.decode(errors="replace")
            if bad:
                malformed[len(rows)] = f"{', '.join(bad)} is not UTF-8 text"
            rows.append(tuple(values))
        return rows, malformed

    def count_rows(self, hour: datetime, after_id: int = 0, through_id: int | None = None) -> int:
        c = self.table.c
        where = self.in_hour(hour) & (c.id > after_id)
        if through_id is not None:
            where &= c.id <= through_id
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).where(where)).scalar_one()

    def count_around(self, hour: datetime, cursor: int) -> tuple[int, int]:
        """Rows of ``hour`` up to ``cursor`` and past it, in one statement (one snapshot): all
        the hour's rows, which PostgreSQL counts from the ``timestamp`` index alone (an
        index-only scan once autovacuum has marked the pages all-visible), and those past the
        cursor, a range of the primary key that is short once the hour is delivered. One count
        with both filters reads every row of the hour for its id (bench/README.md: 107 → 31 ms
        on an hour of 337,725 rows)."""
        c = self.table.c
        rows = select(func.count()).where(self.in_hour(hour)).scalar_subquery()
        past = select(func.count()).where(self.in_hour(hour) & (c.id > cursor)).scalar_subquery()
        with self.engine.connect() as conn:
            total, after = conn.execute(select(rows, past)).one()
        return total - after, after

    def newest_event(self, hour: datetime, through_id: int) -> datetime | None:
        """The latest event time among ``hour``'s rows up to ``through_id`` (status's lag): on
        PostgreSQL a backward index scan that stops at its first row; on SQLite the latest
        time, whatever each row's text form."""
        c = self.table.c
        ts = c.timestamp if self._postgresql else sqlite_utc(c.timestamp)
        statement = select(func.max(ts)).where(self.in_hour(hour) & (c.id <= through_id))
        with self.engine.connect() as conn:
            return _time_of(conn.execute(statement).scalar())

    def hour_summaries(self, start: datetime, end: datetime) -> dict[datetime, tuple[int, int]]:
        """Per hour in ``[start, end)``: (row count, highest id). One grouped query."""
        rows = self._per_hour(start, end, func.count(), func.max(self.table.c.id))
        return {hour: (count, max_id) for hour, count, max_id in rows}

    def hour_counts(self, start: datetime, end: datetime) -> dict[datetime, int]:
        """Per hour in ``[start, end)``: its row count. Unlike ``hour_summaries`` it reads only
        the ``timestamp`` index (an index-only scan on PostgreSQL once the table's pages are
        all-visible, as autovacuum leaves an append-only table), not every row."""
        return dict(self._per_hour(start, end, func.count()))

    def _per_hour(self, start: datetime, end: datetime, *aggregates) -> list[tuple]:
        """``aggregates`` of each hour in ``[start, end)`` that has rows, its hour first."""
        hour = self.row_hour()
        statement = select(hour, *aggregates).where(self._in_hours(start, end)).group_by(hour)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return [(_hour_of(value), *rest) for value, *rest in rows]

    def hours_after(self, after_id: int) -> dict[datetime, int]:
        """The hours of the rows past ``after_id``, each with its highest id: a range scan of
        the primary key over only those rows, whatever the size of the table (the late-data
        sensor's look at what arrived since its last tick)."""
        c = self.table.c
        hour = self.row_hour()
        statement = select(hour, func.max(c.id)).where(c.id > after_id).group_by(hour)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return {_hour_of(value): max_id for value, max_id in rows if value is not None}

    def settled_through(self, after_id: int, settle_seconds: float) -> int:
        """The highest id past ``after_id`` of a row ingested over ``settle_seconds`` ago by
        the database's clock (``after_id`` when there is none): rows at or below it are
        committed, by the settle rule the reader relies on. On PostgreSQL a backward walk of
        the primary key that stops at the first settled row."""
        c = self.table.c
        statement = select(func.max(c.id)).where(c.id > after_id, ~self._unsettled(settle_seconds))
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar() or after_id

    def insert_rows(
        self, chunks: Iterable[list[tuple]], columns: tuple[str, ...] = INSERT_COLUMNS
    ) -> int:
        """Bulk-insert row tuples (demo traffic, tests, benchmark): COPY on PostgreSQL."""
        total = 0
        if self._postgresql:
            names = ", ".join(f'"{self.table.c[k].name}"' for k in columns)
            copy = f'COPY "{self.table.name}" ({names}) FROM STDIN'
            raw = self.engine.raw_connection()
            try:
                with raw.cursor() as cursor:
                    for chunk in chunks:
                        cursor.copy_expert(copy, io.StringIO(_copy_text(chunk)))
                        total += len(chunk)
                raw.commit()
            finally:
                raw.close()
            return total
        # SQLite: the driver's executemany on plain tuples; SQLAlchemy's per-value bind
        # processing would cost more than the insert itself.
        names = ", ".join(f'"{self.table.c[k].name}"' for k in columns)
        marks = ", ".join("?" * len(columns))
        statement = f'INSERT INTO "{self.table.name}" ({names}) VALUES ({marks})'
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for chunk in chunks:
                cursor.executemany(statement, [tuple(map(_sqlite_value, row)) for row in chunk])
                total += len(chunk)
            raw.commit()
        finally:
            raw.close()
        return total


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _time_of(value: datetime | str | None) -> datetime | None:
    """A time the database answers as a UTC datetime (SQLite answers text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc(value)


#: a ``row_hour`` value as a UTC datetime: hours repeat, each parsed once
_hour_of = functools.cache(_time_of)


@functools.cache  # once per process: finding the C library runs ``ldconfig`` (1 ms a read)
def _keep_freed_memory_for_reuse() -> None:
    """Let glibc keep up to 64 MiB of freed memory for reuse instead of handing it back to the OS.

    Every chunk frees a few MiB (rows, records, JSON) that the next chunk allocates again. By
    default glibc returns free memory at the top of the heap as soon as it exceeds 128 KiB, and
    taking it back costs a page fault per 4 KiB: measured, a third of the export's CPU time.
    The peak is unchanged; the process just does not shrink between chunks. A no-op where the
    C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: large buffers come from the heap too


def _first_line(exc: Exception) -> str:
    """The driver's first line of an error (SQLAlchemy's text adds the statement)."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _read_ahead(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``chunks``, read on in a thread while the caller works on the current one.

    ADBC releases the GIL while it reads, so the database's next rows arrive while the caller
    encodes these. One producer per read, in the ``"read-ahead"`` pool, keeps up to
    ``READ_AHEAD`` chunks ready: it alone draws from ``chunks``, so they stay in order and its
    reconnects (``_resuming``) happen there. A caller that stops early (closes this generator)
    stops the producer after the chunk it is reading, which then closes the reader: its cursor
    and connection are released before this returns.
    """
    # A condition over a deque rather than ``queue.Queue``: a producer blocked in a full queue's
    # ``put`` cannot be woken by the caller's stop, only by draining the queue in a loop.
    ready: deque = deque()  # chunks, then _END or the exception that ended the read
    changed = threading.Condition()
    stopped = False

    def produce() -> None:
        outcome: object = _END
        try:
            while True:
                with changed:
                    changed.wait_for(lambda: stopped or len(ready) < READ_AHEAD)
                    if stopped:
                        return
                chunk = next(chunks, _END)  # the read itself, outside the lock
                if chunk is _END:
                    return
                with changed:
                    ready.append(chunk)
                    changed.notify()
        except BaseException as exc:  # anything that ends the read ends the caller's loop too
            outcome = exc
        finally:
            try:
                chunks.close()
            finally:  # the caller waits for this, whatever closing did
                with changed:
                    ready.append(outcome)
                    changed.notify()

    producer = worker("read-ahead").submit(produce)
    try:
        while True:
            with changed:
                changed.wait_for(lambda: ready)
                item = ready.popleft()
                changed.notify()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        with changed:
            stopped = True
            ready.clear()
            changed.notify()
        producer.result()


def _rechunked(batches: Generator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """``batches`` cut into record batches of exactly ``rows`` rows (the last one shorter): the
    driver's batches are sized in bytes, the sync's batches in rows."""
    pending: list[pa.RecordBatch] = []
    held = 0
    try:
        for batch in batches:
            while batch.num_rows:
                take = min(rows - held, batch.num_rows)
                pending.append(batch.slice(0, take))
                held += take
                batch = batch.slice(take)
                if held == rows:
                    yield _concatenated(pending)
                    pending, held = [], 0
        if held:
            yield _concatenated(pending)
    finally:
        batches.close()  # the driver's reader and connection, now, not when collected


def _concatenated(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _sqlite_value(value):
    """Datetimes as SQLAlchemy's SQLite dialect stores them (naive UTC text)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    return str(value)


def _copy_text(rows: list[tuple]) -> str:
    """Rows in COPY's text format (tab-separated, ``\\N`` for null)."""
    return "".join("\t".join(map(_copy_value, row)) + "\n" for row in rows)
