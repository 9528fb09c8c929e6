"""Builds every Dagster object from the integrations file, in one place: per integration an
asset (with its checks), ``<name>_sync`` and ``<name>_validate`` jobs, ``<name>_schedule``, the
``<name>_late_data`` and ``<name>_history`` sensors; one ``prism_sync_failures`` for all."""

from __future__ import annotations

from dagster import Definitions

from prism_pipelines.dagster_defs.assets import gateway_table, integration_asset
from prism_pipelines.dagster_defs.jobs import dashboard_job, sync_job, validate_job
from prism_pipelines.dagster_defs.partitions import partitions_for
from prism_pipelines.dagster_defs.resources import PrismResource
from prism_pipelines.dagster_defs.schedules import sync_schedule
from prism_pipelines.dagster_defs.sensors import failure_sensor, history_sensor, late_data_sensor
from prism_pipelines.integrations import IntegrationsFile, destination


def build_definitions(config: IntegrationsFile) -> Definitions:
    """Reads the integrations file and the ledger; writes nothing (the code location loads in
    every process that serves or inspects it)."""
    prism = PrismResource.from_settings(config.source)
    assets, jobs, schedules, sensors = [gateway_table], [], [], []
    for integration in config.integrations:
        partitions_def = partitions_for(integration)
        job = sync_job(integration)
        assets.append(integration_asset(integration, partitions_def))
        jobs += [job, validate_job(integration)]
        if destination(integration).dashboard:
            jobs.append(dashboard_job(integration))
        schedules.append(sync_schedule(integration, job, partitions_def))
        sensors.append(late_data_sensor(integration, job, partitions_def, prism))
        sensors.append(history_sensor(integration, job, partitions_def))
    sensors.append(failure_sensor(config))
    return Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={"prism": prism},
    )
