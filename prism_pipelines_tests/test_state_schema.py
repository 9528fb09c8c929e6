"""The state database's schema is versioned: a new one is migrated to head, one made before
versioning is upgraded in place with every cursor kept, and processes starting at once migrate
it once."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import MetaData, inspect, select, text

from prism_pipelines.cli import main
from prism_pipelines.database import make_engine
from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow
from prism_pipelines.ledger import HEAD, Ledger, StateDatabaseError, upgrade
from prism_pipelines.ledger.schema import VERSION_TABLE, scripts
from prism_pipelines.source import GatewaySource
from prism_pipelines_tests import legacy_state_schema as legacy
from prism_pipelines_tests.conftest import Prism
from prism_pipelines_tests.factories import gateway_rows

H = floor_hour(utcnow()) - 3 * HOUR
KEY = partition_key(H)
LEGACY_TABLES = (legacy.batches, legacy.partitions, legacy.rejects, legacy.integrations)


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request):
    return request.param


@pytest.fixture
def state_url(backend, request, tmp_path) -> str:
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def gateway(tmp_path, monkeypatch) -> GatewaySource:
    url = f"sqlite:///{tmp_path}/gateway.db"
    monkeypatch.setenv("PRISM_SOURCE_URL", url)
    source = GatewaySource(url)
    source.create_table()
    yield source
    source.engine.dispose()


def test_head_is_alembics_and_a_ledger_at_head_opens_without_alembic(tmp_path):
    """A run's process opens the ledger; at head it reads the revision with one query and does
    not load Alembic (an eighth of a run's imports)."""
    assert scripts().get_current_head() == HEAD
    url = f"sqlite:///{tmp_path}/state.db"
    Ledger(url).engine.dispose()  # migrated to head
    opened = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from prism_pipelines.ledger import Ledger; "
            f"Ledger({url!r}); print('alembic' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert opened.stdout.strip() == "False", opened.stderr


def upgrade_state(url: str) -> str:
    result = CliRunner().invoke(main, ["upgrade-state"], env={"PRISM_STATE_URL": url})
    assert result.exit_code == 0, result.output
    return result.output


def schema_of(url: str) -> dict:
    """Every prism table's columns (name, type, nullable, default), primary key and indexes."""
    engine = make_engine(url)
    found = inspect(engine)
    schema = {
        table: (
            [
                (c["name"], c["type"].compile(engine.dialect), c["nullable"], c.get("default"))
                for c in found.get_columns(table)
            ],
            found.get_pk_constraint(table),
            sorted(
                (i["name"], tuple(i["column_names"]), i["unique"]) for i in found.get_indexes(table)
            ),
        )
        for table in found.get_table_names()
        if table != VERSION_TABLE
    }
    engine.dispose()
    return schema


def drop_everything(url: str) -> None:
    engine = make_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)
    engine.dispose()


def read_files(folder: Path) -> dict[str, list[str]]:
    return {
        str(p.relative_to(folder)): [
            orjson.loads(line)["request_id"] for line in gzip.open(p).read().splitlines()
        ]
        for p in sorted(folder.rglob("*.jsonl.gz"))
    }


def test_revision_0001_is_the_schema_created_before_versioning(state_url):
    engine = make_engine(state_url)
    legacy.metadata.create_all(engine)
    legacy.notifications_metadata.create_all(engine)
    engine.dispose()
    before = schema_of(state_url)
    drop_everything(state_url)

    upgrade_state(state_url)

    assert len(before) == 6
    after = schema_of(state_url)
    # Later revisions only add to it: 0002 the batches' published_version, 0003 what the
    # manifests need (each batch's sha256 and event times, each partition's manifest time),
    # 0004 the version of the manifest each partition wrote last.
    columns, primary_key, indexes = after["prism_batches"]
    added = [c[0] for c in columns[-4:]]
    assert added == ["published_version", "sha256", "first_event", "last_event"]
    assert all(c[2] for c in columns[-4:])  # nullable
    after["prism_batches"] = (columns[:-4], primary_key, indexes)
    columns, primary_key, indexes = after["prism_partitions"]
    assert [c[0] for c in columns[-2:]] == ["manifest_at", "manifest_version"]
    assert all(c[2] for c in columns[-2:])  # nullable
    after["prism_partitions"] = (columns[:-2], primary_key, indexes)
    assert after == before


