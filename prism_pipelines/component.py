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


class PrismIntegrations(dg.Component, dg.Model, dg.Resolvable):
    """Prism Gateway request logs to storage, queues and Datadog.

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
