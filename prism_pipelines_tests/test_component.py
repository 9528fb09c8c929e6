"""prism-pipelines inside another Dagster project: the PrismIntegrations component, declared in
the example project's defs.yaml, loaded by Dagster, checked by ``dg`` and run."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from dagster import ComponentTree, build_defs_for_component

from prism_pipelines import PrismIntegrations
from prism_pipelines.dagster_defs.definitions import build_definitions
from prism_pipelines.errors import IntegrationsFileError
from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow
from prism_pipelines.integrations import load_integrations
from prism_pipelines.source import GatewaySource
from prism_pipelines_tests.factories import gateway_rows

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "prism_in_your_project"
DEFS_YAML = Path("src/my_project/defs/prism/defs.yaml")
BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A scratch copy of the example project, its archive, gateway and ledger in tmp_path."""
    copy = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, copy)
    monkeypatch.setenv("PRISM_SOURCE_URL", f"sqlite:///{tmp_path}/gateway.db")
    monkeypatch.setenv("PRISM_STATE_URL", f"sqlite:///{tmp_path}/state.db")
    monkeypatch.delenv("PRISM_INTEGRATIONS", raising=False)
    home = tmp_path / "dg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return copy


def declare(project: Path, **changes) -> dict:
    """The example's first integration with ``changes``, written back to its defs.yaml."""
    path = project / DEFS_YAML
    document = yaml.safe_load(path.read_text())
    document["attributes"]["integrations"][0].update(changes)
    path.write_text(yaml.safe_dump(document))
    return document


def test_example_project_materializes_a_partition_into_the_archive(
    project, tmp_path, monkeypatch, dagster_instance
):
    hour = floor_hour(utcnow()) - 2 * HOUR
    declare(project, path=str(tmp_path / "archive"), history={"since": hour.isoformat()})
    gateway = GatewaySource()
    gateway.create_table()
    rows = gateway_rows(hour, 5)
    gateway.insert_rows([rows])

    monkeypatch.syspath_prepend(str(project / "src"))
    defs = importlib.import_module("my_project.definitions").defs()
    assert {s.name for s in defs.schedules} == {"archive_local_schedule"}
    assert {s.name for s in defs.sensors} == {
        "archive_local_late_data",
        "archive_local_history",
        "prism_sync_failures",
    }
    result = defs.resolve_job_def("archive_local_sync").execute_in_process(
        instance=dagster_instance, partition_key=partition_key(hour)
    )

    assert result.success
    [materialization] = result.asset_materializations_for_node("prism__archive_local")
    assert materialization.metadata["records"].value == 5
    [archive_file] = (tmp_path / "archive" / "prism" / "logs").rglob("*.jsonl.gz")
    assert f"hour={hour:%H}" in str(archive_file)
    lines = gzip.decompress(archive_file.read_bytes()).splitlines()
    records = [orjson.loads(line) for line in lines]
    assert sorted(r["request_id"] for r in records) == sorted(row[0] for row in rows)


