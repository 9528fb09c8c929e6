"""Builds every Dagster object from the integrations file, in one place: per integration an
asset (with its checks), ``<name>_sync`` and ``<name>_validate`` jobs, ``<name>_schedule`` and the
``<name>_late_data`` sensor; and one ``prism_sync_failures`` sensor for all of them."""

from __future__ import annotations

from dagster import Definitions

from prism_pipelines.dagster_defs.assets import gateway_table, integration_asset
from prism_pipelines.dagster_defs.jobs import dashboard_job, sync_job, validate_job
from prism_pipelines.dagster_defs.partitions import partitions_for
from prism_pipelines.dagster_defs.resources import PrismResource
from prism_pipelines.dagster_defs.schedules import sync_schedule
from prism_pipelines.dagster_defs.sensors import failure_sensor, late_data_sensor
from prism_pipelines.integrations import IntegrationsFile, destination
from prism_pipelines.ledger import Ledger


def build_definitions(config: IntegrationsFile, ledger: Ledger | None = None) -> Definitions:
    ledger = ledger or Ledger()
    prism = PrismResource.from_settings(config.source)
    assets, jobs, schedules, sensors = [gateway_table], [], [], []
    for integration in config.integrations:
        partitions_def = partitions_for(integration, ledger)
        job = sync_job(integration)
        assets.append(integration_asset(integration, partitions_def))
        jobs += [job, validate_job(integration)]
        if destination(integration).dashboard:
            jobs.append(dashboard_job(integration))
        schedules.append(sync_schedule(integration, job, partitions_def))
        sensors.append(late_data_sensor(integration, job, partitions_def, prism))
    sensors.append(failure_sensor(config))
    return Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={"prism": prism},
    )
