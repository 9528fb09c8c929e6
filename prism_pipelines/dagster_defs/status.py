"""The status of an integration, as the spec names it: Active, Syncing, Paused, Error.

Derived, never stored: from the Dagster instance (is the schedule running, is a sync run in
progress, how did the last one end) and from the ledger (backlog.py: the last success, the errors
since).

- **Syncing**: a run of ``<name>_sync`` is queued or in progress.
- **Paused**: the schedule ``<name>_schedule`` is stopped (in the UI, or ``prism-pipelines
  pause``; ``paused: true`` in the integrations file is its default).
- **Error**: the latest sync attempt failed: a partition's error is newer than the last
  success, or the last run failed before any partition was attempted. A successful sync clears it.
- **Active**: otherwise.

Schedule and sensor state are the instance's instigator states, found by the schedule's and the
sensor's names in whatever code location serves them (the daemon records a running one on its
first tick, the UI's toggles and ``set_paused`` record theirs), and ``set_paused`` loads the
location from the origin recorded with them: nothing here assumes a location's name, so a
deployment that names its location differently, or serves it from a gRPC code server, reads
and toggles the same state as the UI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from prism_pipelines.backlog import (
    delivered_since,
    first_configured,
    first_delivery,
    ledger_errors,
    newest_delivered_event,
    pending_rows,
)
from prism_pipelines.dagster_defs.names import (
    asset_key,
    history_sensor_name,
    late_data_sensor_name,
    schedule_name,
    sync_job_name,
)
from prism_pipelines.dagster_defs.partitions import hours_between
from prism_pipelines.errors import PrismError
from prism_pipelines.hours import (
    HOUR,
    PARTITION_KEY_FORMAT,
    hour_of_key,
    partition_key,
    utc,
    utcnow,
)
from prism_pipelines.ledger import Ledger
from prism_pipelines.source import GatewaySource

ACTIVE, SYNCING, PAUSED, ERROR = "Active", "Syncing", "Paused", "Error"
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def _from_timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# -- the schedule and sensors, as the UI and the daemon know them --------------------------------


def instigator_states(instance: DagsterInstance, name: str, location: str | None = None) -> list:
    """The stored states of the schedule or sensor ``name`` in every code location that has one
    (only ``location``'s when given and it has one)."""
    found = [state for state in instance.all_instigator_state() if state.name == name]
    own = [state for state in found if state.selector.location_name == location]
    return own or found


def location_of(state) -> str:
    return state.selector.location_name


def is_paused(instance: DagsterInstance, integration, location: str | None = None) -> bool:
    """Its schedule is stopped; with no stored state, the file's ``paused`` (the default status
    in code) decides."""
    states = instigator_states(instance, schedule_name(integration.name), location)
    if not states:
        return integration.paused
    return not any(state.is_running for state in states)


#: The code location as the project's workspace.yaml declares it: where ``set_paused`` loads it
#: when no daemon or UI has recorded where the instance's location is served yet.
PROJECT_LOCATION = {
    "python_module": {
        "module_name": "prism_pipelines.definitions",
        "location_name": "prism_pipelines",
    }
}
#: how long one ``dagster schedule|sensor start|stop`` may take (it loads the code location)
TOGGLE_TIMEOUT_SECONDS = 600
#: The daemon writes an instigator's whole state back at each tick (Dagster reads it, then
#: writes it with the tick's data, milliseconds apart): a stop or start that lands in between is
#: undone. ``set_paused`` reads the states back this long after toggling, and toggles again
#: what was undone, up to ``TOGGLE_ATTEMPTS`` times.
TOGGLE_SETTLE_SECONDS = 1.0
TOGGLE_ATTEMPTS = 3


class ToggleFailed(PrismError):
    """``dagster schedule|sensor start|stop`` failed: its own message says why."""


def set_paused(
    instance: DagsterInstance, integration, paused: bool, workspace: str | None = None
) -> list[str]:
    """Pause: stop the integration's schedule and its late-data and history sensors; resume:
    start them, and the next syncs and the late-data sensor catch up the hours that accrued
    meanwhile. Returns the code locations where they were toggled.

    Done by ``dagster schedule stop|start`` and ``dagster sensor stop|start``, the commands
    Dagster ships for this: they load the code location and toggle through the instance's
    scheduler (``DagsterInstance.start_schedule`` and its siblings), which need the location's
    loaded schedule or sensor. Loading one is only public through those commands (Dagster's
    workspace API is private), so they run here as processes. Toggled that way, a start records
    a fresh start time (what ``status`` reads as "Active since") and works before any
    daemon or UI recorded a state, and a stop is what the daemon and the UI's toggles see.
    The states are read back once toggled, and what a daemon's tick put back is toggled again
    (``TOGGLE_SETTLE_SECONDS``): the command returns once the pause or resume holds.

    Where the location is served: ``workspace`` (a workspace file, e.g. the deployment's) when
    given; else every location the instance has recorded them in (its origin, as recorded by
    the daemon or the UI: a gRPC code server's host and port, a module and its Python), so the
    state toggled is the one the deployment reads whatever it names its location; else the
    project's own (``PROJECT_LOCATION``)."""
    name = integration.name
    instigators = [
        ("schedule", schedule_name(name)),
        ("sensor", late_data_sensor_name(name)),
        ("sensor", history_sensor_name(name)),
    ]
    with tempfile.TemporaryDirectory(prefix="prism-toggle-") as folder:
        if workspace is not None:
            workspaces = {workspace: _location_names(workspace)}
        else:
            entries = _recorded_locations(instance, [n for _, n in instigators])
            if not entries:
                entries = {"prism_pipelines": PROJECT_LOCATION}
            workspaces = {}
            for i, (location, entry) in enumerate(sorted(entries.items())):
                path = os.path.join(folder, f"workspace_{i}.yaml")
                with open(path, "w") as file:
                    yaml.safe_dump({"load_from": [entry]}, file)
                workspaces[path] = [location]
        for path, locations in workspaces.items():
            _toggle_until_held(instance, instigators, paused, path, locations)
    return sorted(location for locations in workspaces.values() for location in locations)


def _toggle_until_held(
    instance: DagsterInstance, instigators: list, paused: bool, workspace: str, locations: list
) -> None:
    """Toggle, read the stored states back after ``TOGGLE_SETTLE_SECONDS``, and toggle again
    what the daemon put back (see ``TOGGLE_SETTLE_SECONDS``)."""
    action = "stop" if paused else "start"
    for _ in range(TOGGLE_ATTEMPTS):
        _run_toggles([[kind, action, name, "-w", workspace] for kind, name in instigators])
        time.sleep(TOGGLE_SETTLE_SECONDS)
        instigators = [
            (kind, name)
            for kind, name in instigators
            if any(
                state.is_running == paused
                for state in instigator_states(instance, name)
                if location_of(state) in locations
            )
        ]
        if not instigators:
            return
    raise ToggleFailed(
        f"could not {action} {', '.join(name for _, name in instigators)}: the Dagster daemon "
        f"put back its earlier state {TOGGLE_ATTEMPTS} times; run the command again"
    )


def _location_names(workspace: str) -> list[str]:
    """The code locations a workspace file names (its file name when it names none)."""
    with open(workspace) as file:
        entries = (yaml.safe_load(file) or {}).get("load_from") or []
    names = [
        target.get("location_name")
        for entry in entries
        for target in entry.values()
        if isinstance(target, dict)
    ]
    return [name for name in names if name] or [os.path.basename(workspace)]


def _recorded_locations(instance: DagsterInstance, names: list[str]) -> dict[str, dict]:
    """Location name → its workspace entry, rebuilt from the origin the instance recorded with
    the stored states of ``names`` (dagster keeps it so the daemon can reach the location)."""
    entries = {}
    for name in names:
        for state in instigator_states(instance, name):
            origin = state.origin.repository_origin.code_location_origin
            entry = _workspace_entry(origin)
            if entry is not None:
                entries.setdefault(location_of(state), entry)
    return entries


def _workspace_entry(origin) -> dict | None:
    """A recorded code location origin → a workspace.yaml entry that loads it the same way."""
    location = {"location_name": origin.location_name}
    if getattr(origin, "host", None) or getattr(origin, "socket", None):  # a gRPC code server
        server = {"host": origin.host, "port": origin.port, "socket": origin.socket}
        server = {k: v for k, v in server.items() if v is not None}
        return {"grpc_server": {**server, **location, "ssl": bool(origin.use_ssl)}}
    target = getattr(origin, "loadable_target_origin", None)
    if target is None:
        return None  # in-process (a test's build_sensor_context): no location to load
    common = {
        k: v
        for k, v in {
            "attribute": target.attribute,
            "working_directory": target.working_directory,
            "executable_path": target.executable_path,
        }.items()
        if v
    }
    if target.module_name:
        return {"python_module": {"module_name": target.module_name, **common, **location}}
    if target.python_file:
        return {"python_file": {"relative_path": target.python_file, **common, **location}}
    if target.package_name:
        return {"python_package": {"package_name": target.package_name, **common, **location}}
    return None


def _run_toggles(commands: list[list[str]]) -> None:
    """``dagster <command>`` for each, side by side (each loads the code location)."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "dagster", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    failed = []
    for command, process in zip(commands, started, strict=True):
        try:
            out, err = process.communicate(timeout=TOGGLE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            err += f"\nno answer within {TOGGLE_TIMEOUT_SECONDS} s"
        if process.returncode != 0:
            lines = [line for line in (err or out).strip().splitlines() if line.strip()]
            failed.append(f"dagster {' '.join(command[:3])}: {lines[-1] if lines else 'failed'}")
    if failed:
        raise ToggleFailed(
            "could not toggle the integration's schedule and sensors (is the code location "
            "reachable from here?):\n" + "\n".join(failed)
        )


def _paused_since(instance: DagsterInstance, name: str) -> datetime | None:
    """Dagster keeps no stop time: the last tick is when it last ran on schedule."""
    ticks = [
        tick
        for state in instigator_states(instance, schedule_name(name))
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    ]
    return _from_timestamp(max(tick.timestamp for tick in ticks)) if ticks else None


def _started_at(instance: DagsterInstance, name: str) -> datetime | None:
    """When the schedule was last started (the UI's toggle or ``resume``)."""
    started = [
        getattr(state.instigator_data, "start_timestamp", None)
        for state in instigator_states(instance, schedule_name(name))
        if state.status.value == "RUNNING"
    ]
    started = [value for value in started if value]
    return _from_timestamp(max(started)) if started else None


# -- runs ----------------------------------------------------------------------------------------


def run_failure_message(instance: DagsterInstance, run_id: str) -> str | None:
    """What a failed run says: its step failures' descriptions, else the run failure's text."""
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


#: how many of the latest backfills are searched for the integration's asset
BACKFILLS_SEARCHED = 50


def sync_run_records(
    instance: DagsterInstance, name: str, statuses: list[DagsterRunStatus], limit: int | None
) -> list:
    """The integration's sync runs, newest first: runs of ``<name>_sync`` and the runs of
    backfills of its asset launched from the UI, which Dagster runs as its asset job without the
    integration's tag (found by the backfill's asset selection)."""
    records = list(
        instance.get_run_records(
            RunsFilter(job_name=sync_job_name(name), statuses=statuses), limit=limit
        )
    )
    key = asset_key(name)
    for backfill in instance.get_backfills(limit=BACKFILLS_SEARCHED):
        if key not in (backfill.asset_selection or []):
            continue
        records += [
            record
            for record in instance.get_run_records(
                RunsFilter(tags={"dagster/backfill": backfill.backfill_id}, statuses=statuses),
                limit=limit,
            )
            if record.dagster_run.job_name != sync_job_name(name)
            and key in (record.dagster_run.asset_selection or {key})
        ]
    records.sort(key=lambda record: record.create_timestamp, reverse=True)
    return records[:limit]


def run_partition_keys(tags) -> list[str]:
    """The hours a run syncs, from its tags: ``dagster/partition`` for one hour, the asset
    partition range for a run of many (a backfill's, the history sensor's, the CLI's)."""
    if tags.get("dagster/partition"):
        return [tags["dagster/partition"]]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    if not (start and end):
        return []
    return [partition_key(h) for h in hours_between(hour_of_key(start), hour_of_key(end) + HOUR)]


def partitions_in_progress(instance: DagsterInstance, name: str) -> dict[str, str]:
    """Partition key → id of a queued or running sync run of the integration that covers it.
    The sensors request none of these: that run delivers them (a second one would only find
    the hour busy)."""
    covered: dict[str, str] = {}
    for record in sync_run_records(instance, name, IN_PROGRESS, limit=None):
        for key in run_partition_keys(record.dagster_run.tags):
            covered.setdefault(key, record.dagster_run.run_id)
    return covered


def integration_of_run(run) -> str | None:
    """The integration a run syncs: its tag, else the one prism asset it selects (a backfill
    launched from the UI)."""
    if run.tags.get("prism/integration"):
        return run.tags["prism/integration"]
    names = {
        key.path[1]
        for key in run.asset_selection or ()
        if len(key.path) == 2 and key.path[0] == asset_key("").path[0]
    }
    return names.pop() if len(names) == 1 else None


def is_sync_run(run, name: str) -> bool:
    """A run of ``<name>_sync``, or an untagged backfill run of the integration's asset (not its
    validate or dashboard job)."""
    if run.job_name == sync_job_name(name):
        return True
    return "prism/integration" not in run.tags and integration_of_run(run) == name


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
    ledger: Ledger,
    source: GatewaySource | None = None,
    now: datetime | None = None,
) -> IntegrationStatus:
    """The integration's status now; ``source`` adds lag and pending rows (two cheap queries)."""
    now = now or utcnow()
    name = integration.name
    job = sync_job_name(name)
    in_progress = sync_run_records(instance, name, IN_PROGRESS, limit=1)
    finished = sync_run_records(instance, name, FINISHED, limit=1)
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
        since = _from_timestamp(record.start_time) or utc(record.create_timestamp)
    elif is_paused(instance, integration):
        status, since = PAUSED, _paused_since(instance, name)
    elif error is not None:
        status, since = ERROR, error_since
    else:
        status, since = ACTIVE, _active_since(instance, job, ledger, name)

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    delivered, rejected = delivered_since(ledger, name, today)
    lag = pending = None
    if source is not None:
        newest = newest_delivered_event(source, ledger, name)
        lag = round((now - newest).total_seconds(), 1) if newest else None
        pending = pending_rows(source, ledger, name, now)
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
        error_partition=error_partition.strftime(PARTITION_KEY_FORMAT) if error_partition else None,
        failing_partitions=errors.failing_partitions,
        run_id=run_id,
    )


def _active_since(instance, job: str, ledger: Ledger, name: str) -> datetime | None:
    """The later of when it last recovered from a failed run and when its schedule was last
    started (a resume); else when it first delivered, else when it was first configured."""
    recovered = None
    failed = instance.get_run_records(
        RunsFilter(job_name=job, statuses=[DagsterRunStatus.FAILURE]), limit=1
    )
    if failed and failed[0].end_time:
        succeeded = instance.get_run_records(
            RunsFilter(
                job_name=job,
                statuses=[DagsterRunStatus.SUCCESS],
                created_after=_from_timestamp(failed[0].end_time),
            ),
            limit=1,
            ascending=True,
        )
        if succeeded and succeeded[0].end_time:
            recovered = _from_timestamp(succeeded[0].end_time)
    latest = max(filter(None, (recovered, _started_at(instance, name))), default=None)
    return latest or first_delivery(ledger, name) or first_configured(name, ledger.url)


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
    history = []
    for record in sync_run_records(instance, name, FINISHED, limit):
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