def test_a_new_state_database_migrates_to_head_and_a_second_upgrade_does_nothing(state_url):
    first = upgrade_state(state_url)
    second = upgrade_state(state_url)

    assert first.strip().endswith(f"upgraded from no revision to revision {HEAD}")
    assert second.strip().endswith(f"at revision {HEAD}, nothing to do")
    ledger = Ledger(state_url)
    assert ledger.cursor("archive", H) == 0 and ledger.partition_states("archive") == []
    assert "prism_notifications" in inspect(ledger.engine).get_table_names()


def test_a_state_database_from_before_versioning_is_upgraded_and_syncs_on_without_resending(
    state_url, gateway, dagster_instance, monkeypatch, tmp_path
):
    archive = {
        "name": "archive",
        "type": "local",
        "path": str(tmp_path / "bucket"),
        "history": {"since": (H - timedelta(days=1)).isoformat()},
    }
    gateway.insert_rows([gateway_rows(H, 300)])
    # What the code before versioning left: its tables (create_all, no notifications table yet)
    # holding a delivered partition, whose files are in the archive.
    scratch = Prism(tmp_path, dagster_instance, monkeypatch, f"sqlite:///{tmp_path}/scratch.db")
    assert scratch.configure(archive).sync("archive", KEY).metadata["records"] == 300
    engine = make_engine(state_url)
    legacy.metadata.create_all(engine)
    with scratch.ledger.engine.connect() as source, engine.begin() as target:
        for table in LEGACY_TABLES:
            rows = [dict(r) for r in source.execute(select(table)).mappings()]
            if rows:
                target.execute(table.insert(), rows)
    engine.dispose()
    delivered = read_files(tmp_path / "bucket")

    output = upgrade_state(state_url)

    assert output.strip().endswith(f"upgraded from no revision to revision {HEAD}")
    gateway.insert_rows([gateway_rows(H, 120, start=300)])
    prism = Prism(tmp_path, dagster_instance, monkeypatch, state_url).configure(archive)
    assert prism.ledger.cursor("archive", H) == 300
    run = prism.sync("archive", KEY)

    assert run.metadata["cursor_before"] == 300 and run.metadata["records"] == 120
    files = read_files(tmp_path / "bucket")
    assert {k: v for k, v in files.items() if k in delivered} == delivered
    ids = Counter(i for batch in files.values() for i in batch)
    assert len(files) == 2 and len(ids) == 420 and set(ids.values()) == {1}
    assert prism.sync("archive", KEY).metadata["records"] == 0


def _opened_at_once(url: str, openers: int = 4) -> Counter:
    """What ``upgrade`` returned to each of ``openers`` engines opening ``url`` at once."""
    engines = [make_engine(url) for _ in range(openers)]
    with ThreadPoolExecutor(len(engines)) as pool:
        results = list(pool.map(upgrade, engines))
    for engine in engines:
        engine.dispose()
    return Counter(results)


def test_processes_opening_the_ledger_at_once_migrate_it_once(state_url):
    assert _opened_at_once(state_url) == {(None, HEAD): 1, (HEAD, HEAD): 3}


def test_a_new_sqlite_ledger_opened_by_several_at_once_is_never_locked(tmp_path):
    """Each connection switches a new SQLite file to WAL; SQLite refuses the second of two
    switches at once without waiting, which failed about one new ledger in ten (CI did)."""
    for attempt in range(40):
        url = f"sqlite:///{tmp_path}/state-{attempt}.db"
        assert _opened_at_once(url) == {(None, HEAD): 1, (HEAD, HEAD): 3}


def test_an_unreachable_state_database_is_a_message_without_its_password():
    command = [sys.executable, "-c", "from prism_pipelines.cli import run; run()", "upgrade-state"]
    url = "postgresql+psycopg2://prism:hunter2@127.0.0.1:9/prism_state"
    done = subprocess.run(
        command, env={**os.environ, "PRISM_STATE_URL": url}, capture_output=True, text=True
    )

    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(
        "error: cannot migrate the state database "
        "postgresql+psycopg2://prism:***@127.0.0.1:9/prism_state: "
    )
    assert "check PRISM_STATE_URL" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_a_state_database_newer_than_the_code_is_refused_with_a_message(state_url):
    upgrade_state(state_url)
    engine = make_engine(state_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()

    result = CliRunner().invoke(main, ["upgrade-state"], env={"PRISM_STATE_URL": state_url})

    assert result.exit_code == 1 and isinstance(result.exception, StateDatabaseError)
    assert (
        f"is at revision 9999, which this version of prism-pipelines does not know (its "
        f"newest is {HEAD})" in str(result.exception)
    )
