"""``<name>_schedule``: every sync interval, the current hour, and the previous hour while it is
within its grace period (rows written just after an hour closed still land in it)."""

from datetime import UTC, timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from prism_pipelines.dagster_defs.names import schedule_name
from prism_pipelines.hours import partition_key


def cron_for(minutes: int) -> str:
    return "0 * * * *" if minutes == 60 else f"*/{minutes} * * * *"


def sync_schedule(integration, sync_job, partitions_def):
    grace = timedelta(minutes=integration.grace_minutes)

    @schedule(
        name=schedule_name(integration.name),
        cron_schedule=cron_for(integration.sync_interval_minutes),
        job=sync_job,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED
        if integration.paused
        else DefaultScheduleStatus.RUNNING,
        description=f"Sync '{integration.name}' every {integration.sync_interval_minutes} min.",
    )
    def _schedule(context: ScheduleEvaluationContext):
        now = context.scheduled_execution_time.astimezone(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        hours = [hour - timedelta(hours=1), hour] if now - hour < grace else [hour]
        valid = set(partitions_def.get_partition_keys(current_time=now))
        keys = [partition_key(h) for h in hours if partition_key(h) in valid]
        if not keys:
            return SkipReason(f"{now:%Y-%m-%d %H:%M} is outside the integration's history window")
        return [
            RunRequest(run_key=f"{key}@{now:%Y-%m-%dT%H:%M}", partition_key=key) for key in keys
        ]

    return _schedule
