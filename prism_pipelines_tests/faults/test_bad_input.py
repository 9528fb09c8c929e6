"""Every bad input gets a clear message and no traceback, and no message echoes a secret.

The command line as a user runs it (``prism-pipelines …`` in a fresh process), with a wrong
integrations file, names, hour keys, times and database URLs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prism_pipelines.errors import IntegrationsFileError
from prism_pipelines.integrations import load_integrations

REPO = Path(__file__).resolve().parents[2]
SECRET = "AKIAVERYSECRETVALUE123"
PASSWORD = "hunter2-secret-password"


@pytest.fixture
def home(tmp_path) -> Path:
    """A project folder: a good integrations file, a Dagster home and SQLite databases."""
    (tmp_path / "integrations.yaml").write_text(
        yaml.safe_dump(
            {
                "integrations": [
                    {
                        "name": "archive",
                        "type": "local",
                        "path": str(tmp_path / "bucket"),
                        "history": {"since": "2026-01-01T00:00:00Z"},
                    }
                ]
            }
        )
    )
    return tmp_path


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``prism-pipelines *args`` in a fresh process, with ``env`` over the project's settings."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "PRISM_INTEGRATIONS": str(home / "integrations.yaml"),
        "PRISM_SOURCE_URL": f"sqlite:///{home}/gateway.db",
        "PRISM_STATE_URL": f"sqlite:///{home}/state.db",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", "from prism_pipelines.cli import run; run()", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_clear_failure(result: subprocess.CompletedProcess, *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and 'File "' not in output, output
    for text in expected:
        assert text in output, output
    assert SECRET not in output and PASSWORD not in output
    return output


# -- the integrations file ------------------------------------------------------------------------


def test_integrations_path_naming_a_folder(home):
    folder = home / "config"
    folder.mkdir()
    result = cli(home, "validate", "archive", PRISM_INTEGRATIONS=str(folder))
    assert_clear_failure(result, "is a folder: point PRISM_INTEGRATIONS at the YAML file itself")


def test_integrations_file_that_is_not_utf8(home):
    path = home / "latin1.yaml"
    path.write_bytes("integrations:\n  - name: caf\u00e9\n    type: local\n".encode("latin-1"))
    result = cli(home, "validate", "archive", PRISM_INTEGRATIONS=str(path))
    assert_clear_failure(result, "line 2 is not UTF-8 text: save the file as UTF-8")


def test_yaml_syntax_error_says_where_without_the_lines_text(home):
    path = home / "broken.yaml"
    path.write_text(
        f"integrations:\n  - name: s3\n    type: s3\n    secret_access_key: {SECRET}: oops\n"
    )
    result = cli(home, "validate", "s3", PRISM_INTEGRATIONS=str(path))
    assert_clear_failure(result, "not valid YAML at line 4, column", "mapping values are not")
    with pytest.raises(IntegrationsFileError) as raised:
        load_integrations(path)
    assert SECRET not in str(raised.value)


def test_unknown_source_column_is_refused_when_the_file_is_loaded(home):
    path = home / "integrations.yaml"
    config = yaml.safe_load(path.read_text())
    config["source"] = {"columns": {"created": "created_at"}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(IntegrationsFileError) as raised:
        load_integrations(path)
    assert "source.columns: unknown column name(s) created" in str(raised.value)
    assert_clear_failure(cli(home, "sync", "archive"), "source.columns: unknown column name(s)")


# -- names, hours and times on the command line ----------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["validate", "no_such_name"], "no integration named 'no_such_name' (configured: archive)"),
        (["sync", "no_such_name"], "no integration named 'no_such_name'"),
        (["rejects", "no_such_name"], "no integration named 'no_such_name'"),
        (["status", "no_such_name"], "no integration named 'no_such_name'"),
        (["history", "no_such_name"], "no integration named 'no_such_name'"),
        (["pause", "no_such_name"], "no integration named 'no_such_name'"),
        (["rejects", "archive", "--partition", "2026-11-29T14"], "is not a partition key"),
        (["sync", "archive", "--partition", "2026-11-29 14:00"], "is not a partition key"),
        (["sync", "archive", "--partition", "2025-06-01-10:00"], "not an hour of integration"),
        (["sync", "archive", "--since", "yesterday"], "'yesterday' is not an ISO time"),
        (["sync", "archive", "--since", "2026-01-01", "--until", "soon"], "'soon' is not an ISO"),
        (["seed-demo", "--rows", "-5"], "Invalid value for '--rows': -5 is not in the range"),
        (["seed-demo", "--hours", "0"], "Invalid value for '--hours': 0 is not in the range"),
    ],
)
def test_wrong_names_hours_and_times_get_a_message(home, args, expected):
    assert_clear_failure(cli(home, *args), expected)


# -- databases ----------------------------------------------------------------------------------


def test_unreadable_database_url_is_named_without_its_password(home):
    result = cli(home, "seed-demo", "--rows", "10", PRISM_SOURCE_URL=f"nonsense:{PASSWORD}@x")
    assert_clear_failure(result, "a database URL (PRISM_SOURCE_URL or PRISM_STATE_URL) is not")


def test_source_database_pointing_nowhere(home):
    nowhere = f"postgresql://prism:{PASSWORD}@127.0.0.1:9/gateway"
    assert_clear_failure(
        cli(home, "seed-demo", "--rows", "10", PRISM_SOURCE_URL=nowhere),
        'a database could not be used: connection to server at "127.0.0.1", port 9 failed',
    )
    # Through Dagster: the partition's message, not Dagster's stack trace on the console.
    assert_clear_failure(
        cli(home, "sync", "archive", PRISM_SOURCE_URL=nowhere),
        "1 partition(s) failed; the cursor did not move",
        "port 9 failed",
    )
