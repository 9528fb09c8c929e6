"""Builds every Dagster object from the integrations file, in one place."""

from __future__ import annotations

from dagster import Definitions

from prism_pipelines.dagster_defs.assets import gateway_table, integration_asset
from prism_pipelines.dagster_defs.jobs import dashboard_job, sync_job, validate_job
from prism_pipelines.dagster_defs.partitions import partitions_for
from prism_pipelines.dagster_defs.resources import PrismResource
from prism_pipelines.dagster_defs.schedules import sync_schedule
from prism_pipelines.integrations import IntegrationsFile
from prism_pipelines.ledger import Ledger


def build_definitions(config: IntegrationsFile, ledger: Ledger | None = None) -> Definitions:
    ledger = ledger or Ledger()
    assets, jobs, schedules = [gateway_table], [], []
    for integration in config.integrations:
        partitions_def = partitions_for(integration, ledger)
        job = sync_job(integration)
        assets.append(integration_asset(integration, partitions_def))
        jobs += [job, validate_job(integration)]
        if integration.type == "datadog":
            jobs.append(dashboard_job(integration))
        schedules.append(sync_schedule(integration, job, partitions_def))
    return Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        resources={"prism": PrismResource.from_settings(config.source)},
    )
