"""prism-pipelines: a Dagster code location exporting Prism Gateway request logs, and
``PrismIntegrations``, the same integrations as a Component for any Dagster project."""

import os

# Arrow allocates from the C heap (glibc, which source.py tunes to keep freed memory for the next
# chunk) rather than its default mimalloc pool, which keeps what it frees for itself: an hour's
# Parquet export peaked at 260 MB with mimalloc, 189 MB without, at the same speed. Only Arrow's
# own setting, read when pyarrow loads, reaches the pools its C++ code uses
# (``pa.set_memory_pool`` does not), so it is set before any module of ours imports pyarrow; a
# pool the user chose is left alone.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

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
