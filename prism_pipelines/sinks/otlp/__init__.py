"""OpenTelemetry traces (``type: otlp``): every exported record as a GenAI span, over OTLP/HTTP.

``spans``: records → spans and the export requests that carry them (the request builder);
``sink``: settings check, Validate & Continue, and the service that posts the requests and maps
the receiver's answers. Needs the ``otlp`` extra (``opentelemetry-proto``, imported only here;
the integrations file says so when it is missing, ``extras.py``).
"""
