"""Per integration: ``<name>_sync`` (materialize partitions), ``<name>_validate`` (the spec's
"Validate & Continue"), and for Datadog ``<name>_create_dashboard``."""

from dagster import Failure, JobDefinition, OpExecutionContext, define_asset_job, job, op

from prism_pipelines.dagster_defs.names import asset_key, sync_job_name
from prism_pipelines.errors import PrismError
from prism_pipelines.sinks import build_sink


def sync_job(integration):
    return define_asset_job(
        sync_job_name(integration.name),
        selection=[asset_key(integration.name)],
        tags={"prism/integration": integration.name},
        description=f"Sync integration '{integration.name}' ({integration.type}) for the "
        "selected hours.",
    )


def _sink_call_job(integration, suffix: str, method: str, description: str) -> JobDefinition:
    """A one-op job that calls a sink method and reports its message (or fails with it)."""

    @op(name=f"{integration.name}_{suffix}_op", tags={"prism/integration": integration.name})
    def call(context: OpExecutionContext) -> str:
        sink = build_sink(integration)
        try:
            message = getattr(sink, method)()
        except PrismError as exc:
            raise Failure(description=integration.scrub(str(exc)), allow_retries=False) from None
        finally:
            sink.close()
        context.log.info(message)
        return message

    @job(
        name=f"{integration.name}_{suffix}",
        description=description,
        tags={"prism/integration": integration.name},
    )
    def call_job():
        call()

    return call_job


def validate_job(integration) -> JobDefinition:
    return _sink_call_job(
        integration,
        "validate",
        "validate",
        f"Check the credentials and destination of '{integration.name}' (Validate & Continue).",
    )


def dashboard_job(integration) -> JobDefinition:
    return _sink_call_job(
        integration,
        "create_dashboard",
        "create_dashboard",
        f"Create or update the Datadog dashboard template for '{integration.name}'.",
    )
