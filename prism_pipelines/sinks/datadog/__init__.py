"""Datadog: every record as a log entry, the batch's traffic as metrics, a dashboard template.

``sink`` is the service (the official client, Datadog's answers classified for ``retry``);
``logs`` and ``metrics`` encode requests within Datadog's documented limits; ``dashboard`` is
the template; ``sites`` the regions. Nothing here is imported until a Datadog integration is
used (``sites`` only needs the standard library).
"""
