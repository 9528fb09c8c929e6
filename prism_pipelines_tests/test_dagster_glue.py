"""The Dagster layer as an operator meets it: only public Dagster API, read-only loading, the
run limit per integration and the late-data interval."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from sqlalchemy import create_engine, inspect

from prism_pipelines.dagster_defs.definitions import build_definitions
from prism_pipelines.dagster_defs.names import asset_key
from prism_pipelines.errors import PrismError
from prism_pipelines.integrations import load_integrations

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_uses_no_private_dagster_module():
    private = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "prism_pipelines").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"dagster\._", line)
    ]
    assert private == []


def test_each_integration_is_a_pool_of_three_runs(tmp_path, monkeypatch):
    """Every run that syncs an integration, whoever launched it (a backfill from the UI too),
    holds a slot of the integration's pool from launch to end: 3 at once, in `make ui`'s
    instance as in the deployed one."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        pools = instance.get_concurrency_config().pool_config
    assert (pools.pool_granularity.value, pools.default_pool_limit) == ("run", 3)
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert deployed["concurrency"]["pools"] == {"granularity": "run", "default_limit": 3}
    path = _integrations(tmp_path, monkeypatch)
    defs = build_definitions(load_integrations(path))
    assert defs.resolve_assets_def(asset_key("files")).op.pool == "prism_files"


def _integrations(tmp_path, monkeypatch, **entry) -> Path:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        yaml.safe_dump(
            {"integrations": [{"name": "files", "type": "local", "path": str(tmp_path), **entry}]}
        )
    )
    monkeypatch.setenv("PRISM_INTEGRATIONS", str(path))
    return path


def test_loading_the_definitions_writes_nothing_to_the_state_database(tmp_path, monkeypatch):
    state = tmp_path / "state.db"
    monkeypatch.setenv("PRISM_STATE_URL", f"sqlite:///{state}")
    path = _integrations(tmp_path, monkeypatch, history="none")
    defs = build_definitions(load_integrations(path))
    assert defs.resolve_job_def("files_sync")
    assert (
        not state.exists() or inspect(create_engine(f"sqlite:///{state}")).get_table_names() == []
    )


def test_late_data_interval_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_STATE_URL", f"sqlite:///{tmp_path}/state.db")
    path = _integrations(tmp_path, monkeypatch)

    def interval() -> int:
        repository = build_definitions(load_integrations(path)).get_repository_def()
        return repository.get_sensor_def("files_late_data").minimum_interval_seconds

    assert interval() == 300
    monkeypatch.setenv("PRISM_LATE_DATA_INTERVAL_SECONDS", "45")
    assert interval() == 45
    monkeypatch.setenv("PRISM_LATE_DATA_INTERVAL_SECONDS", "soon")
    with pytest.raises(PrismError, match="PRISM_LATE_DATA_INTERVAL_SECONDS .* got 'soon'"):
        interval()
