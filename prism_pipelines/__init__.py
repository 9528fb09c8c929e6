"""prism-pipelines: a Dagster code location exporting Prism Gateway request logs, and
``PrismIntegrations``, the same integrations as a Component for any Dagster project."""

# Imported on first use: ``import prism_pipelines.sync`` (the CLI, the domain code) stays free of
# Dagster, while ``prism_pipelines.PrismIntegrations`` and ``dg``'s registry scan find it.
__all__ = ["PrismIntegrations"]


def __getattr__(name: str):
    if name == "PrismIntegrations":
        from prism_pipelines.component import PrismIntegrations

        return PrismIntegrations
    raise AttributeError(f"module 'prism_pipelines' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
