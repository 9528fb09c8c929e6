"""Sensors: ``<name>_late_data`` and ``<name>_history`` per integration (``history_sensor``
says how the second requests the historical data once), and ``prism_sync_failures`` for all.

``<name>_late_data`` finds closed hours (older than the grace period, within the partitions)
whose source rows are not all in the ledger — rows that arrived after the schedule stopped
syncing their hour, hours that accrued while the integration was paused, hours whose run failed
— and requests a sync of exactly those partitions. It compares each hour's (row count, highest
id) in the source with the ledger's (delivered + rejected, cursor).

Which hours it compares: a full look, once an hour (``FULL_LOOK_EVERY``) and when
``history.since`` moved earlier, compares every hour of the last
``PRISM_LATE_DATA_LOOKBACK_HOURS`` (48 by default), extended back to its previous evaluation
after a long pause; it is the safety net for rows committed below the cursor by a
transaction slower than the settle delay. Every other tick reads only the rows that arrived
since the last one (ids past the cursor's settled watermark: a primary-key range scan) and
compares the hours they fell in, and the hours still behind, once those are closed: on a table
of months its cost follows the traffic since the last tick, not the look-back window.

Its cursor remembers, per hour, the source's (highest id, rows) it requested a sync for: it
asks again only when the source moved past that, or if the hour is still behind (its run
failed) an hour later, or as soon as a sync of the integration succeeded after that failure
(the destination is back), or as soon as its run skipped it as busy (another run held it;
``skipped: busy``). With ``manifest: true`` it also requests a sync of each closed hour
whose manifest is missing or stale (``Ledger.manifests_due``): that sync writes it. While the
integration is paused (its schedule stopped) it skips, keeping its cursor, so resuming catches
up every hour. Between runs it also re-evaluates the ``freshness`` check, so an integration that
stopped syncing turns red without a run.

Neither sensor requests an hour that a queued or running sync run of the integration already
covers (the schedule's, a backfill's, the other sensor's; ``partitions_in_progress``): that run
delivers it, and a second one would only find the hour busy. The late-data sensor compares the
hour again once that run is done.

``prism_sync_failures`` reports every failed sync — integration, partitions, error — in its log
(the run's own failure event is in the UI already), marks the ``status`` check failed if the run
could not, and posts to the webhook (notifications.py) once per Error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from prism_pipelines.backlog import (
    backlog,
    first_configured,
    hours_backlog,
    ledger_errors,
    lookback,
)
from prism_pipelines.dagster_defs import checks
from prism_pipelines.dagster_defs.assets import HOURS_PER_BACKFILL_RUN, skipped_busy_since
from prism_pipelines.dagster_defs.names import (
    asset_key,
    history_sensor_name,
    late_data_sensor_name,
)
from prism_pipelines.dagster_defs.partitions import hours_between
from prism_pipelines.dagster_defs.resources import PrismResource
from prism_pipelines.dagster_defs.status import (
    integration_of_run,
    is_paused,
    is_sync_run,
    partitions_in_progress,
    run_failure_message,
)
from prism_pipelines.errors import PrismError
from prism_pipelines.hours import HOUR, floor_hour, hour_of_key, partition_key, utcnow
from prism_pipelines.integrations import IntegrationsFile
from prism_pipelines.ledger import Ledger
from prism_pipelines.notifications import Failure, NotificationError, notify_failure

#: a requested hour still behind after this long is requested again (its run failed), or as soon
#: as the integration synced successfully after that failure (the destination is back)
RETRY_AFTER = timedelta(hours=1)
#: how often the sensor compares the whole look-back window rather than the hours new rows fell in
FULL_LOOK_EVERY = timedelta(hours=1)
DEFAULT_INTERVAL_SECONDS = 300


def late_data_interval_seconds() -> int:
    """``PRISM_LATE_DATA_INTERVAL_SECONDS`` (default 300), read when the definitions load."""
    value = os.environ.get("PRISM_LATE_DATA_INTERVAL_SECONDS", "").strip()
    if not value:
        return DEFAULT_INTERVAL_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise PrismError(
            f"PRISM_LATE_DATA_INTERVAL_SECONDS must be a whole number of seconds >= 1, "
            f"got {value!r}"
        )
    return seconds


@dataclass
class LateDataCursor:
    """``{"checked_at": ISO time, "full_look_at": ISO time, "partitions_start": ISO time,
    "seen_id": N, "watched": [partition keys], "requested": {partition key: [max id, rows, ISO
    time]}}``: ``seen_id`` is the source's settled watermark at the last tick, ``watched`` the
    hours to compare once closed (they received rows, or are still behind),
    ``partitions_start`` the first partition when it last looked (``history.since``)."""

    checked_at: datetime | None = None
    full_look_at: datetime | None = None
    partitions_start: datetime | None = None
    seen_id: int | None = None
    watched: set[datetime] = field(default_factory=set)
    requested: dict[str, tuple[int, int, datetime]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> LateDataCursor:
        if not text:
            return cls()
        raw = json.loads(text)

        def moment(key: str) -> datetime | None:
            return datetime.fromisoformat(raw[key]) if raw.get(key) else None

        return cls(
            checked_at=moment("checked_at"),
            full_look_at=moment("full_look_at"),
            partitions_start=moment("partitions_start"),
            seen_id=raw.get("seen_id"),
            watched={hour_of_key(key) for key in raw.get("watched", [])},
            requested={
                key: (int(max_id), int(rows), datetime.fromisoformat(at))
                for key, (max_id, rows, at) in raw.get("requested", {}).items()
            },
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "checked_at": self.checked_at.isoformat() if self.checked_at else None,
                "full_look_at": self.full_look_at.isoformat() if self.full_look_at else None,
                "partitions_start": self.partitions_start.isoformat()
                if self.partitions_start
                else None,
                "seen_id": self.seen_id,
                "watched": sorted(partition_key(hour) for hour in self.watched),
                "requested": {
                    key: [max_id, rows, at.isoformat()]
                    for key, (max_id, rows, at) in sorted(self.requested.items())
                },
            }
        )


def late_data_sensor(integration, sync_job, partitions_def, prism: PrismResource):
    """``prism`` is the code location's resource, passed in (not requested as a sensor
    resource) so the sensor evaluates the same in the daemon and in ``build_sensor_context``."""
    name = integration.name
    grace = timedelta(minutes=integration.grace_minutes)

    @sensor(
        name=late_data_sensor_name(name),
        job=sync_job,
        minimum_interval_seconds=late_data_interval_seconds(),
        default_status=DefaultSensorStatus.STOPPED
        if integration.paused
        else DefaultSensorStatus.RUNNING,
        description=f"Sync closed hours of '{name}' whose rows are not all delivered (late "
        "arrivals, paused periods, failed runs).",
    )
    def _late_data(context: SensorEvaluationContext):
        now = utcnow()
        origin = context.code_location_origin  # None in build_sensor_context
        if is_paused(context.instance, integration, origin.location_name if origin else None):
            return SkipReason(f"'{name}' is paused (its schedule is stopped); resume to catch up")
        cursor = LateDataCursor.parse(context.cursor)
        source, ledger = prism.source(), prism.ledger()
        try:
            if integration.history.since is None:  # records the hour the partitions start from
                first = partitions_def.start + integration.history.since_before
                ledger.first_configured(name, now=first)
            end = floor_hour(now - grace)  # hours before this one are closed and past grace
            last = floor_hour(now) + HOUR  # the partitions end here (or at history.until)
            if integration.history.until:
                end = min(end, integration.history.until)
                last = min(last, integration.history.until)
            watermark = source.settled_through(cursor.seen_id or 0, prism.settle_seconds)
            full_look = (
                cursor.seen_id is None
                or now - cursor.full_look_at >= FULL_LOOK_EVERY
                # history.since moved earlier: hours no tick has compared yet
                or cursor.partitions_start is None
                or partitions_def.start < cursor.partitions_start
            )
            if full_look:
                since = min(cursor.checked_at or now, now)
                start = max(floor_hour(since - grace) - lookback(), partitions_def.start)
                behind = backlog(source, ledger, name, start, end)
                # The hours not closed yet: compared once they are (their rows so far are
                # below the new watermark, so no later tick would see them arrive).
                cursor.watched = set(hours_between(end, last))
                cursor.full_look_at, cursor.partitions_start = now, partitions_def.start
            else:
                cursor.watched |= set(source.hours_after(cursor.seen_id))
                cursor.watched = {h for h in cursor.watched if partitions_def.start <= h < last}
                start = min(cursor.watched, default=end)
                behind = hours_backlog(source, ledger, name, [h for h in cursor.watched if h < end])
                cursor.watched = {h for h in cursor.watched if h >= end}
            cursor.watched |= {h.hour for h in behind}  # compared again until caught up
            cursor.seen_id = watermark
            requests = []
            recovered_at = ledger_errors(ledger, name).last_success_at if behind else None
            manifest = getattr(integration, "manifest", False)
            covered = partitions_in_progress(context.instance, name) if behind or manifest else {}
            for hour in behind:
                key = partition_key(hour.hour)
                if key in covered:
                    context.log.info(f"{key}: run {covered[key]} is syncing it: not requested")
                    continue  # compared again at the next tick, once that run is done
                asked = cursor.requested.get(key)
                failed_then_recovered = (
                    asked is not None
                    and hour.failed_at is not None
                    and hour.failed_at > asked[2]
                    and recovered_at is not None
                    and recovered_at > hour.failed_at
                )
                if (
                    asked is not None
                    and hour.max_id <= asked[0]
                    and hour.rows <= asked[1]
                    and now - asked[2] < RETRY_AFTER
                    and not failed_then_recovered
                    # its run left it to another run, which did not catch it up
                    and not skipped_busy_since(context.instance, name, key, asked[2])
                ):
                    continue  # already requested for this state of the source
                cursor.requested[key] = (hour.max_id, hour.rows, now)
                requests.append(
                    RunRequest(
                        run_key=f"late:{key}:{hour.max_id}:{hour.rows}:{now:%Y%m%dT%H%M%S}",
                        partition_key=key,
                        tags={"prism/trigger": "late_data"},
                    )
                )
                context.log.info(
                    f"{key}: {hour.rows} source rows (highest id {hour.max_id}), the ledger "
                    f"accounts for {hour.accounted} (cursor {hour.cursor}): requesting a sync"
                )
            still_behind = {partition_key(h.hour) for h in behind}
            if manifest:
                # Complete hours whose last sync came before their grace period ended: a sync
                # writes their manifest (manifest.py).
                for hour in ledger.manifests_due(name, start, end):
                    key = partition_key(hour)
                    asked = cursor.requested.get(key)
                    if (
                        key in still_behind
                        or key in covered
                        or (asked and now - asked[2] < RETRY_AFTER)
                    ):
                        still_behind.add(key)
                        continue
                    still_behind.add(key)
                    cursor.requested[key] = (0, 0, now)
                    requests.append(
                        RunRequest(
                            run_key=f"manifest:{key}:{now:%Y%m%dT%H%M%S}",
                            partition_key=key,
                            tags={"prism/trigger": "manifest"},
                        )
                    )
                    context.log.info(f"{key}: complete, its manifest is due: requesting a sync")
            cursor.requested = {k: v for k, v in cursor.requested.items() if k in still_behind}
            _report_freshness(context, integration, ledger, now)
        finally:
            source.engine.dispose()
            ledger.engine.dispose()
        cursor.checked_at = now
        return SensorResult(
            run_requests=requests,
            cursor=cursor.dump(),
            skip_reason=None
            if requests
            else f"every closed hour since {start:%Y-%m-%d %H:%M} UTC is delivered or requested",
        )

    return _late_data


def history_sensor(integration, sync_job, partitions_def):
    """``<name>_history``: the historical data of ``history.since``, requested once, without a
    manual backfill.

    When ``since`` is new, or moved earlier than what was already requested, it requests the
    hours from ``since`` up to where the late-data sensor's look-back begins (that sensor takes
    the recent hours), as runs of ``HOURS_PER_BACKFILL_RUN`` hours each, the way a backfill with
    the asset's policy splits them. Its cursor is the earliest hour requested, so each hour is
    asked for once; the runs queue behind the integration's run limit (dagster.yaml). Dagster
    1.13 has no public way for a sensor to launch a backfill object
    (``RunRequest.for_asset_graph_subset`` is documented private), so these are runs: the
    asset's partitions view shows the hours filling in."""
    name = integration.name
    grace = timedelta(minutes=integration.grace_minutes)

    @sensor(
        name=history_sensor_name(name),
        job=sync_job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED
        if integration.paused
        else DefaultSensorStatus.RUNNING,
        description=f"Sync the historical data of '{name}' (history.since) once, when it is "
        "new or moved earlier.",
    )
    def _history(context: SensorEvaluationContext):
        if not integration.history.backfills:
            return SkipReason(f"'{name}' has no historical data (history: none)")
        origin = context.code_location_origin  # None in build_sensor_context
        if is_paused(context.instance, integration, origin.location_name if origin else None):
            return SkipReason(f"'{name}' is paused (its schedule is stopped)")
        now = utcnow()
        start = partitions_def.start  # history.since, or first configured less its span
        requested_from = datetime.fromisoformat(context.cursor) if context.cursor else None
        end = floor_hour(now - grace) - lookback()  # the late-data sensor's look-back begins
        if integration.history.until:
            end = min(end, floor_hour(integration.history.until))
        if requested_from is not None:
            end = min(end, requested_from)
        if start >= end:
            return SensorResult(
                cursor=min(start, requested_from or start).isoformat(),
                skip_reason=f"the historical data of '{name}' from {start:%Y-%m-%d %H:%M} UTC "
                "is requested already or recent enough for the late-data sensor",
            )
        hours = hours_between(start, end)
        covered = partitions_in_progress(context.instance, name)
        wanted = [hour for hour in hours if partition_key(hour) not in covered]
        requests = []
        for run_hours in contiguous_runs(wanted, HOURS_PER_BACKFILL_RUN):
            first, last = partition_key(run_hours[0]), partition_key(run_hours[-1])
            requests.append(
                RunRequest(
                    run_key=f"history:{first}:{last}",
                    tags={
                        "dagster/asset_partition_range_start": first,
                        "dagster/asset_partition_range_end": last,
                        "prism/trigger": "history",
                    },
                )
            )
        context.log.info(
            f"historical data of '{name}': {len(wanted)} hours from {partition_key(hours[0])} "
            f"to {partition_key(hours[-1])} in {len(requests)} runs"
            + (
                f" ({len(hours) - len(wanted)} hours left to the queued or running runs "
                "that cover them)"
                if len(wanted) < len(hours)
                else ""
            )
        )
        return SensorResult(run_requests=requests, cursor=start.isoformat())

    return _history


