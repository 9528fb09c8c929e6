"""The status of an integration, as the spec names it: Active, Syncing, Paused, Error.

Derived, never stored: from the Dagster instance (is the schedule running, is a sync run in
progress, how did the last one end) and from the ledger (the last success, the errors since).

- **Syncing**: a run of ``<name>_sync`` is queued or in progress.
- **Paused**: the schedule ``<name>_schedule`` is stopped (in the UI, or ``prism-pipelines
  pause``; ``paused: true`` in the integrations file is its default).
- **Error**: the latest sync attempt failed: a partition's error is newer than the last
  success, or the last run failed before any partition was attempted. A successful sync clears it.
- **Active**: otherwise.

The schedule's state is read the way the Dagster UI and daemon read it: by the schedule's
selector (code location, repository, name). The command line is not the code server, so it
rebuilds the same identity from ``workspace.yaml`` (``code_location_handle``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import yaml
from dagster import DagsterInstance, DagsterRunStatus, RepositoryDefinition, RunsFilter
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import RepositoryPythonOrigin
from dagster._core.remote_origin import CodeLocationOrigin, ManagedGrpcPythonEnvCodeLocationOrigin
from dagster._core.remote_representation.external import RemoteSchedule, RemoteSensor
from dagster._core.remote_representation.external_data import ScheduleSnap, SensorSnap
from dagster._core.remote_representation.handle import RepositoryHandle
from dagster._core.scheduler.instigation import InstigatorStatus
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from sqlalchemy import and_, func, select

from prism_pipelines.database import PROJECT_ROOT
from prism_pipelines.ledger import Ledger, batches, partitions
from prism_pipelines.ledger import integrations as configured
from prism_pipelines.source import HOUR, GatewaySource

ACTIVE, SYNCING, PAUSED, ERROR = "Active", "Syncing", "Paused", "Error"

#: how far back the late-data sensor and ``status`` compare the source with the ledger
DEFAULT_LOOKBACK_HOURS = 48
REPOSITORY_NAME = "__repository__"  # what Definitions names its repository
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def lookback() -> timedelta:
    """``PRISM_LATE_DATA_LOOKBACK_HOURS``: how many closed hours are compared each time."""
    hours = os.environ.get("PRISM_LATE_DATA_LOOKBACK_HOURS")
    return timedelta(hours=int(hours) if hours else DEFAULT_LOOKBACK_HOURS)


def utcnow() -> datetime:
    return datetime.now(UTC)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _from_timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# -- the schedule and sensors, as the UI and the daemon know them --------------------------------


def code_location_handle(
    origin: CodeLocationOrigin | None = None, repository_name: str | None = None
) -> RepositoryHandle:
    """The repository handle of this code location: ``origin`` when Dagster gives it (a sensor
    run by the daemon), else the one ``dagster dev`` builds from the project's workspace.yaml.
    Schedule and sensor state are keyed by location, repository and name, so both agree."""
    if origin is None:
        module, location = _workspace_entry()
        origin = ManagedGrpcPythonEnvCodeLocationOrigin(
            LoadableTargetOrigin(module_name=module), location_name=location
        )
    else:
        module = getattr(getattr(origin, "loadable_target_origin", None), "module_name", None)
    return RepositoryHandle(
        repository_name=repository_name or REPOSITORY_NAME,
        code_location_origin=origin,
        repository_python_origin=RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer(
                module=module or "prism_pipelines.definitions",
                fn_name="defs",
                working_directory=str(PROJECT_ROOT),
            ),
        ),
        display_metadata={},
    )


def _workspace_entry() -> tuple[str, str]:
    """(module, location name) of the first entry of workspace.yaml (python_module, python_file
    or grpc_server), as Dagster names the location."""
    module, location = "prism_pipelines.definitions", "prism_pipelines"
    try:
        workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text()) or {}
    except FileNotFoundError:
        return module, location
    for entry in workspace.get("load_from") or []:
        target = next(iter(entry.values()), None) if isinstance(entry, dict) else None
        if isinstance(target, str):  # python_module: prism_pipelines.definitions
            return target, target
        if isinstance(target, dict):
            module = target.get("module_name", module)
            return module, target.get("location_name") or module
    return module, location


def remote_schedule(
    repository_def: RepositoryDefinition, name: str, handle: RepositoryHandle | None = None
) -> RemoteSchedule:
    schedule_def = repository_def.get_schedule_def(name)
    return RemoteSchedule(
        ScheduleSnap.from_def(schedule_def, repository_def), handle or code_location_handle()
    )


def remote_sensor(
    repository_def: RepositoryDefinition, name: str, handle: RepositoryHandle | None = None
) -> RemoteSensor:
    sensor_def = repository_def.get_sensor_def(name)
    return RemoteSensor(
        SensorSnap.from_def(sensor_def, repository_def), handle or code_location_handle()
    )


def schedule_state(instance: DagsterInstance, schedule: RemoteSchedule):
    """The schedule's effective state: what is stored, else its default status in code."""
    stored = instance.get_instigator_state(schedule.get_remote_origin_id(), schedule.selector_id)
    return schedule.get_current_instigator_state(stored)


