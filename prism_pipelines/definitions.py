"""The code location: ``dagster dev`` (workspace.yaml) loads ``defs`` from here."""

from prism_pipelines.dagster_defs.definitions import build_definitions
from prism_pipelines.integrations import load_integrations

defs = build_definitions(load_integrations())
