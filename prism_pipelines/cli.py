"""``prism-pipelines``: the command line beside the Dagster UI.

Syncs started here run through Dagster on the instance in ``DAGSTER_HOME`` (by default
``.dagster_home`` under ``PRISM_HOME``, see home.py), so they appear in the UI's run history like
scheduled ones.
"""

from __future__ import annotations

import sys
import warnings
from datetime import UTC, datetime, timedelta

import click

from prism_pipelines.database import redact
from prism_pipelines.errors import PrismError
from prism_pipelines.home import dagster_home
from prism_pipelines.hours import HOUR, floor_hour, hour_of_key, parse_time, partition_key, utcnow


def _hour(value: str) -> datetime:
    try:
        return floor_hour(parse_time(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO time, e.g. 2026-11-22T14:00Z") from None


def _partition_keys(_ctx, param, value):
    """``--partition``: hour keys as Dagster writes them, checked before anything runs."""
    for key in value if isinstance(value, tuple) else (value,) if value else ():
        try:
            hour_of_key(key)
        except ValueError:
            raise click.BadParameter(
                f"{key!r} is not a partition key, e.g. 2026-11-22-14:00", param=param
            ) from None
    return value


def _failure_text(data) -> str:
    """A failed step's message: ours (a ``Failure``) as is, anything else as its first line,
    never a traceback."""
    if data.user_failure_data and data.user_failure_data.description:
        return data.user_failure_data.description
    if data.error:
        error = data.error
        while error.cause is not None:  # Dagster wraps what the step raised: say that
            error = error.cause
        lines = error.message.strip().splitlines() or [""]
        return f"the sync failed with {error.cls_name}: {lines[0]}"
    return "the sync failed; see the run in the Dagster UI"


def _prism(config):
    """The code location's own resource: the same source and ledger the assets use."""
    from prism_pipelines.dagster_defs.resources import PrismResource

    return PrismResource.from_settings(config.source)


@click.group()
@click.version_option(package_name="prism-pipelines")
def main() -> None:
    """Export Prism Gateway request logs with Dagster."""


@main.command("seed-demo")
@click.option(
    "--rows",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many requests to create.",
)
@click.option(
    "--hours",
    default=24,
    show_default=True,
    type=click.IntRange(min=1),
    help="Spread over this many past hours.",
)
@click.option("--seed", default=7, show_default=True, help="Same seed, same traffic.")
@click.option("--live", is_flag=True, help="Instead: keep inserting current traffic until Ctrl-C.")
@click.option("--rate", default=3.0, show_default=True, help="With --live: requests a second.")
@click.option("--minutes", type=float, help="With --live: stop after this many minutes.")
def seed_demo(
    rows: int, hours: int, seed: int, live: bool, rate: float, minutes: float | None
) -> None:
    """Fill the gateway table (PRISM_SOURCE_URL, else the embedded SQLite) with demo traffic;
    with --live, keep it coming, as a gateway in use would (watch it with `make ui`)."""
    from tqdm import tqdm

    from prism_pipelines.demo import generate_rows
    from prism_pipelines.source import GatewaySource

    source = GatewaySource()
    source.create_table()
    if live:
        _live_traffic(source, rate, minutes, seed)
        return
    end = floor_hour(utcnow())
    start = end - hours * HOUR
    with tqdm(total=rows, unit="rows", desc="seeding demo traffic", unit_scale=True) as bar:

        def batches():
            for batch in generate_rows(rows, start=start, end=end, seed=seed):
                yield batch
                bar.update(len(batch))

        source.insert_rows(batches())
    click.echo(
        f"{rows:,} requests from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
        f"in {redact(source.url)}"
    )


def _live_traffic(source, rate: float, minutes: float | None, seed: int) -> None:
    """Every second, the requests that started in the second just gone (about ``rate`` of them),
    each inserted once it has ended: a gateway writes a request's row when the request ends
    (``ingested_at``, after its latency), never before."""
    import heapq
    import itertools
    import time

    import numpy as np

    from prism_pipelines.demo import generate_rows
    from prism_pipelines.source import INSERT_COLUMNS

    if rate <= 0:
        raise click.BadParameter(f"--rate must be above 0, got {rate}")
    rng = np.random.default_rng(seed)
    stop = time.monotonic() + minutes * 60 if minutes else None
    click.echo(
        f"inserting about {rate:g} requests a second into {redact(source.url)}"
        f"{f' for {minutes:g} min' if minutes else ''}; Ctrl-C stops"
    )
    ingested_at = INSERT_COLUMNS.index("ingested_at")
    in_flight: list[tuple] = []  # (ingested_at, n, row): requests started, not yet ended
    order = itertools.count()
    inserted, tick = 0, 0
    try:
        while stop is None or time.monotonic() < stop:
            time.sleep(1)
            now, tick = utcnow(), tick + 1
            count = int(rng.poisson(rate))
            if count:
                # a new seed each second: new request ids, the same realistic mix
                for rows in generate_rows(
                    count, start=now - timedelta(seconds=1), end=now, seed=seed * 1_000_003 + tick
                ):
                    for row in rows:
                        heapq.heappush(in_flight, (row[ingested_at], next(order), row))
            ended = []
            while in_flight and in_flight[0][0] <= now:
                ended.append(heapq.heappop(in_flight)[2])
            if ended:
                source.insert_rows([ended])
                inserted += len(ended)
            if tick % 60 == 0:
                click.echo(f"{now:%H:%M:%S} UTC: {inserted:,} requests inserted")
    except KeyboardInterrupt:
        pass
    click.echo(f"{inserted:,} live requests inserted")


@main.command()
@click.argument("name")
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    callback=_partition_keys,
    help="Hour key, e.g. 2026-11-22-14:00.",
)
@click.option("--since", help="Sync every hour from this ISO time ...")
@click.option("--until", help="... up to (not including) this ISO time; default: now.")
@click.option("--full", is_flag=True, help="Re-deliver everything, not only what is new.")
def sync(
    name: str, partitions: tuple[str, ...], since: str | None, until: str | None, full: bool
) -> None:
    """Sync hours of integration NAME now (the UI's "Materialize"), through Dagster."""
    from prism_pipelines.integrations import load_integrations

    load_integrations().get(name)  # a wrong name is told before Dagster loads
    dagster_home()
    from dagster import DagsterInstance

    from prism_pipelines.dagster_defs.assets import HOURS_PER_BACKFILL_RUN, SKIPPED
    from prism_pipelines.dagster_defs.names import asset_key, sync_job_name, sync_run_config
    from prism_pipelines.definitions import defs

    keys = list(partitions)
    if since:
        hour, end = _hour(since), _hour(until) if until else utcnow()
        while hour <= end:
            keys.append(partition_key(hour))
            hour += HOUR
    if not keys:
        keys = [partition_key(utcnow())]
    job = defs.resolve_job_def(sync_job_name(name))
    outside = [k for k in keys if k not in set(job.partitions_def.get_partition_keys())]
    if outside:
        raise click.BadParameter(
            f"{', '.join(outside[:3])}{' …' if len(outside) > 3 else ''}: not an hour of "
            f"integration '{name}' (its hours run from its history.since to now)",
            param_hint="'--partition' / '--since'",
        )
    # Dagster's console log is the UI's business (its errors carry stack traces); the run's
    # summary and each failure's message are printed below.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    run_config = {**sync_run_config(name, full), **quiet}
    failed = False
    with DagsterInstance.get() as instance:
        for i in range(0, len(keys), HOURS_PER_BACKFILL_RUN):
            part = keys[i : i + HOURS_PER_BACKFILL_RUN]
            tags = {
                "dagster/asset_partition_range_start": part[0],
                "dagster/asset_partition_range_end": part[-1],
            }
            result = job.execute_in_process(
                instance=instance, run_config=run_config, tags=tags, raise_on_error=False
            )
            for event in result.get_asset_materialization_events():
                if event.asset_key == asset_key(name):
                    meta = {k: v.value for k, v in event.materialization.metadata.items()}
                    click.echo(
                        f"{event.partition}: {meta['records']:>9,} records  {meta['rejects']:>5,} "
                        f"rejects  {meta['files']:>3} files  {meta['bytes']:>12,} bytes"
                    )
            for event in result.get_asset_observation_events():
                observed = event.asset_observation_data.asset_observation.metadata
                if event.asset_key == asset_key(name) and SKIPPED in observed:
                    click.echo(f"{event.partition}: skipped: {observed['reason'].value}")
            if not result.success:
                failed = True
                for event in result.all_events:
                    if event.is_step_failure:
                        click.echo(_failure_text(event.step_failure_data), err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("name")
def validate(name: str) -> None:
    """Check NAME's credentials and destination (the spec's "Validate & Continue")."""
    from prism_pipelines.integrations import load_integrations
    from prism_pipelines.sinks import build_sink

    integration = load_integrations().get(name)
    sink = build_sink(integration)
    try:
        click.echo(f"{name}: OK: {sink.validate()}")
    except PrismError as exc:
        click.echo(f"{name}: FAILED: {integration.scrub(str(exc))}", err=True)
        sys.exit(1)
    finally:
        sink.close()


@main.command()
@click.argument("name")
@click.option("--partition", help="Only this hour, e.g. 2026-11-22-14:00.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="List at most this many, oldest hour first.",
)
@click.option("--all", "show_all", is_flag=True, help="List every reject (no --limit).")
def rejects(name: str, partition: str | None, limit: int, show_all: bool) -> None:
    """List records NAME's destination refused for good, with the reason."""
    from prism_pipelines.hours import hour_of_key
    from prism_pipelines.integrations import load_integrations

    config = load_integrations()
    config.get(name)
    try:
        hour = hour_of_key(partition) if partition else None
    except ValueError:
        raise click.BadParameter(
            f"{partition!r} is not a partition key, e.g. 2026-11-22-14:00"
        ) from None
    ledger = _prism(config).ledger()
    found = ledger.rejects(name, hour, None if show_all else limit)
    for reject in found:
        click.echo(f"{reject['hour']:%Y-%m-%d-%H:%M}  {reject['request_id']}  {reject['reason']}")
    if not found:
        click.echo(f"{name}: no rejects")
        return
    total = len(found) if show_all else ledger.count_rejects(name, hour)
    if total > len(found):
        # On stderr: the listing stays one reject a line for whoever reads it with a script.
        click.echo(
            f"showing {len(found):,} of {total:,} rejects (oldest hour first); "
            f"--limit {total} or --all to see every one",
            err=True,
        )


@main.command("upgrade-state")
def upgrade_state() -> None:
    """Migrate the state database (PRISM_STATE_URL) to this version's schema.

    Opening the ledger does the same; this is for doing it before a deploy, on its own.
    """
    from prism_pipelines.database import make_engine, state_url
    from prism_pipelines.ledger import upgrade

    url = state_url()
    engine = make_engine(url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"state database {redact(url)}: at revision {after}, nothing to do")
    else:
        click.echo(
            f"state database {redact(url)}: upgraded from {before or 'no revision'} "
            f"to revision {after}"
        )


# -- operating the integrations (docs/operations.md) --------------------------------------------


def _short_time(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    return f"{moment:%H:%M}" if moment.date() == now.date() else f"{moment:%m-%d %H:%M}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172_800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d"


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    )


def _operations():
    """The integrations file and the Dagster instance, for the commands below."""
    dagster_home()
    from dagster import DagsterInstance

    from prism_pipelines.integrations import load_integrations

    return load_integrations(), DagsterInstance.get()


@main.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per integration.")
def status(names: tuple[str, ...], as_json: bool) -> None:
    """Status of every integration (or NAMES): Active, Syncing, Paused or Error, and why."""
    import json

    from prism_pipelines.dagster_defs.status import ERROR, integration_status

    config, instance = _operations()
    chosen = [config.get(n) for n in names] if names else config.integrations
    prism = _prism(config)
    ledger, source = prism.ledger(), prism.source()
    now = utcnow()
    with instance:
        found = [
            integration_status(
                integration,
                instance=instance,
                ledger=ledger,
                source=source,
                now=now,
            )
            for integration in chosen
        ]
    if as_json:
        for item in found:
            click.echo(json.dumps(item.as_dict()))
        return
    rows = [
        [
            "NAME",
            "TYPE",
            "STATUS",
            "SINCE",
            "LAST SUCCESS",
            "LAG",
            "PENDING",
            "TODAY",
            "REJECTS",
            "ERROR",
        ]
    ]
    for item in found:
        error = (item.error or "").splitlines()[0] if item.error else ""
        rows.append(
            [
                item.name,
                item.type,
                item.status,
                _short_time(item.since, now),
                _short_time(item.last_success_at, now),
                _duration(item.lag_seconds),
                f"{item.pending_rows:,}",
                f"{item.delivered_today:,}",
                f"{item.rejects_today:,}",
                error if len(error) <= 60 else error[:57] + "...",
            ]
        )
    click.echo(_table(rows, right={5, 6, 7, 8}))
    for item in found:
        if item.status == ERROR or (item.error and item.status != "Active"):
            where = f" (partition {item.error_partition})" if item.error_partition else ""
            click.echo(f"\n{item.name}: {item.status}{where}: {item.error}")
    click.echo(
        "\nTimes in UTC. LAG: age of the newest delivered record. PENDING: source rows not yet "
        "delivered (last hours). TODAY: records delivered since 00:00 UTC."
    )


def _pause(name: str, paused: bool, workspace: str | None) -> None:
    from prism_pipelines.dagster_defs.status import set_paused

    config, instance = _operations()
    integration = config.get(name)  # a clear message for an unknown name
    with instance:
        locations = ", ".join(set_paused(instance, integration, paused, workspace))
    what = f"schedule {name}_schedule and sensors {name}_late_data and {name}_history"
    if paused:
        click.echo(
            f"{name}: Paused ({what} stopped in code location {locations}). Nothing is lost: "
            f"`prism-pipelines resume {name}` catches up every hour."
        )
    else:
        click.echo(
            f"{name}: resumed ({what} running in code location {locations}); the next syncs "
            "catch up the hours that accrued while paused."
        )


_WORKSPACE = click.option(
    "--workspace",
    "-w",
    type=click.Path(exists=True, dir_okay=False),
    help="Load the code location from this workspace file (the deployment's), as `dagster "
    "schedule stop -w` does; default: where the instance's daemon or UI recorded it, else "
    "this package's.",
)


@main.command()
@click.argument("name")
@_WORKSPACE
def pause(name: str, workspace: str | None) -> None:
    """Pause NAME: stop its schedule and sensors (the UI's toggles do the same)."""
    _pause(name, True, workspace)


@main.command()
@click.argument("name")
@_WORKSPACE
def resume(name: str, workspace: str | None) -> None:
    """Resume NAME: start its schedule and sensors; missed hours are caught up."""
    _pause(name, False, workspace)


@main.command()
@click.argument("name")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many runs, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def history(name: str, limit: int, as_json: bool) -> None:
    """Sync history of NAME: the last runs, their partitions, records, rejects and errors."""
    import json

    from prism_pipelines.dagster_defs.status import sync_history

    config, instance = _operations()
    config.get(name)
    with instance:
        runs = sync_history(instance, name, limit)
    if as_json:
        for run in runs:
            click.echo(json.dumps(run.as_dict()))
        return
    if not runs:
        click.echo(f"{name}: no sync has run yet")
        return
    now = utcnow()
    rows = [
        [
            "FINISHED (UTC)",
            "RUN",
            "STATUS",
            "PARTITIONS",
            "RECORDS",
            "REJECTS",
            "FILES/MSGS",
            "BYTES",
            "SECONDS",
        ]
    ]
    for run in runs:
        rows.append(
            [
                f"{run.finished_at:%Y-%m-%d %H:%M}" if run.finished_at else "-",
                run.run_id[:8],
                run.status,
                run.partitions_label,
                f"{run.records:,}",
                f"{run.rejects:,}",
                f"{run.units:,}",
                f"{run.bytes:,}",
                f"{run.seconds:.1f}" if run.seconds is not None else "-",
            ]
        )
    click.echo(_table(rows, right={4, 5, 6, 7, 8}))
    for run in runs:
        if run.error:
            click.echo(f"\n{run.run_id[:8]} ({_short_time(run.finished_at, now)}): {run.error}")


def run() -> None:
    """Entry point: a PrismError is a message for the user, not a stack trace; so is a database
    that cannot be reached. Dagster's
    beta/preview warnings are about the code location's definitions (the docs name them once),
    not news to whoever runs a command."""
    from dagster import BetaWarning, PreviewWarning
    from sqlalchemy.exc import DBAPIError

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    try:
        main(standalone_mode=False)
    except PrismError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except DBAPIError as exc:
        # The driver's first line: never the URL's password nor the failing statement.
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        click.echo(
            f"error: a database could not be used: {detail}. Check PRISM_SOURCE_URL (the gateway "
            "database) and PRISM_STATE_URL (the ledger) and that the server is reachable",
            err=True,
        )
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
