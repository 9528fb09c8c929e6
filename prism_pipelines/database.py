"""Engines for the two databases we touch: the gateway's (read) and our state (read/write)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from prism_pipelines.errors import PrismError
from prism_pipelines.extras import require
from prism_pipelines.home import embedded_dir


def source_url() -> str:
    """``PRISM_SOURCE_URL``, else the embedded SQLite gateway database (demo traffic)."""
    return os.environ.get("PRISM_SOURCE_URL") or f"sqlite:///{embedded_dir() / 'gateway.db'}"


def state_url() -> str:
    """``PRISM_STATE_URL``, else an SQLite file under ``PRISM_HOME`` (the ledger)."""
    return os.environ.get("PRISM_STATE_URL") or f"sqlite:///{embedded_dir() / 'state.db'}"


#: how long an SQLite connection waits for another's lock before it fails
SQLITE_BUSY_SECONDS = 30


def make_engine(url: str, idle_in_transaction_seconds: float | None = None) -> Engine:
    """An engine with the settings every part relies on: UTC sessions, and a driver that exists.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which we do not install;
    psycopg2 is what dagster-postgres uses too, so we name it explicitly.

    ``idle_in_transaction_seconds`` (PostgreSQL): the server ends a session whose transaction
    has waited that long between statements, releasing its locks (the ledger's: a run stalled
    inside a transaction must not keep the lease's row locked past the lease).
    """
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        # Never the URL itself in the message: it may hold a password.
        raise PrismError(
            "a database URL (PRISM_SOURCE_URL or PRISM_STATE_URL) is not one SQLAlchemy can use: "
            "write it like postgresql://user:password@host:5432/database or "
            "sqlite:////absolute/path.db"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.drivername == "postgresql+psycopg2":
        require("postgres", "a PostgreSQL database (PRISM_SOURCE_URL or PRISM_STATE_URL)")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # Timestamps come back in UTC whatever the server's default zone is.
        options = "-c timezone=UTC"
        if idle_in_transaction_seconds is not None:
            milliseconds = max(1, round(idle_in_transaction_seconds * 1000))
            options += f" -c idle_in_transaction_session_timeout={milliseconds}"
        return create_engine(parsed, connect_args={"options": options}, pool_pre_ping=True)
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets Dagster's run processes read the ledger while another writes it. FULL syncs the
    # WAL at every commit (NORMAL may lose the last commits on power loss): a recorded batch
    # stays recorded, and since the sinks fsync a file before it is recorded, the ledger never
    # records a file that is not on disk.
    cursor = dbapi_connection.cursor()
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL``, waiting for another connection switching the same new
    database: SQLite answers the second of two such switches "database is locked" at once, not
    after its busy timeout (four processes opening a new ledger together failed so, 9 times in
    100), so the wait is ours. Once the file is in WAL mode the pragma is a no-op."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and metadata."""
    return make_url(url).render_as_string(hide_password=True)
