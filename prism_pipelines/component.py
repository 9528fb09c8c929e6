"""PrismIntegrations: the integrations file as a Dagster Component, for any Dagster project.

A ``defs.yaml`` declares ``type: prism_pipelines.PrismIntegrations`` and, under ``attributes``,
what the integrations file holds. The attributes are handed over verbatim (no Dagster
templating) and validated by the file's own models, so ``{env: VAR}`` secrets stay references
read at delivery time and a mistake gets the file's one line per problem. This repository's code
location (``prism_pipelines.definitions``) loads its integrations file through this class too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import dagster as dg

from prism_pipelines.dagster_defs.definitions import build_definitions
from prism_pipelines.integrations import (
    IntegrationsFile,
    integrations_path,
    parse_integrations,
    read_integrations_file,
)

_REFERENCE = "see docs/component.md and the README's 'The integrations file'"

#: What ``dg scaffold defs prism_pipelines.PrismIntegrations <folder>`` writes: one integration
#: that works as it is (a folder under PRISM_HOME, the project directory by default), the others
#: commented out.
DEFS_YAML = """\
# Prism Gateway request logs, exported by prism-pipelines (its docs/component.md).
# Attributes: those of prism-pipelines' integrations file. Secrets are {env: VAR}, never
# "{{ env.VAR }}". Set PRISM_SOURCE_URL (the gateway database) and PRISM_STATE_URL (the ledger).
type: {type}

attributes:
  integrations:
    - name: archive_local          # asset prism/archive_local, job archive_local_sync
      type: local
      path: prism-archive          # relative: under PRISM_HOME (default: the working directory)
      prefix: prism/logs
      sync_interval_minutes: 5
      history: none                # only new traffic; or {since: -7d} (or an ISO time)

    # - name: archive_s3           # pip install 'prism-pipelines[s3]'
    #   type: s3
    #   bucket: my-llm-logs
    #   region: us-east-1
    #   access_key_id: {env: PRISM_S3_KEY_ID}
    #   secret_access_key: {env: PRISM_S3_SECRET}
    #   format: parquet            # pip install 'prism-pipelines[parquet]'
    #   layout: hive
    #   manifest: true

    # - name: datadog_prod         # pip install 'prism-pipelines[datadog]'
    #   type: datadog
    #   site: EU1
    #   api_key: {env: DD_API_KEY}

  # source:                        # only if the gateway names its table or columns differently
  #   table: prism_request_logs
  #   columns: {timestamp: created_at}

  # notifications:
  #   webhook_url: {env: PRISM_WEBHOOK_URL}
"""


class PrismScaffolder(dg.Scaffolder):
    """Writes ``DEFS_YAML`` (the Python format, or appending to a file, get Dagster's own)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        if request.scaffold_format != "yaml" or request.append:
            dg.scaffold_component(request, {"integrations": []})
            return
        (request.target_path / "defs.yaml").write_text(
            DEFS_YAML.replace("{type}", request.type_name)
        )


@dg.scaffold_with(PrismScaffolder)
class PrismIntegrations(dg.Component, dg.Model, dg.Resolvable):
    """Prism Gateway request logs to storage, queues, Datadog and OpenTelemetry.

    Per integration an hourly-partitioned asset ``prism/<name>`` with its checks, the
    ``<name>_sync`` and ``<name>_validate`` jobs, ``<name>_schedule``, the ``<name>_late_data`` and
    ``<name>_history`` sensors; one ``prism_sync_failures`` sensor for all."""

    # Passthrough: Dagster's templating would turn ``{{ env.X }}`` into the secret's value inside
    # the definitions; the file's models take the raw entries and reject inline secrets.
    integrations: Annotated[
        list[dict[str, Any]],
        dg.Resolver.passthrough(
            description=f"One entry per destination, as in the integrations file ({_REFERENCE}).",
            examples=[[{"name": "archive", "type": "local", "path": "/data/prism-archive"}]],
        ),
    ]
    source: Annotated[
        dict[str, Any] | None,
        dg.Resolver.passthrough(
            description="The gateway's table and column names, if they differ from ours "
            "(table, columns, settle_seconds)."
        ),
    ] = None
    notifications: Annotated[
        dict[str, Any] | None,
        dg.Resolver.passthrough(description="webhook_url: {env: VAR} for sync failures."),
    ] = None

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> PrismIntegrations:
        """The integrations file (``PRISM_INTEGRATIONS``, default ``integrations.yaml``) as this
        component; its problems are reported against the file."""
        path = Path(path) if path else integrations_path()
        raw = read_integrations_file(path)
        parse_integrations(raw, str(path))
        return cls(**raw)

    def validated(self, origin: str) -> IntegrationsFile:
        """The attributes through the integrations file's models, problems named under
        ``origin``."""
        return parse_integrations({k: v for k, v in self if v is not None}, origin)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_definitions(self.validated(str(context.path / "defs.yaml")))
