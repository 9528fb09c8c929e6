"""The optional parts of the package: each destination's SDK is an extra (``pip install
"prism-pipelines[s3]"``), so a user installs what they export to. A missing one is told when the
integrations load, naming the command to run, never as an ImportError in a run."""

from __future__ import annotations

from importlib.util import find_spec

from prism_pipelines.errors import PrismError

#: extra → the modules it installs (pyproject.toml's ``optional-dependencies``)
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("boto3",),
    "sqs": ("boto3",),
    "gcs": ("google.cloud.storage",),
    "pubsub": ("google.cloud.pubsub_v1",),
    "azure": ("azure.storage.blob",),
    "datadog": ("datadog_api_client",),
    "otlp": ("opentelemetry.proto", "google.rpc.status_pb2"),
    "postgres": ("psycopg2", "adbc_driver_postgresql"),
}


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google, azure) is missing
        return False


def missing(extra: str, needed_for: str) -> str | None:
    """What to install when ``extra`` is not (None: it is): ``needed_for`` says what needs it."""
    if all(map(_installed, EXTRAS[extra])):
        return None
    return f"{needed_for} needs the '{extra}' extra: pip install 'prism-pipelines[{extra}]'"


def require(extra: str, needed_for: str) -> None:
    """Raise a ``PrismError`` naming the ``pip install`` when ``extra`` is not installed."""
    problem = missing(extra, needed_for)
    if problem:
        raise PrismError(problem)
