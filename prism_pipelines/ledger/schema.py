"""The state database's schema: versioned, and migrated with Alembic to the newest revision.

The migrations ship inside this package (``migrations/``), so an installed wheel carries them
and no ``alembic.ini`` is needed. Every process that opens the ledger (the code server, the
daemon, each run worker, the CLI) migrates first; ``prism-pipelines upgrade-state`` does the
same explicitly. Only one process migrates at a time: the check and the upgrade run in one
transaction that holds a PostgreSQL advisory lock (SQLite: ``BEGIN IMMEDIATE``, the database's
write lock), and whoever comes second finds the database at head already. Migrations only
move forward: a rollback of the code is a restore of the state database's backup.

The revision lives in ``prism_alembic_version``, not Alembic's default ``alembic_version``: the
state database may be the PostgreSQL database of Dagster's own storage, which versions its
tables in ``alembic_version``.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from prism_pipelines.errors import PrismError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest revision this code knows (test_state_schema checks it is Alembic's head). Known
#: without Alembic, so a process whose database is at head never imports it: every run's
#: process opens the ledger, and Alembic was an eighth of its imports (bench/README.md, target 1).
HEAD = "0004"
VERSION_TABLE = "prism_alembic_version"
#: The PostgreSQL advisory lock key the upgrade holds ("prism" in ASCII).
MIGRATION_LOCK = 0x707269736D
#: Alembic's migration context is global to the process: one upgrade at a time in it.
_IN_PROCESS = threading.Lock()


class StateDatabaseError(PrismError):
    """The state database cannot be reached or migrated."""


@cache
def scripts():
    """Alembic's view of the migrations (``alembic.script.ScriptDirectory``)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def current(conn: Connection) -> str | None:
    """The database's revision (None: a new database, or one from before it was versioned)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the state database to head; returns (revision before, revision after).

    A database at head is only read. A database made before the schema was versioned has
    today's tables and no revision: revision 0001 adopts it (it creates only the tables that
    are missing), keeping every row and cursor.
    """
    target = HEAD
    try:
        with engine.connect() as conn:
            found = current(conn)
        if found == target:
            return found, target
        with _IN_PROCESS, engine.begin() as conn:
            _lock(conn)
            found = current(conn)  # another process may have migrated while we waited
            if found is not None and found not in {s.revision for s in scripts().walk_revisions()}:
                raise StateDatabaseError(
                    f"the state database {engine.url.render_as_string()} is at revision {found}, "
                    f"which this version of prism-pipelines does not know (its newest is "
                    f"{target}): a newer version migrated it. Run that version, or restore the "
                    "state database's backup from before the upgrade."
                )
            if found != target:
                from alembic import command
                from alembic.config import Config

                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StateDatabaseError(
            f"cannot migrate the state database {engine.url.render_as_string()}: "
            f"{reason}; check PRISM_STATE_URL and that the database accepts connections"
        ) from None
    return found, target


def _lock(conn: Connection) -> None:
    """Hold the migration lock until the transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