def is_paused(
    instance: DagsterInstance,
    repository_def: RepositoryDefinition,
    name: str,
    handle: RepositoryHandle | None = None,
) -> bool:
    schedule = remote_schedule(repository_def, f"{name}_schedule", handle)
    return not schedule_state(instance, schedule).is_running


def set_paused(
    instance: DagsterInstance,
    repository_def: RepositoryDefinition,
    name: str,
    paused: bool,
    handle: RepositoryHandle | None = None,
) -> None:
    """Pause: stop the schedule and the late-data sensor (what the UI's toggles do). Resume:
    start both; the next syncs and the sensor catch up the hours that accrued meanwhile."""
    schedule = remote_schedule(repository_def, f"{name}_schedule", handle)
    sensor_name = f"{name}_late_data"
    sensor = (
        remote_sensor(repository_def, sensor_name, handle)
        if repository_def.has_sensor_def(sensor_name)
        else None
    )
    if paused:
        instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
        if sensor:
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
    else:
        instance.start_schedule(schedule)
        if sensor:
            instance.start_sensor(sensor)


def _paused_since(instance: DagsterInstance, schedule: RemoteSchedule) -> datetime | None:
    """Dagster keeps no stop time: the last tick is when it last ran on schedule."""
    ticks = instance.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id, limit=1)
    return _from_timestamp(ticks[0].timestamp) if ticks else None


# -- runs ----------------------------------------------------------------------------------------


def run_failure_message(instance: DagsterInstance, run_id: str) -> str | None:
    """What a failed run says: its step failures' descriptions, else the run failure's text."""
    from dagster import DagsterEventType

    messages = []
    for record in instance.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    ).records:
        event = record.event_log_entry.dagster_event
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                messages.append(data.user_failure_data.description)
            elif data.error:
                error = data.error
                while error.cause is not None:  # Dagster's wrapper → the user code's exception
                    error = error.cause
                message = error.message.strip()
                if error.cls_name and not message.startswith(error.cls_name):
                    message = f"{error.cls_name}: {message}"
                messages.append(message)
        elif not messages and event.message:
            messages.append(event.message)
    return "\n".join(messages) or None


# -- the ledger's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerErrors:
    last_success_at: datetime | None
    last_sync_at: datetime | None
    #: the latest error newer than the last success, with its partition, and when the run of
    #: failures began (None: the last attempt succeeded)
    error: str | None = None
    error_partition: datetime | None = None
    error_since: datetime | None = None
    failing_partitions: int = 0


def ledger_errors(ledger: Ledger, name: str) -> LedgerErrors:
    p = partitions.c
    with ledger.engine.connect() as conn:
        last_success, last_sync = conn.execute(
            select(func.max(p.last_success_at), func.max(p.last_sync_at)).where(
                p.integration == name
            )
        ).one()
        last_success = _utc(last_success)
        newer = p.last_error.is_not(None)
        if last_success is not None:
            newer &= p.last_error_at > last_success
        errors = conn.execute(
            select(p.hour, p.last_error, p.last_error_at)
            .where((p.integration == name) & newer)
            .order_by(p.last_error_at.desc())
        ).all()
        failing = conn.execute(
            select(func.count()).where((p.integration == name) & p.last_error.is_not(None))
        ).scalar_one()
    if not errors:
        return LedgerErrors(last_success, _utc(last_sync), failing_partitions=failing)
    hour, message, _ = errors[0]
    return LedgerErrors(
        last_success_at=last_success,
        last_sync_at=_utc(last_sync),
        error=message,
        error_partition=_utc(hour),
        error_since=min(_utc(e[2]) for e in errors),
        failing_partitions=failing,
    )


def delivered_since(ledger: Ledger, name: str, since: datetime) -> tuple[int, int]:
    """(records, rejects) of the batches the destination acknowledged since ``since``."""
    b = batches.c
    with ledger.engine.connect() as conn:
        records, rejects = conn.execute(
            select(func.coalesce(func.sum(b.records), 0), func.coalesce(func.sum(b.rejects), 0))
            .where(b.integration == name)
            .where(b.finished_at >= since)
        ).one()
    return int(records), int(rejects)