@pytest.fixture
def dg(project):
    """``dg`` in the example project; prism-pipelines is registered with it by the entry point
    of its (editable) install, as an installed one is."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(project / "src")]),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dg"), *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


def test_dg_lists_the_component_and_checks_the_example(dg):
    listed = dg("list", "components", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    [entry] = [
        c
        for c in json.loads(listed.stdout)["items"]
        if c["key"] == "prism_pipelines.PrismIntegrations"
    ]
    assert entry["summary"].startswith("Prism Gateway request logs to storage")

    checked = dg("check", "defs")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "All definitions loaded successfully" in checked.stdout


def test_dg_scaffolds_a_defs_yaml_that_loads_and_checks_it(dg, project):
    shutil.rmtree(project / DEFS_YAML.parent)  # a project without prism yet
    scaffolded = dg("scaffold", "defs", "prism_pipelines.PrismIntegrations", "prism")
    assert scaffolded.returncode == 0, scaffolded.stdout[-2000:] + scaffolded.stderr[-2000:]
    written = (project / DEFS_YAML).read_text()
    assert written.splitlines()[0].startswith("#")  # commented, for a person to edit
    assert yaml.safe_load(written)["type"] == "prism_pipelines.PrismIntegrations"
    for check in ("yaml", "defs"):
        checked = dg("check", check)
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]

    (project / DEFS_YAML).write_text(
        written.replace("sync_interval_minutes: 5", "sync_interval_minutes: 7")
    )
    refused = dg("check", "defs")
    assert refused.returncode != 0
    assert (
        "integration 'archive_local': sync_interval_minutes: must be one of 1, 2, 5, 10, 15, 30, "
        "60 (minutes)" in refused.stdout + refused.stderr
    )


def test_templated_secret_is_refused_not_resolved(monkeypatch):
    # Dagster's templating would put the secret's value into the definitions: the component
    # takes its attributes verbatim, and the file's models refuse it as an inline secret.
    monkeypatch.setenv("PRISM_TEST_DD_KEY", "dd-secret-value-123")
    attributes = {
        "integrations": [
            {
                "name": "dd",
                "type": "datadog",
                "api_key": "{{ env.PRISM_TEST_DD_KEY }}",
                "sync_interval_minutes": 7,
            }
        ]
    }

    context = ComponentTree.for_test().load_context
    component = PrismIntegrations.from_attributes_dict(attributes=attributes, context=context)
    assert component.integrations[0]["api_key"] == "{{ env.PRISM_TEST_DD_KEY }}"
    with pytest.raises(IntegrationsFileError) as refused:
        component.build_defs(context)
    assert refused.value.problems == [
        "integration 'dd': sync_interval_minutes: must be one of 1, 2, 5, 10, 15, 30, 60 (minutes)",
        "integration 'dd': api_key: a secret is never written inline: write it as {env: VAR_NAME}",
    ]
    assert "dd-secret-value-123" not in str(refused.value)


def test_component_builds_what_the_integrations_file_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_STATE_URL", f"sqlite:///{tmp_path}/state.db")
    attributes = {
        "integrations": [
            {"name": "files", "type": "local", "path": str(tmp_path / "archive")},
            {"name": "dd", "type": "datadog", "api_key": {"env": "PRISM_TEST_DD_KEY"}},
        ],
        "source": {"table": "gateway_logs", "columns": {"timestamp": "created_at"}},
    }
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump(attributes))

    from_component = build_defs_for_component(
        PrismIntegrations.from_attributes_dict(attributes=attributes)
    )
    from_file = build_definitions(load_integrations(path))

    def shape(defs):
        return (
            sorted(j.name for j in defs.jobs),
            sorted(s.name for s in defs.schedules),
            sorted(s.name for s in defs.sensors),
            sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()),
            sorted(map(str, defs.resolve_asset_graph().asset_check_keys)),
            defs.resources["prism"].table,
        )

    assert shape(from_component) == shape(from_file)
    assert PrismIntegrations.from_file(path) == PrismIntegrations(**attributes)


def test_component_reports_every_problem_as_the_file_does(tmp_path):
    attributes = {
        "integrations": [
            {"name": "lake", "type": "s3", "region": "us-east-1", "secret_access_key": "AKIA123"},
            {"name": "lake", "type": "local"},
        ]
    }
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump(attributes))
    with pytest.raises(IntegrationsFileError) as from_file:
        load_integrations(path)

    context = ComponentTree.for_test().load_context
    component = PrismIntegrations.from_attributes_dict(attributes=attributes, context=context)
    with pytest.raises(IntegrationsFileError) as from_component:
        component.build_defs(context)

    assert from_component.value.problems == from_file.value.problems
    assert "integration 'lake': bucket: Field required" in from_component.value.problems
    assert "AKIA123" not in str(from_component.value)