def contiguous_runs(hours: list[datetime], size: int) -> list[list[datetime]]:
    """Ascending hours → runs of consecutive hours, at most ``size`` each: a run's partitions
    are a range, so a gap (an hour another run covers) starts a new one."""
    runs: list[list[datetime]] = []
    for hour in hours:
        if runs and hour - runs[-1][-1] == HOUR and len(runs[-1]) < size:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    return runs


def _report_freshness(context, integration, ledger: Ledger, now: datetime) -> None:
    """Record the freshness check when its outcome changed since its last evaluation."""
    evaluation = checks.freshness_evaluation(integration, ledger, now)
    if "last_success_at" not in evaluation.metadata:  # never synced successfully
        configured = first_configured(integration.name, ledger.url)
        allowed = timedelta(minutes=2 * integration.sync_interval_minutes)
        if configured is None or now - configured <= allowed:
            return  # just configured: the schedule has not had its chance yet
    latest = checks.latest_evaluation(context.instance, integration.name, checks.FRESHNESS)
    if latest is None or latest[0].passed != evaluation.passed:
        context.instance.report_runless_asset_event(evaluation)
        context.log.info(f"freshness of '{integration.name}': {evaluation.description}")


# -- failures ------------------------------------------------------------------------------------


def run_partitions(tags) -> list[str]:
    if tags.get("dagster/partition"):
        return [tags["dagster/partition"]]
    start, end = (
        tags.get("dagster/asset_partition_range_start"),
        tags.get("dagster/asset_partition_range_end"),
    )
    if start and end:
        return [start] if start == end else [f"{start} … {end}"]
    return []


