"""The files in deploy/ agree with each other: one command, one port, one run limit.

The deployment tier (test_as_deployed.py) runs docker-compose.yaml's commands and dagster.yaml
itself; these checks carry that proof to the Dockerfile and the Helm values, which it cannot run.
"""

from __future__ import annotations

import json
import re

import yaml

from prism_pipelines_tests.deployment.conftest import DEPLOY, LOCATION, compose_command
from prism_pipelines_tests.services import REPO

HELM = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
INSTANCE = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
#: where the Helm key check stops: values that are Kubernetes objects or lists the chart passes on
KUBERNETES_OBJECTS = {"env", "envSecrets", "volumes", "volumeMounts", "resources"}


def _dockerfile_cmd() -> list[str]:
    line = next(
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )
    return json.loads(line.removeprefix("CMD "))


def _without_host_and_port(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-h", "-p"):
            skip = True
        else:
            kept.append(arg)
    return kept


def _code_server():
    (deployment,) = HELM["dagster-user-deployments"]["deployments"]
    return deployment


def test_image_and_helm_start_the_code_server_as_compose_does():
    command = compose_command("code_server")
    assert _dockerfile_cmd() == command
    assert command[:3] == ["dagster", "code-server", "start"]
    assert _code_server()["codeServerArgs"] == _without_host_and_port(command[3:])
    port = int(command[command.index("-p") + 1])
    assert _code_server()["port"] == port
    (server,) = [
        entry["grpc_server"]
        for entry in yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    ]
    assert (server["port"], server["location_name"]) == (port, LOCATION)
    assert command[-2:] == ["--location-name", LOCATION]


def test_helm_has_the_instance_settings_of_dagster_yaml():
    concurrency = INSTANCE["concurrency"]
    assert HELM["concurrency"]["runs"] == {
        "maxConcurrentRuns": concurrency["runs"]["max_concurrent_runs"]
    }
    assert HELM["concurrency"]["pools"] == {
        "granularity": concurrency["pools"]["granularity"],
        "defaultLimit": concurrency["pools"]["default_limit"],
    }
    retries = INSTANCE["run_retries"]
    assert HELM["dagsterDaemon"]["runRetries"] == {
        "enabled": retries["enabled"],
        "maxRetries": retries["max_retries"],
        "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"],
    }
    queue = INSTANCE["run_queue"]
    assert HELM["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] == {
        "dequeueIntervalSeconds": queue["dequeue_interval_seconds"],
        "dequeueUseThreads": queue["dequeue_use_threads"],
    }
    assert (
        HELM["postgresql"]["postgresqlScheme"]
        == (INSTANCE["storage"]["postgres"]["postgres_db"]["scheme"])
    )


def _key_paths(value, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        paths = []
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else key
            stop = key in KUBERNETES_OBJECTS
            paths += [path] if stop else _key_paths(child, path)
        return paths
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _key_paths(value[0], f"{prefix}[]")
    return [prefix]


def test_every_helm_key_is_in_the_checked_list():
    """docs/deploy.md lists the key paths checked against the chart's own values.yaml; a key
    added here must be checked there too."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    listed = re.search(r"<!-- helm-keys -->\n```\n(.*?)```", docs, re.S)
    assert listed, "docs/deploy.md has no <!-- helm-keys --> list"
    assert sorted(_key_paths(HELM)) == sorted(listed.group(1).split())
