"""The test harness: a fresh gateway database per test, the integrations file, Dagster in
process, and the real services (services.py) for the destinations."""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, instance_for_test
from sqlalchemy import create_engine, text

from prism_pipelines.dagster_defs.definitions import build_definitions
from prism_pipelines.dagster_defs.names import sync_run_config
from prism_pipelines.integrations import load_integrations
from prism_pipelines.ledger import Ledger
from prism_pipelines.source import GatewaySource

pytest_plugins = ["prism_pipelines_tests.services", "prism_pipelines_tests.datadog_intake"]

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def pytest_configure(config) -> None:
    """Signals as a terminal's run has them. A run started in the background by a shell without
    job control ignores SIGINT, and that reaches past the test process: the children it starts
    ignore Ctrl-C (the live demo's test), and Dagster, which gives SIGTERM the SIGINT handler it
    finds, makes the processes it starts ignore SIGTERM (its compute-log ``tail``, which then
    holds a run 30 s)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def pg_url():
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"prism_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def gateway(pg_url, monkeypatch) -> GatewaySource:
    """The gateway table on PostgreSQL; the pipeline finds it through PRISM_SOURCE_URL."""
    monkeypatch.setenv("PRISM_SOURCE_URL", pg_url)
    source = GatewaySource(pg_url)
    source.create_table()
    yield source
    source.engine.dispose()


@pytest.fixture
def dagster_instance(tmp_path) -> DagsterInstance:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@dataclass
class SyncRun:
    success: bool
    metadata: dict
    error: str | None
    result: object


class Prism:
    """The pipeline as a user drives it: an integrations file, then Dagster jobs."""

    def __init__(self, folder: Path, instance: DagsterInstance, monkeypatch, state_url: str):
        self.folder = folder
        self.instance = instance
        self.path = folder / "integrations.yaml"
        monkeypatch.setenv("PRISM_INTEGRATIONS", str(self.path))
        monkeypatch.setenv("PRISM_STATE_URL", state_url)
        self.ledger = Ledger(state_url)
        self.defs = None

    def configure(self, *integrations: dict, **top_level) -> Prism:
        self.path.write_text(yaml.safe_dump({"integrations": list(integrations), **top_level}))
        self.config = load_integrations(self.path)
        self.defs = build_definitions(self.config)
        return self

    def job(self, name: str):
        return self.defs.resolve_job_def(name)

    def sync(
        self, name: str, partition_key: str, full: bool = False, raise_on_error: bool = True
    ) -> SyncRun:
        return self._run(name, {"partition_key": partition_key}, full, raise_on_error)[
            partition_key
        ]

    def backfill(
        self, name: str, partition_keys: list[str], per_run: int = 24
    ) -> dict[str, SyncRun]:
        """Runs over ranges of partitions, as a backfill with the asset's policy launches them."""
        runs = {}
        for i in range(0, len(partition_keys), per_run):
            keys = partition_keys[i : i + per_run]
            tags = {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
            runs.update(self._run(name, {"tags": tags}, False, True, keys))
        return runs

    def _run(self, name, selection, full, raise_on_error, keys=None) -> dict[str, SyncRun]:
        result = self.job(f"{name}_sync").execute_in_process(
            instance=self.instance,
            run_config=sync_run_config(name, full),
            raise_on_error=False,
            **selection,
        )
        error = _failure(result)
        if raise_on_error and error:
            raise AssertionError(f"sync of {name} failed: {error}")
        keys = keys or [selection["partition_key"]]
        by_partition = {
            e.partition: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()
        }
        return {k: SyncRun(result.success, by_partition.get(k, {}), error, result) for k in keys}

    def validate(self, name: str) -> tuple[bool, str]:
        result = self.job(f"{name}_validate").execute_in_process(
            instance=self.instance, raise_on_error=False
        )
        if result.success:
            return True, result.output_for_node(f"{name}_validate_op")
        return False, _failure(result)


def _failure(result) -> str | None:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            return data.error.message if data.error else "step failed"
    return None


@pytest.fixture
def state_url(pg_url) -> str:
    """The ledger's database: the test's PostgreSQL database (its own tables)."""
    return pg_url


@pytest.fixture
def prism(tmp_path, dagster_instance, monkeypatch, state_url) -> Prism:
    return Prism(tmp_path, dagster_instance, monkeypatch, state_url)
