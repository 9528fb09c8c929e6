"""The two databases as one Dagster resource.

URLs are read from ``PRISM_SOURCE_URL`` / ``PRISM_STATE_URL`` when the resource is used, never
written into run config, so a password in a URL never reaches the UI.
"""

from __future__ import annotations

from dagster import ConfigurableResource

from prism_pipelines.integrations import SourceSettings
from prism_pipelines.ledger import Ledger
from prism_pipelines.source import GatewaySource


class PrismResource(ConfigurableResource):
    table: str = "prism_request_logs"
    columns: dict[str, str] = {}
    settle_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: SourceSettings) -> PrismResource:
        return cls(
            table=settings.table, columns=settings.columns, settle_seconds=settings.settle_seconds
        )

    def source(self) -> GatewaySource:
        return GatewaySource(table=self.table, columns=self.columns)

    def ledger(self) -> Ledger:
        return Ledger()
