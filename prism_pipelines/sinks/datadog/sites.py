"""Datadog's sites: the domain each region's API and intake live on, the name users know it by,
and its web app (for the dashboard's address). The one list; the integrations file checks
``site`` against it and the sink names the site from it."""

from __future__ import annotations

#: domain → the region's name, as Datadog's docs and UI write it
SITE_NAMES = {
    "datadoghq.com": "US1",
    "us3.datadoghq.com": "US3",
    "us5.datadoghq.com": "US5",
    "datadoghq.eu": "EU1",
    "ap1.datadoghq.com": "AP1",
    "ap2.datadoghq.com": "AP2",
    "ddog-gov.com": "US1-FED",
}
#: what a user may write for ``site``, lower case: a region's name or a short alias
SITE_ALIASES = {name.lower(): domain for domain, name in SITE_NAMES.items()} | {
    "eu": "datadoghq.eu",
    "gov": "ddog-gov.com",
}
#: the web app of each site where it is not ``app.`` + a regional subdomain's site
APP_HOSTS = {
    "datadoghq.com": "app.datadoghq.com",
    "datadoghq.eu": "app.datadoghq.eu",
    "ddog-gov.com": "app.ddog-gov.com",
}


def site_domain(value: str) -> str | None:
    """The site's domain for a region's name, an alias or the domain itself; None if unknown."""
    site = SITE_ALIASES.get(value.lower(), value.lower())
    return site if site in SITE_NAMES else None
