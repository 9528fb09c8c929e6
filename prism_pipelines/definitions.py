"""The code location: ``dagster dev`` (workspace.yaml) loads ``defs`` from here, the integrations
file built by the same component a Dagster project declares in its ``defs.yaml``."""

import dagster as dg

from prism_pipelines.component import PrismIntegrations

defs = dg.build_defs_for_component(PrismIntegrations.from_file())