def failure_sensor(config: IntegrationsFile):
    integrations = {i.name: i for i in config.integrations}
    webhook = config.notifications.webhook_url

    @run_failure_sensor(
        name="prism_sync_failures",
        default_status=DefaultSensorStatus.RUNNING,
        description="Reports failed syncs (integration, partitions, error) in its log and to "
        "notifications.webhook_url, once per Error.",
    )
    def _failures(context: RunFailureSensorContext):
        run = context.dagster_run
        name = integration_of_run(run)
        integration = integrations.get(name)
        if integration is None or not is_sync_run(run, name):
            return
        error = run_failure_message(context.instance, run.run_id) or context.failure_event.message
        error = integration.scrub(error or "the run failed")
        partitions = run_partitions(run.tags)
        context.log.error(
            f"integration '{name}' ({integration.type}): sync of "
            f"{', '.join(partitions) or 'its partitions'} failed (run {run.run_id}): {error}"
        )
        _report_status(context, integration, error, run.run_id)
        url = os.environ.get("PRISM_DAGSTER_URL")
        failure = Failure(
            integration=name,
            type=integration.type,
            partitions=partitions,
            error=error,
            run_id=run.run_id,
            run_url=f"{url.rstrip('/')}/runs/{run.run_id}" if url else None,
        )
        ledger = Ledger()
        try:
            url_value = webhook.value("notifications", "webhook_url") if webhook else None
            posted = notify_failure(failure, url_value, ledger)
        except NotificationError as exc:
            context.log.warning(f"'{name}': notification not sent: {exc}")
            return
        except Exception as exc:  # a missing variable, the state database: never the URL
            context.log.warning(f"'{name}': notification not sent: {type(exc).__name__}: {exc}")
            return
        finally:
            ledger.engine.dispose()
        if posted:
            context.log.info(f"'{name}': posted to the notification webhook")
        elif webhook:
            context.log.info(f"'{name}': already notified of this Error; not posted again")

    return _failures


def _report_status(context, integration, error: str, run_id: str) -> None:
    """A run that died before its asset could say so (e.g. the process was killed) still turns
    the ``status`` check red."""
    latest = checks.latest_evaluation(context.instance, integration.name, checks.STATUS)
    if latest is not None and latest[1] == run_id:
        return  # the run recorded its own status
    context.instance.report_runless_asset_event(
        AssetCheckEvaluation(
            asset_key=asset_key(integration.name),
            check_name=checks.STATUS,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=f"Error: {error[:1000]}",
            metadata={"status": "Error", "error": error, "run_id": run_id},
        )
    )
