"""Destinations. One module per integration type, each with the same anatomy (see base.py).

Modules are imported on demand, so loading the code location does not import every cloud SDK.
"""

from __future__ import annotations

from importlib import import_module

from prism_pipelines.sinks.base import Delivery, Sink

SINK_CLASSES = {
    "local": "prism_pipelines.sinks.local:LocalArchive",
    "s3": "prism_pipelines.sinks.s3:S3Archive",
    "azure_blob": "prism_pipelines.sinks.azure_blob:AzureBlobArchive",
    "gcs": "prism_pipelines.sinks.gcs:GcsArchive",
    "sqs": "prism_pipelines.sinks.sqs:SqsSink",
    "pubsub": "prism_pipelines.sinks.pubsub:PubSubSink",
    "datadog": "prism_pipelines.sinks.datadog:DatadogSink",
}


def build_sink(integration) -> Sink:
    module, _, name = SINK_CLASSES[integration.type].partition(":")
    return getattr(import_module(module), name)(integration)


__all__ = ["Delivery", "Sink", "build_sink"]
