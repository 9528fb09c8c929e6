"""The Dagster names of an integration's objects (DESIGN.md, "Dagster names"), in one place for
the definitions, the status and the command line."""

from dagster import AssetKey


def asset_key(name: str) -> AssetKey:
    return AssetKey(["prism", name])


def pool_name(name: str) -> str:
    """The Dagster pool of the integration's asset: the run limit per integration
    (dagster.yaml, ``concurrency.pools``) counts every run that materializes it, whoever
    launched it: schedule, sensor, CLI or a backfill from the UI."""
    return f"prism_{name}"


def sync_job_name(name: str) -> str:
    return f"{name}_sync"


def schedule_name(name: str) -> str:
    return f"{name}_schedule"


def late_data_sensor_name(name: str) -> str:
    return f"{name}_late_data"


def history_sensor_name(name: str) -> str:
    return f"{name}_history"


def sync_run_config(name: str, full_redelivery: bool) -> dict:
    """Run config of ``<name>_sync``: the asset's op is named after its key."""
    op = asset_key(name).to_python_identifier()
    return {"ops": {op: {"config": {"full_redelivery": full_redelivery}}}}
