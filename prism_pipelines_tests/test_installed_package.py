"""prism-pipelines as users install it: the wheel ``python -m build`` makes, in a fresh virtual
environment with nothing else, used from a project directory of the user's own with no
``PRISM_*`` variables and no ``DAGSTER_HOME``; beside the newest Dagster (constraints.txt) and
beside the oldest line we support (1.12). Nothing may be written inside the installed package.

Slow by nature (two environments with Dagster in them): pip's wheel cache is shared by both
environments and kept between runs.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from prism_pipelines.hours import HOUR, floor_hour, partition_key, utcnow

REPO = Path(__file__).resolve().parents[1]
PIP_TIMEOUT = 900


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)], REPO)
    [built] = out.glob("prism_pipelines-*.whl")
    return built


def _user_env(**extra: str) -> dict[str, str]:
    """The environment of a user who never heard of our variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PRISM_", "DAGSTER_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**env, **extra}


def _run(argv: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env or _user_env(), capture_output=True, text=True, timeout=PIP_TIMEOUT
    )
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def _venv(where: Path, *requirements: str) -> Path:
    """A fresh virtual environment with ``requirements`` installed; returns its bin folder."""
    _run([sys.executable, "-m", "venv", str(where)], where.parent)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, *requirements], where.parent)
    return where / "bin"


def _site_packages(bin_: Path) -> Path:
    out = _run(
        [str(bin_ / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], bin_
    )
    return Path(out.strip())


def _files(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` with its modification time (compiled bytecode aside, which
    Python itself may add)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime
        for p in folder.rglob("*")
        if p.is_file() and p.suffix != ".pyc"
    }


def _project(folder: Path, hour) -> Path:
    """A Dagster project of the user's: the component declared in a defs.yaml, a relative
    archive path, and the same integration in an integrations file for the CLI."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "my_project"
            version = "0.1.0"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "my_project"
            """
        )
    )
    package = folder / "my_project"
    (package / "defs" / "prism").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg

            defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        )
    )
    integration = textwrap.dedent(
        f"""\
        - name: archive
          type: local
          path: archive
          prefix: prism
          history: {{since: "{hour.isoformat()}"}}
        """
    )
    (package / "defs" / "prism" / "defs.yaml").write_text(
        "type: prism_pipelines.PrismIntegrations\nattributes:\n  integrations:\n"
        + textwrap.indent(integration, "    ")
    )
    (folder / "integrations.yaml").write_text(
        "integrations:\n" + textwrap.indent(integration, "  ")
    )
    return folder


def _use_from_a_project(bin_: Path, folder: Path) -> None:
    """seed-demo, the component materializing an hour, status: from the user's directory."""
    hour = floor_hour(utcnow()) - 2 * HOUR
    project = _project(folder, hour)
    site = _site_packages(bin_)
    before = _files(site)

    assert "version" in _run([str(bin_ / "prism-pipelines"), "--version"], project)
    _run([str(bin_ / "prism-pipelines"), "seed-demo", "--rows", "3000", "--hours", "4"], project)
    assert (project / ".prism" / "gateway.db").is_file()

    _run(
        [
            str(bin_ / "dagster"),
            "asset",
            "materialize",
            "-m",
            "my_project.definitions",
            "--select",
            "prism/archive",
            "--partition",
            partition_key(hour),
        ],
        project,
    )
    files = list((project / "archive" / "prism" / "logs").rglob("batch_*.jsonl.gz"))
    assert files, "the hour landed nowhere under the project's relative path"
    assert all(f"hour={hour:%H}" in str(f) for f in files)
    records = [
        orjson.loads(line) for f in files for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    assert records and all(r["timestamp"].startswith(f"{hour:%Y-%m-%dT%H}") for r in records)

    status = _run([str(bin_ / "prism-pipelines"), "status", "--json"], project)
    row = orjson.loads(status)  # one JSON object per integration
    assert row["name"] == "archive" and row["status"] != "Error", row
    assert (project / ".dagster_home" / "dagster.yaml").is_file()

    after = _files(site)
    assert after == before, (
        f"written inside site-packages: {sorted(set(after.items()) - set(before.items()))[:5]}"
    )
    assert not list(site.rglob(".prism")) and not list(site.rglob("archive"))


def test_the_wheel_works_from_a_users_project_beside_the_newest_dagster(wheel, tmp_path):
    # [s3] beside the tested set: the S3 SDK and nothing of Azure's or Google's.
    bin_ = _venv(tmp_path / "venv", "-c", str(REPO / "constraints.txt"), f"{wheel}[s3]")
    installed = _run([str(bin_ / "python"), "-m", "pip", "list", "--format=freeze"], tmp_path)
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert "boto3" in names
    assert not {n for n in names if n.startswith(("azure", "google-cloud", "pandas"))}, names
    _use_from_a_project(bin_, tmp_path / "my_project")

    # An integration whose SDK is not installed: told at load, with the command to run.
    (tmp_path / "my_project" / "integrations.yaml").write_text(
        "integrations:\n"
        "  - {name: blobs, type: azure_blob, container: c, connection_string: {env: CS}}\n"
    )
    refused = subprocess.run(
        [str(bin_ / "prism-pipelines"), "status"],
        cwd=tmp_path / "my_project",
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert (
        "integration 'blobs': type azure_blob needs the 'azure' extra: "
        "pip install 'prism-pipelines[azure]'" in refused.stderr
    )


def test_the_wheel_works_beside_dagster_1_12(wheel, tmp_path):
    bin_ = _venv(tmp_path / "venv", str(wheel), "dagster==1.12.*")
    version = _run(
        [str(bin_ / "python"), "-c", "import dagster; print(dagster.__version__)"], tmp_path
    )
    assert version.startswith("1.12."), version
    _use_from_a_project(bin_, tmp_path / "my_project")
