"""Destinations: ``storage/`` (local, S3, Azure Blob, GCS), ``sqs``, ``pubsub``, ``datadog/``,
each with the same anatomy (``base.py``) and the one retry machine (``retry.py``). Which sink
serves which integration type is the registry's to say (``integrations.DESTINATIONS``)."""

from __future__ import annotations

from importlib import import_module

from prism_pipelines.sinks.base import Delivery, Sink


def build_sink(integration) -> Sink:
    """The sink of the integration's type, its module imported only now."""
    # Imported here: the registry imports ``sinks.datadog.sites``, which runs this package.
    from prism_pipelines.integrations import destination

    module, _, name = destination(integration).sink.partition(":")
    return getattr(import_module(module), name)(integration)


__all__ = ["Delivery", "Sink", "build_sink"]
