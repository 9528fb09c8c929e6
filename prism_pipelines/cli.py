"""``prism-pipelines``: the command line beside the Dagster UI.

Syncs started here run through Dagster on the instance in ``DAGSTER_HOME`` (the project's
``.dagster_home`` by default), so they appear in the UI's run history like scheduled ones.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, datetime, timedelta

import click

from prism_pipelines.database import PROJECT_ROOT, redact
from prism_pipelines.errors import PrismError

HOUR = timedelta(hours=1)


def _dagster_home() -> str:
    """``DAGSTER_HOME``, else the project's own, seeded with the project's dagster.yaml."""
    home = os.environ.get("DAGSTER_HOME") or str(PROJECT_ROOT / ".dagster_home")
    os.makedirs(home, exist_ok=True)
    if not os.path.exists(os.path.join(home, "dagster.yaml")):
        shutil.copy(PROJECT_ROOT / "dagster.yaml", os.path.join(home, "dagster.yaml"))
    os.environ["DAGSTER_HOME"] = home
    return home


def _hour(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@click.group()
def main() -> None:
    """Export Prism Gateway request logs with Dagster."""


@main.command("seed-demo")
@click.option("--rows", default=200_000, show_default=True, help="How many requests to create.")
@click.option("--hours", default=24, show_default=True, help="Spread over this many past hours.")
@click.option("--seed", default=7, show_default=True, help="Same seed, same traffic.")
def seed_demo(rows: int, hours: int, seed: int) -> None:
    """Fill the gateway table (PRISM_SOURCE_URL, else the embedded SQLite) with demo traffic."""
    from tqdm import tqdm

    from prism_pipelines.demo import generate_rows
    from prism_pipelines.source import GatewaySource

    source = GatewaySource()
    source.create_table()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
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


@main.command()
@click.argument("name")
@click.option("--partition", "partitions", multiple=True, help="Hour key, e.g. 2026-11-22-14:00.")
@click.option("--since", help="Sync every hour from this ISO time ...")
@click.option("--until", help="... up to (not including) this ISO time; default: now.")
@click.option("--full", is_flag=True, help="Re-deliver everything, not only what is new.")
def sync(
    name: str, partitions: tuple[str, ...], since: str | None, until: str | None, full: bool
) -> None:
    """Sync hours of integration NAME now (the UI's "Materialize"), through Dagster."""
    _dagster_home()
    from dagster import DagsterInstance

    from prism_pipelines.dagster_defs.assets import HOURS_PER_BACKFILL_RUN, asset_key, partition_key
    from prism_pipelines.definitions import defs

    keys = list(partitions)
    if since:
        hour, end = _hour(since), _hour(until) if until else datetime.now(UTC)
        while hour <= end:
            keys.append(partition_key(hour))
            hour += HOUR
    if not keys:
        keys = [partition_key(datetime.now(UTC))]
    job = defs.resolve_job_def(f"{name}_sync")
    run_config = {"ops": {f"prism__{name}": {"config": {"full_redelivery": full}}}}
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
            if not result.success:
                failed = True
                for event in result.all_events:
                    if event.is_step_failure and event.step_failure_data.user_failure_data:
                        click.echo(event.step_failure_data.user_failure_data.description, err=True)
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
@click.option("--limit", default=50, show_default=True)
def rejects(name: str, partition: str | None, limit: int) -> None:
    """List records NAME's destination refused for good, with the reason."""
    from prism_pipelines.ledger import Ledger

    hour = datetime.strptime(partition, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC) if partition else None
    found = Ledger().rejects(name, hour, limit)
    for reject in found:
        click.echo(f"{reject['hour']:%Y-%m-%d-%H:%M}  {reject['request_id']}  {reject['reason']}")
    if not found:
        click.echo(f"{name}: no rejects")


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
    """The integrations file, the Definitions and the Dagster instance, for the commands below."""
    _dagster_home()
    from dagster import DagsterInstance

    from prism_pipelines.dagster_defs.definitions import build_definitions
    from prism_pipelines.integrations import load_integrations

    config = load_integrations()
    return config, build_definitions(config), DagsterInstance.get()


@main.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per integration.")
def status(names: tuple[str, ...], as_json: bool) -> None:
    """Status of every integration (or NAMES): Active, Syncing, Paused or Error, and why."""
    import json

    from prism_pipelines.ledger import Ledger
    from prism_pipelines.source import GatewaySource
    from prism_pipelines.status import ERROR, integration_status

    config, defs, instance = _operations()
    chosen = [config.get(n) for n in names] if names else config.integrations
    ledger = Ledger()
    source = GatewaySource(table=config.source.table, columns=config.source.columns)
    now = datetime.now(UTC)
    with instance:
        found = [
            integration_status(
                integration,
                instance=instance,
                repository_def=defs.get_repository_def(),
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


def _pause(name: str, paused: bool) -> None:
    from prism_pipelines.status import set_paused

    config, defs, instance = _operations()
    config.get(name)  # a clear message for an unknown name
    with instance:
        set_paused(instance, defs.get_repository_def(), name, paused)
    if paused:
        click.echo(
            f"{name}: Paused (schedule {name}_schedule and sensor {name}_late_data stopped). "
            f"Nothing is lost: `prism-pipelines resume {name}` catches up every hour."
        )
    else:
        click.echo(
            f"{name}: resumed (schedule {name}_schedule and sensor {name}_late_data running); "
            "the next syncs catch up the hours that accrued while paused."
        )


@main.command()
@click.argument("name")
def pause(name: str) -> None:
    """Pause NAME: stop its schedule and late-data sensor (the UI's toggles do the same)."""
    _pause(name, True)


@main.command()
@click.argument("name")
def resume(name: str) -> None:
    """Resume NAME: start its schedule and late-data sensor; missed hours are caught up."""
    _pause(name, False)


@main.command()
@click.argument("name")
@click.option("--limit", default=20, show_default=True, help="How many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def history(name: str, limit: int, as_json: bool) -> None:
    """Sync history of NAME: the last runs, their partitions, records, rejects and errors."""
    import json

    from prism_pipelines.status import sync_history

    config, _, instance = _operations()
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
    now = datetime.now(UTC)
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
    """Entry point: a PrismError is a message for the user, not a stack trace."""
    try:
        main(standalone_mode=False)
    except PrismError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
