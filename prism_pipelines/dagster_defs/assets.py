"""One asset per integration, ``["prism", name]``, partitioned by hour of event time.

Materializing a partition syncs it (``sync.deliver_partition``). A backfill run may cover many
hours (the backfill policy groups them, so a month of hours is not a month of run start-ups);
each hour gets its own materialization event with its own metadata as soon as it is delivered,
so the partition view in the UI is the sync history.

An hour another run is delivering (it holds the hour's lease: the schedule's grace-period run
beside the late-data sensor's, a backfill beside the schedule) is skipped: an info line names
the holder, and the hour gets an observation (``skipped: busy``), not a materialization. A
materialization would say this run delivered the hour (the partition view would count it, the
sync history would list it) when the holder's run does; the holder's run records the hour's own
materialization and checks. It is not a failure: the run succeeds if nothing else failed, no
notification is posted, the status stays Active. Nothing is lost: the hour's delivery state is
the ledger's: if the hour is still behind after the holder's run (it failed, or rows arrived
after it read), the late-data sensor requests it again at its next tick, seeing the observation
(``skipped_busy_since``) rather than waiting as it does for a run that failed.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    AssetSpec,
    BackfillPolicy,
    Config,
    Failure,
    MetadataValue,
    asset,
)
from pydantic import Field

from prism_pipelines.dagster_defs import checks
from prism_pipelines.dagster_defs.names import asset_key, pool_name
from prism_pipelines.dagster_defs.partitions import hours_between
from prism_pipelines.dagster_defs.resources import PrismResource
from prism_pipelines.hours import partition_key
from prism_pipelines.integrations import destination
from prism_pipelines.sinks import build_sink
from prism_pipelines.sync import SyncError, deliver_partition

GATEWAY_TABLE = AssetKey(["prism_gateway", "prism_request_logs"])
#: hours per backfill run: one run start-up per day of history
HOURS_PER_BACKFILL_RUN = 24
#: the metadata of an hour's observation when a run left it to the run that holds it
SKIPPED, BUSY = "skipped", "busy"


gateway_table = AssetSpec(
    GATEWAY_TABLE,
    description="The gateway's request logs (prism_request_logs), written by Prism Gateway.",
    group_name="gateway",
    kinds={"sql"},
)


class SyncConfig(Config):
    full_redelivery: bool = Field(
        False,
        description="Re-send every record of the partition, not only what is new. Storage "
        "rewrites the same files (no duplicates); queues and Datadog receive the records again.",
    )


def integration_asset(integration, partitions_def):
    name = integration.name

    @asset(
        key=asset_key(name),
        partitions_def=partitions_def,
        deps=[GATEWAY_TABLE],
        kinds={destination(integration).kind},
        tags={"prism/integration": name, "prism/type": integration.type},
        group_name="prism",
        pool=pool_name(name),
        backfill_policy=BackfillPolicy.multi_run(HOURS_PER_BACKFILL_RUN),
        output_required=False,
        check_specs=checks.check_specs(integration, partitions_def),
        description=f"Prism Gateway request logs delivered to {integration.type} "
        f"integration '{name}', one partition per hour of event time.",
    )
    def sync_asset(context: AssetExecutionContext, config: SyncConfig, prism: PrismResource):
        sink = build_sink(integration)
        source, ledger = prism.source(), prism.ledger()
        failures = []
        # the checks' queries, beside the delivery and Dagster's writes (checks.py)
        check_queries = ThreadPoolExecutor(2, thread_name_prefix="prism-checks")
        try:
            for hour in hours_between(*context.partition_time_window):
                hour = hour.astimezone(UTC)
                alerts = checks.scan_alerts(check_queries, context, integration, source, hour)
                try:
                    result = deliver_partition(
                        integration,
                        sink,
                        source,
                        ledger,
                        hour,
                        full=config.full_redelivery,
                        settle_seconds=prism.settle_seconds,
                        who=f"Dagster run {context.run_id}",
                    )
                except SyncError as exc:
                    if exc.busy:
                        context.log.info(f"partition {partition_key(hour)}: skipped: {exc}")
                        yield AssetObservation(
                            asset_key=asset_key(name),
                            partition=partition_key(hour),
                            metadata={SKIPPED: BUSY, "reason": str(exc)},
                        )
                        continue
                    context.log.error(f"partition {partition_key(hour)}: {exc}")
                    failures.append(f"{partition_key(hour)}: {exc}")
                    if exc.credentials_refused:
                        break  # every other hour would be refused the same way
                    continue
                reconciliation = checks.count_reconciliation(
                    check_queries, context, integration, source, ledger, hour
                )
                context.log.info(
                    f"partition {partition_key(hour)}: {result.records} records, "
                    f"{result.rejects} rejects, "
                    f"cursor {result.cursor_before} → {result.cursor_after}"
                )
                yield AssetMaterialization(
                    asset_key=asset_key(name),
                    partition=partition_key(hour),
                    metadata=_typed(result.metadata()),
                )
                yield from checks.partition_checks(
                    context, integration, hour, reconciliation, alerts
                )
        finally:
            check_queries.shutdown(cancel_futures=True)
            sink.close()
        yield from checks.run_checks(context, integration, ledger, failures)
        if failures:
            raise Failure(
                description=f"integration '{name}': {len(failures)} partition(s) failed; the "
                "cursor did not move for them:\n" + "\n".join(failures),
                allow_retries=False,
            )

    return sync_asset


def skipped_busy_since(instance, name: str, key: str, since: datetime) -> bool:
    """A run skipped partition ``key`` as busy since ``since`` (its ``skipped: busy``
    observation): what the late-data sensor asks before waiting on an hour it requested."""
    records = instance.fetch_observations(
        AssetRecordsFilter(
            asset_key=asset_key(name), asset_partitions=[key], after_timestamp=since.timestamp()
        ),
        limit=10,
    ).records
    return any(
        (observation := record.asset_observation) is not None
        and SKIPPED in observation.metadata
        and observation.metadata[SKIPPED].value == BUSY
        for record in records
    )


def _typed(metadata: dict) -> dict:
    """Plain values → Dagster metadata (a dict becomes JSON; None is left out)."""
    typed = {}
    for key, value in metadata.items():
        if value is None:
            continue
        typed[key] = MetadataValue.json(value) if isinstance(value, dict) else value
    typed["dagster/row_count"] = metadata["records"]
    return typed
