"""The code location: ``dagster dev`` (workspace.yaml) loads ``defs`` from here, the integrations
file built by the same component a Dagster project declares in its ``defs.yaml``."""

import dagster as dg

from prism_pipelines.component import PrismIntegrations

defs = dg.Definitions.merge(
    dg.build_defs_for_component(PrismIntegrations.from_file()),
    # Every run here materializes one asset: one step. The jobs say so themselves (jobs.py);
    # this is for the runs of Dagster's own asset job, a backfill launched from an asset's
    # page, which would otherwise start a second process for that step, every run. Not in the
    # component: in a project of yours the default executor is yours (docs/component.md).
    dg.Definitions(executor=dg.in_process_executor),
)
