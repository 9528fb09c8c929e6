"""The code location as `dagster dev` loads it from workspace.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from prism_pipelines.dagster_defs.assets import GATEWAY_TABLE, asset_key

ROOT = Path(__file__).resolve().parent.parent


def test_workspace_loads_and_validates_with_every_integration_type(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "integrations.yaml").write_text(
        yaml.safe_dump(
            {
                "integrations": [
                    {"name": "files", "type": "local", "path": str(tmp_path / "bucket")},
                    {"name": "lake", "type": "s3", "bucket": "b", "region": "us-east-1"},
                    {
                        "name": "blobs",
                        "type": "azure_blob",
                        "container": "c",
                        "connection_string": {"env": "AZ_CONN"},
                    },
                    {"name": "gcs_lake", "type": "gcs", "bucket": "b"},
                    {
                        "name": "queue",
                        "type": "sqs",
                        "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q.fifo",
                        "region": "us-east-1",
                    },
                    {"name": "topic", "type": "pubsub", "topic_path": "projects/p/topics/t"},
                    {"name": "dd", "type": "datadog", "site": "EU1", "api_key": {"env": "DD_KEY"}},
                ]
            }
        )
    )
    env = {
        **os.environ,
        "PRISM_INTEGRATIONS": str(tmp_path / "integrations.yaml"),
        "PRISM_STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "PRISM_SOURCE_URL": f"sqlite:///{tmp_path}/gateway.db",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    dagster = Path(sys.executable).parent / "dagster"
    validated = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "All code locations passed validation" in validated.stdout + validated.stderr

    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prism_pipelines.definitions import defs;"
            "repo = defs.get_repository_def();"
            "print([j.name for j in repo.get_all_jobs()]);"
            "print([s.name for s in repo.schedule_defs]);"
            "g = defs.resolve_asset_graph();"
            "print({k.to_user_string(): sorted(d.to_user_string() for d in g.get(k).parent_keys)"
            " for k in g.get_all_asset_keys()});"
            "print(defs.resolve_assets_def(['prism', 'lake']).specs_by_key);"
            "print(defs.resolve_implicit_global_asset_job_def().executor_def.name)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listing.returncode == 0, listing.stderr[-3000:]
    jobs, schedules, lineage, spec, asset_job_executor = listing.stdout.splitlines()[-5:]
    for name in ("files", "lake", "blobs", "gcs_lake", "queue", "topic", "dd"):
        assert f"'{name}_sync'" in jobs and f"'{name}_validate'" in jobs
        assert f"'{name}_schedule'" in schedules
        assert yaml.safe_load(lineage)[asset_key(name).to_user_string()] == [
            GATEWAY_TABLE.to_user_string()
        ]
    assert "'dd_create_dashboard'" in jobs
    assert "dagster/kind/s3" in spec
    # a backfill launched from an asset's page runs as the asset job: one step, in its process
    assert asset_job_executor == "in_process"