def first_configured(ledger: Ledger, name: str) -> datetime | None:
    with ledger.engine.connect() as conn:
        return _utc(
            conn.execute(
                select(configured.c.first_configured_at).where(configured.c.name == name)
            ).scalar()
        )


def first_delivery(ledger: Ledger, name: str) -> datetime | None:
    with ledger.engine.connect() as conn:
        return _utc(
            conn.execute(
                select(func.min(batches.c.started_at)).where(batches.c.integration == name)
            ).scalar()
        )


def newest_delivered_event(source: GatewaySource, ledger: Ledger, name: str) -> datetime | None:
    """Event time of the newest record delivered: how far behind real time the destination is."""
    b = batches.c
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(b.hour, func.max(b.through_id))
            .where(and_(b.integration == name, b.through_id.is_not(None), b.records > 0))
            .group_by(b.hour)
            .order_by(b.hour.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    hour, cursor = _utc(row[0]), row[1]
    c = source.table.c
    with source.engine.connect() as conn:
        newest = conn.execute(
            select(func.max(c.timestamp)).where(
                (c.timestamp >= hour) & (c.timestamp < hour + HOUR) & (c.id <= cursor)
            )
        ).scalar()
    if isinstance(newest, str):  # SQLite
        newest = datetime.fromisoformat(newest)
    return _utc(newest)


@dataclass(frozen=True)
class HourBacklog:
    """One hour whose source rows are not all accounted for in the ledger."""

    hour: datetime
    rows: int  # in the source
    max_id: int  # in the source
    cursor: int  # the ledger's
    accounted: int  # delivered + rejected, per the ledger

    @property
    def missing(self) -> int:
        return max(self.rows - self.accounted, 0)


def backlog(
    source: GatewaySource, ledger: Ledger, name: str, start: datetime, end: datetime
) -> list[HourBacklog]:
    """Hours in ``[start, end)`` with source rows past the ledger's cursor, or more rows than the
    ledger accounts for (late arrivals, paused periods, failed runs, out-of-order commits).
    One grouped query on each side."""
    if end <= start:
        return []
    summaries = source.hour_summaries(start, end)
    states = {s.hour: s for s in ledger.partition_states(name, since=start)}
    behind = []
    for hour, (rows, max_id) in sorted(summaries.items()):
        state = states.get(hour)
        cursor = state.cursor if state else 0
        accounted = (state.delivered + state.rejected) if state else 0
        if max_id > cursor or rows > accounted:
            behind.append(HourBacklog(hour, rows, max_id, cursor, accounted))
    return behind


# -- the status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegrationStatus:
    name: str
    type: str
    status: str
    since: datetime | None
    last_success_at: datetime | None
    lag_seconds: float | None
    pending_rows: int
    delivered_today: int
    rejects_today: int
    error: str | None = None
    error_partition: str | None = None
    failing_partitions: int = 0
    run_id: str | None = None

    def as_dict(self) -> dict:
        values = asdict(self)
        for key in ("since", "last_success_at"):
            values[key] = values[key].isoformat() if values[key] else None
        return values


def integration_status(
    integration,
    *,
    instance: DagsterInstance,
    repository_def: RepositoryDefinition,
    ledger: Ledger,
    source: GatewaySource | None = None,
    handle: RepositoryHandle | None = None,
    now: datetime | None = None,
) -> IntegrationStatus:
    """The integration's status now; ``source`` adds lag and pending rows (two cheap queries)."""
    now = now or utcnow()
    name = integration.name
    job = f"{name}_sync"
    schedule = remote_schedule(repository_def, f"{name}_schedule", handle)
    state = schedule_state(instance, schedule)
    in_progress = instance.get_run_records(RunsFilter(job_name=job, statuses=IN_PROGRESS), limit=1)
    finished = instance.get_run_records(RunsFilter(job_name=job, statuses=FINISHED), limit=1)
    errors = ledger_errors(ledger, name)

    error, error_since, error_partition = errors.error, errors.error_since, errors.error_partition
    last_run = finished[0] if finished else None
    if (
        error is None
        and last_run is not None
        and last_run.dagster_run.status == DagsterRunStatus.FAILURE
        and (
            errors.last_success_at is None or last_run.end_time > errors.last_success_at.timestamp()
        )
    ):
        # The run failed before the ledger saw any partition (e.g. the process died).
        error = run_failure_message(instance, last_run.dagster_run.run_id) or "the last run failed"
        error_since = _from_timestamp(last_run.end_time)
        error_partition = None

    run_id = None
    if in_progress:
        record = in_progress[0]
        status, run_id = SYNCING, record.dagster_run.run_id
        since = _from_timestamp(record.start_time) or _utc(record.create_timestamp)
    elif not state.is_running:
        status, since = PAUSED, _paused_since(instance, schedule)
    elif error is not None:
        status, since = ERROR, error_since
    else:
        status, since = ACTIVE, _active_since(instance, job, state, ledger, name)

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    delivered, rejected = delivered_since(ledger, name, today)
    lag = pending = None
    if source is not None:
        newest = newest_delivered_event(source, ledger, name)
        lag = round((now - newest).total_seconds(), 1) if newest else None
        pending = sum(
            h.missing for h in backlog(source, ledger, name, floor_hour(now) - lookback(), now)
        )
    return IntegrationStatus(
        name=name,
        type=integration.type,
        status=status,
        since=since,
        last_success_at=errors.last_success_at,
        lag_seconds=lag,
        pending_rows=pending or 0,
        delivered_today=delivered,
        rejects_today=rejected,
        error=error,
        error_partition=error_partition.strftime("%Y-%m-%d-%H:%M") if error_partition else None,
        failing_partitions=errors.failing_partitions,
        run_id=run_id,
    )


def _active_since(instance, job: str, state, ledger: Ledger, name: str) -> datetime | None:
    """When it last recovered from a failed run, else when its schedule was started, else when
    the integration was first configured."""
    failed = instance.get_run_records(
        RunsFilter(job_name=job, statuses=[DagsterRunStatus.FAILURE]), limit=1
    )
    if failed and failed[0].end_time:
        recovered = instance.get_run_records(
            RunsFilter(
                job_name=job,
                statuses=[DagsterRunStatus.SUCCESS],
                created_after=_from_timestamp(failed[0].end_time),
            ),
            limit=1,
            ascending=True,
        )
        if recovered and recovered[0].end_time:
            return _from_timestamp(recovered[0].end_time)
    started = getattr(state.instigator_data, "start_timestamp", None)
    if state.status == InstigatorStatus.RUNNING and started:
        return _from_timestamp(started)
    return first_delivery(ledger, name) or first_configured(ledger, name)


# -- sync history --------------------------------------------------------------------------------

#: what a sink counts as its unit of delivery, in the run metadata
UNIT_KEYS = ("files", "messages", "log_requests")


@dataclass(frozen=True)
class SyncRun:
    """One run of ``<name>_sync``, summed over the partitions it materialized."""

    run_id: str
    status: str
    finished_at: datetime | None
    partitions: list[str]
    partitions_label: str
    records: int
    rejects: int
    units: int
    bytes: int
    seconds: float | None
    trigger: str
    error: str | None

    def as_dict(self) -> dict:
        values = asdict(self)
        values["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return values


def _partitions_label(tags, keys: list[str]) -> str:
    if tags.get("dagster/partition"):
        return tags["dagster/partition"]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    if start and end:
        return start if start == end else f"{start} … {end}"
    return ", ".join(keys) or "-"


def sync_history(instance: DagsterInstance, name: str, limit: int = 20) -> list[SyncRun]:
    """The last ``limit`` finished runs of ``<name>_sync``, newest first, from the instance:
    each run's materialization events (one per partition, with the sync's metadata) summed,
    and, for a failed run, its error."""
    from dagster import DagsterEventType

    history = []
    for record in instance.get_run_records(
        RunsFilter(job_name=f"{name}_sync", statuses=FINISHED), limit=limit
    ):
        run = record.dagster_run
        totals = {"records": 0, "rejects": 0, "units": 0, "bytes": 0}
        keys = []
        for event_record in instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        ).records:
            materialization = event_record.asset_materialization
            if materialization is None:
                continue
            meta = {k: v.value for k, v in materialization.metadata.items()}
            keys.append(materialization.partition)
            totals["records"] += int(meta.get("records") or 0)
            totals["rejects"] += int(meta.get("rejects") or 0)
            totals["bytes"] += int(meta.get("bytes") or 0)
            totals["units"] += sum(int(meta.get(k) or 0) for k in UNIT_KEYS)
        seconds = (
            record.end_time - record.start_time if record.end_time and record.start_time else None
        )
        failed = run.status == DagsterRunStatus.FAILURE
        history.append(
            SyncRun(
                run_id=run.run_id,
                status=run.status.value,
                finished_at=_from_timestamp(record.end_time),
                partitions=keys,
                partitions_label=_partitions_label(run.tags, keys),
                seconds=round(seconds, 3) if seconds is not None else None,
                trigger=run.tags.get("prism/trigger")
                or ("schedule" if run.tags.get("dagster/schedule_name") else "manual"),
                error=run_failure_message(instance, run.run_id) if failed else None,
                **totals,
            )
        )
    return history
