"""Datadog: every record as a log entry, the batch's traffic as metrics, and a dashboard template.

Anatomy, as for every sink: settings and the health check (``validate``), encoding
(``logs``: log entries and requests; ``metrics``: windows and series payloads; ``dashboard``:
the template; ``sites``: the regions), and the service below, which sends through the official
``datadog-api-client`` and maps Datadog's answers:

- 202 → acknowledged;
- 413 → the request is split in halves and each half re-sent (an entry alone that is still too
  large is a reject);
- 400 → split the same way down to the entries Datadog refuses, which become rejects with
  Datadog's error text (one bad entry does not take its 499 neighbours with it); for metrics,
  down to the points refused, counted with Datadog's text in the run's metadata
  (``refused_by_destination``): the logs, already accepted, are not held back for them;
- 429 → wait until the rate limit resets (``X-RateLimit-Reset``, else ``Retry-After``), retry;
- 408, 5xx, connection failures → retry (a ``Retry-After`` wins);
- 401, 403 → ``CredentialsError``: the run fails, the cursor stays.

Why our retries and not the client's (``Configuration.enable_retry``, datadog-api-client
2.62): its ``ClientRetry`` reads only ``X-Ratelimit-Reset`` (not ``Retry-After``), also retries
501 and 505, which will not get better, and when it gives up it raises urllib3's
``MaxRetryError`` instead of the ``ApiException`` carrying Datadog's status and text; nor can
it report how many retries a batch needed. So the client's retry stays off (its default) and
the shared ``retry.RetryLogic`` runs each call with ``_classify`` below.

Logs are sent while the batch is read; the metrics of the batch go last, and ``deliver``
returns only when both were accepted, so the ledger moves only then. A redone batch re-sends
its logs (at least once, as the design says for Datadog) and re-writes its metric points on the
same seconds (see ``metrics``), so metrics are not counted twice.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

import urllib3
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import ApiException
from datadog_api_client.v1.api.authentication_api import AuthenticationApi
from datadog_api_client.v1.api.dashboards_api import DashboardsApi
from datadog_api_client.v2.api.logs_api import LogsApi
from datadog_api_client.v2.api.metrics_api import MetricsApi
from datadog_api_client.v2.model.content_encoding import ContentEncoding
from datadog_api_client.v2.model.metric_content_encoding import MetricContentEncoding

from prism_pipelines.batch import Batch
from prism_pipelines.errors import CredentialsError, DestinationError
from prism_pipelines.hours import utcnow
from prism_pipelines.sinks.base import Delivery, Sink
from prism_pipelines.sinks.datadog.dashboard import dashboard_template, dashboard_title
from prism_pipelines.sinks.datadog.logs import (
    Entry,
    LogEncoder,
    LogRequests,
    halves,
    request_size,
)
from prism_pipelines.sinks.datadog.metrics import (
    MetricWindows,
    build_series,
    payload_size,
    payloads,
)
from prism_pipelines.sinks.datadog.sites import APP_HOSTS, SITE_NAMES
from prism_pipelines.sinks.retry import (
    HTTP_BACKOFF,
    HTTP_RETRYABLE,
    HTTP_TIMEOUT,
    VALIDATE_BACKOFF,
    Action,
    Backoff,
    RetryLogic,
    Verdict,
    retry_after_seconds,
)

_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")


class DatadogSink(Sink):
    def __init__(self, integration):
        super().__init__(integration)
        self._api: ApiClient | None = None

    # -- settings ------------------------------------------------------------------------------

    @property
    def site(self) -> str:
        name = SITE_NAMES.get(self.integration.site)
        return f"{self.integration.site} ({name})" if name else self.integration.site

    def _url(self, subdomain: str) -> str:
        endpoint = self.integration.endpoint_url
        return endpoint.rstrip("/") if endpoint else f"https://{subdomain}.{self.integration.site}"

    @property
    def client(self) -> ApiClient:
        """The official client, configured from the integration alone: ``DD_SITE``,
        ``DD_API_KEY`` and ``DD_APP_KEY`` in the environment are not used."""
        if self._api is None:
            endpoint = self.integration.endpoint_url
            config = Configuration(host=endpoint.rstrip("/")) if endpoint else Configuration()
            config.server_variables["site"] = self.integration.site
            keys = {"apiKeyAuth": self.integration.secret("api_key")}
            if self.integration.app_key is not None:
                keys["appKeyAuth"] = self.integration.secret("app_key")
            config.api_key = keys
            # Bodies are plain JSON built here (the models cost 4x the time per entry); the
            # responses are still checked against the client's models.
            config.check_input_type = False
            config.enable_retry = False  # see the module docstring
            config.request_timeout = HTTP_TIMEOUT
            self._api = ApiClient(config)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _check_namespace(self) -> None:
        namespace = self.integration.metric_namespace
        if not _METRIC_NAME.match(namespace) or len(namespace) > 150:
            raise DestinationError(
                f"integration '{self.integration.name}': metric_namespace '{namespace}' is not a "
                "valid Datadog metric name: start with a letter, use only letters, digits, "
                "underscores and periods (for example prism.gateway)"
            )

    # -- Validate & Continue ----------------------------------------------------------------------

    def validate(self) -> str:
        self._check_namespace()
        name = self.integration.name
        answer = self._call(
            "checking the API key",
            lambda: AuthenticationApi(self.client).validate(),
            backoff=VALIDATE_BACKOFF,
        )
        if not getattr(answer, "valid", False):
            raise CredentialsError(self._refused_text(403, "Forbidden", "checking the API key", ""))
        checked = [f"the API key is valid on {self.site}, at {self._url('api')}"]
        if self.integration.app_key is not None:
            self._call(
                "checking the application key",
                lambda: DashboardsApi(self.client).list_dashboards(count=1),
                app_key=True,
                backoff=VALIDATE_BACKOFF,
            )
            checked.append("the application key is valid and can read dashboards")
        else:
            checked.append(
                "no application key: logs and metrics only (the dashboard template needs one)"
            )
        return f"integration '{name}': " + "; ".join(checked)

    # -- delivery ------------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> Delivery:
        self._check_namespace()
        integration = self.integration
        now = utcnow()
        retries_before = self.retries.value
        delivery = Delivery(
            counters=Counter(
                log_requests=0,
                metric_requests=0,
                metric_points=0,
                metric_points_skipped_older_than_1h=0,
            )
        )
        encoder = LogEncoder(integration, now)
        windows = MetricWindows(integration.sync_interval_minutes * 60)
        requests = LogRequests(integration.logs_per_request)
        for chunk in batch.chunks():
            for record, source_id in zip(chunk.records, chunk.ids, strict=True):
                stamp = record.get("timestamp")
                event_time = datetime.fromisoformat(stamp) if stamp else batch.partition
                windows.add(record, event_time)
                entry = encoder.encode(record, source_id, event_time if stamp else None)
                if isinstance(entry, Entry):
                    full = requests.add(entry)
                    if full:
                        self._send_logs(full, delivery)
                else:
                    delivery.rejects.append(entry)
        if requests.pending:
            self._send_logs(requests.flush(), delivery)
        if windows:
            self._send_metrics(windows, batch.ordinal, now, delivery)
        counters = delivery.counters
        counters["logs_rejected_too_old"] += encoder.too_old
        counters["logs_sent_with_current_time"] += encoder.sent_late
        counters["logs_trimmed_over_1mb"] += encoder.trimmed
        delivery.counters = {k: v for k, v in counters.items() if v or k in _ALWAYS_SHOWN}
        delivery.retries = self.retries.value - retries_before
        return delivery

    def _send_logs(self, entries: list[Entry], delivery: Delivery) -> None:
        logs = LogsApi(self.client)
        todo = [entries]
        while todo:
            part = todo.pop()
            body = [e.body for e in part]
            try:
                self._call(
                    "sending logs",
                    lambda body=body: logs.submit_log(
                        body=body, content_encoding=ContentEncoding.GZIP
                    ),
                    delivery,
                )
            except ApiException as exc:
                if exc.status not in (400, 413):
                    raise self._unexpected(exc, "sending logs") from None
                if len(part) > 1:
                    delivery.counters["log_requests_split"] += 1
                    first, second = halves(part)
                    todo += [second, first]
                    continue
                reason = (
                    f"refused by Datadog (400): {_error_text(exc)}"
                    if exc.status == 400
                    else f"too large for Datadog (413): {_error_text(exc)}"
                )
                delivery.rejects.append(part[0].reject(reason))
                continue
            delivery.records += len(part)
            delivery.bytes += request_size(part)
            delivery.counters["log_requests"] += 1

    def _send_metrics(
        self, windows: MetricWindows, slot: int, now: datetime, delivery: Delivery
    ) -> None:
        integration = self.integration
        built = build_series(
            windows,
            namespace=integration.metric_namespace,
            slot=slot,
            extra_tags=tuple(integration.tags),
            now=now,
            submit_old=integration.old_metrics == "submit",
        )
        delivery.counters["metric_points_skipped_older_than_1h"] += built.skipped_too_old
        delivery.counters["metric_points_skipped_over_10min_ahead"] += built.skipped_ahead
        delivery.counters["metric_points_skipped_not_finite"] += built.skipped_not_finite
        metrics = MetricsApi(self.client)
        todo = list(reversed(list(payloads(built.series))))
        while todo:
            series = todo.pop()
            try:
                self._call(
                    "sending metrics",
                    lambda series=series: metrics.submit_metrics(
                        body={"series": series}, content_encoding=MetricContentEncoding.GZIP
                    ),
                    delivery,
                )
            except ApiException as exc:
                if exc.status not in (400, 413):
                    raise self._unexpected(exc, "sending metrics") from None
                if len(series) > 1 or len(series[0]["points"]) > 1:
                    todo += list(reversed(_metric_halves(series)))
                    continue
                if exc.status == 413:
                    raise self._unexpected(exc, "sending metrics") from None
                reason = f"metric point refused by Datadog (400): {_error_text(exc)[:200]}"
                delivery.refused[reason] += 1
                continue
            delivery.bytes += payload_size(series)
            delivery.counters["metric_requests"] += 1
            delivery.counters["metric_points"] += sum(len(s["points"]) for s in series)

    # -- dashboard template ----------------------------------------------------------------------

    def create_dashboard(self) -> str:
        """Create the dashboard template, or update it if one with its title exists."""
        integration = self.integration
        if integration.app_key is None:
            raise CredentialsError(
                f"integration '{integration.name}': creating the dashboard template needs a "
                "Datadog application key: create one in Datadog > Organization Settings > "
                "Application Keys and add app_key: {env: VAR_NAME} to the integration"
            )
        dashboards = DashboardsApi(self.client)
        title = dashboard_title(integration)
        existing = self._call(
            "listing dashboards",
            lambda: [d for d in dashboards.list_dashboards_with_pagination() if d.title == title],
            app_key=True,
        )
        body = dashboard_template(integration)
        title_note = ""
        if existing:
            dashboard_id = existing[0].id
            if len(existing) > 1:
                title_note = f" ({len(existing)} dashboards have this title: updated the first)"
            saved = self._call(
                "updating the dashboard",
                lambda: dashboards.update_dashboard(dashboard_id, body),
                app_key=True,
            )
            verb = "updated"
        else:
            saved = self._call(
                "creating the dashboard", lambda: dashboards.create_dashboard(body), app_key=True
            )
            verb = "created"
        app = self._app_url()
        return (
            f"integration '{integration.name}': {verb} dashboard '{title}' (id {saved.id}): "
            f"{app}{saved.url}{title_note}"
        )

    def _app_url(self) -> str:
        if self.integration.endpoint_url:
            return self.integration.endpoint_url.rstrip("/")
        site = self.integration.site
        return f"https://{APP_HOSTS.get(site, site)}"

    # -- the service: one call, Datadog's answers mapped -----------------------------------------

    def _call(
        self,
        what: str,
        call,
        delivery: Delivery | None = None,
        app_key: bool = False,
        backoff: Backoff = HTTP_BACKOFF,
    ):
        """``call()`` through the retry machine with Datadog's answers classified: 401/403
        raise ``CredentialsError``; other refusals are re-raised for the caller to map."""

        def attempt():
            if delivery is not None:
                delivery.requests += 1
            return call()

        def classify(exc: Exception) -> Verdict:
            if isinstance(exc, ApiException):
                if exc.status in (401, 403):
                    text = self._refused_text(
                        exc.status, exc.reason, what, _error_text(exc), app_key
                    )
                    return Verdict(Action.FATAL, error=CredentialsError(text))
                if exc.status not in HTTP_RETRYABLE and exc.status != 0:
                    return Verdict(Action.REJECT)  # the caller splits, rejects or maps it
                if exc.status == 429 and delivery is not None:
                    delivery.counters["throttled_429"] += 1
                problem = f"{exc.status} {exc.reason}" if exc.status else str(exc.reason)
                return Verdict(Action.RETRY, problem, retry_after=_retry_after(exc.headers))
            if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
                return Verdict(Action.RETRY, f"cannot connect: {type(exc).__name__}: {exc}")
            return Verdict(Action.FATAL)

        def give_up(tries: int, last: Verdict) -> DestinationError:
            return DestinationError(
                f"integration '{self.integration.name}': {what} to Datadog at "
                f"{self._url('api')} failed {tries} times, last with {last.reason}; check "
                "the site, endpoint_url and network, or Datadog's status page. Nothing is "
                "lost: the batch stays open and the next run sends it again"
            )

        return RetryLogic(backoff, self.retries).run(attempt, classify, give_up)

    def _refused_text(
        self, status: int, reason: str, what: str, detail: str, app_key: bool = False
    ) -> str:
        name = self.integration.name
        said = f" (Datadog said: {detail})" if detail else ""
        where = self.integration.site + (
            f", endpoint {self.integration.endpoint_url}" if self.integration.endpoint_url else ""
        )
        if app_key:
            return (
                f"integration '{name}': Datadog refused the application key ({status} {reason}) "
                f"while {what}{said}: check the key and the site: this key is not valid on "
                f"{where}, or its user may not read and write dashboards. Create an application "
                "key in Datadog > Organization Settings > Application Keys and update the "
                f"environment variable {self.integration.app_key.env}"
            )
        return (
            f"integration '{name}': Datadog refused the API key ({status} {reason}) while "
            f"{what}{said}: check the key and the site: this key is not valid on {where}. If "
            "the key was revoked, create one in Datadog > Organization Settings > API Keys and "
            f"update the environment variable {self.integration.api_key.env}; if your account "
            "is in another region, set site to it (US1, US3, US5, EU1, AP1, AP2, US1-FED). The "
            "cursor did not move: nothing is lost"
        )

    def _unexpected(self, exc: ApiException, what: str) -> DestinationError:
        return DestinationError(
            f"integration '{self.integration.name}': Datadog answered {exc.status} {exc.reason} "
            f"while {what}: {_error_text(exc) or 'no details'}; check metric_namespace, tags "
            f"and endpoint_url ({self._url('api')}). The batch stays open and will be redone"
        )


_ALWAYS_SHOWN = {
    "log_requests",
    "metric_requests",
    "metric_points",
    "metric_points_skipped_older_than_1h",
}


def _metric_halves(series: list[dict]) -> tuple[list[dict], list[dict]]:
    """Two halves of a metrics payload: by series, or a lone series by its points."""
    if len(series) > 1:
        middle = len(series) // 2
        return series[:middle], series[middle:]
    [one] = series
    middle = len(one["points"]) // 2
    return [{**one, "points": one["points"][:middle]}], [{**one, "points": one["points"][middle:]}]


def _header(headers: dict | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _retry_after(headers: dict | None) -> float | None:
    """Seconds Datadog asks us to wait: ``X-RateLimit-Reset`` (seconds until the rate-limit
    period resets), else ``Retry-After`` (seconds or an HTTP date)."""
    reset = _header(headers, "x-ratelimit-reset")
    if reset is not None:
        try:
            return float(reset)
        except ValueError:
            pass
    return retry_after_seconds(_header(headers, "retry-after"))


def _error_text(exc: ApiException) -> str:
    """Datadog's error text from either of its shapes: ``{"errors": ["…"]}`` or JSON:API
    ``{"errors": [{"title", "detail"}]}``."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        parts = []
        for error in body["errors"]:
            if isinstance(error, dict):
                parts.append(error.get("detail") or error.get("title") or str(error))
            else:
                parts.append(str(error))
        text = "; ".join(parts)
    else:
        text = body if isinstance(body, str) else ("" if body is None else str(body))
    return " ".join(text.split())[:500]
