"""Where prism-pipelines keeps a user's files: ``PRISM_HOME``, by default the working directory.

Installed from a wheel, the package lives in site-packages, which belongs to the environment and
is replaced by the next install: nothing is ever written there. Everything a user owns (the
embedded gateway and state databases, a local archive's relative ``path:``, the default
integrations file, the CLI's Dagster home) is found under ``PRISM_HOME`` instead, read at every
use so a process or a test may set it. What the package itself ships (the instance config, the
state database's migrations) is read through ``importlib.resources``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def prism_home() -> Path:
    """``PRISM_HOME``, else the current working directory."""
    return Path(os.environ.get("PRISM_HOME") or os.getcwd()).expanduser().absolute()


def in_home(path: str | Path) -> Path:
    """A path a user wrote: absolute as written, relative ones under ``PRISM_HOME``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else prism_home() / path


def embedded_dir() -> Path:
    """The embedded defaults' folder: ``.prism/gateway.db`` (demo traffic), ``.prism/state.db``."""
    return prism_home() / ".prism"


def dagster_home() -> str:
    """``DAGSTER_HOME``, else ``.dagster_home`` under ``PRISM_HOME``, seeded on first use with
    the instance config the package ships (the run limit per integration, the queue's pace).
    Set in the environment, so the Dagster instance and the runs it starts use it."""
    home = os.environ.get("DAGSTER_HOME") or str(prism_home() / ".dagster_home")
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_bytes(resources.files("prism_pipelines").joinpath("dagster.yaml").read_bytes())
    os.environ["DAGSTER_HOME"] = home
    return home
