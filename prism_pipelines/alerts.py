"""The gateway alerts of the observability spec, computed in SQL over one hour of traffic.

- *Budget threshold crossed* (spend exceeds the configured percentage) → ``budget``: the hour's
  spend against ``hourly_budget_usd``; a warning at ``budget_warn_percent``, an error at 100 %.
- *Error rate spike* (error rate exceeds the threshold over a time window) → ``error_rate``: any
  ``error_rate_window_minutes`` window of the hour with at least ``error_rate_min_requests``
  requests and an error share above ``error_rate``.
- *Latency spike* (P95 latency exceeds the threshold) → ``p95_latency``: the hour's p95 above
  ``p95_latency_ms``.
- *Guardrail triggered* (a guardrail blocks or flags a request) → ``guardrails``: more than
  ``max_guardrail_triggers`` requests of the hour with a guardrail triggered (0: any).

All but the p95 come from one indexed query over the hour (by ``timestamp``), grouped by
window; the p95 is a second. The same on SQLite and PostgreSQL. Windows are the hour cut into
``error_rate_window_minutes`` pieces from its start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Integer, case, cast, func, select

from prism_pipelines.integrations import Alerts
from prism_pipelines.source import GatewaySource

WARN, ERROR = "WARN", "ERROR"
SAMPLE_SIZE = 5


@dataclass(frozen=True)
class AlertResult:
    """One alert's outcome for one hour: the numbers that decide it are in ``metadata``."""

    name: str
    passed: bool
    severity: str
    description: str
    metadata: dict = field(default_factory=dict)


def alert_names(alerts: Alerts) -> list[str]:
    """The alerts an integration evaluates: the error rate always (it has defaults), the others
    when their threshold is set."""
    names = ["error_rate"]
    if alerts.p95_latency_ms is not None:
        names.append("p95_latency")
    if alerts.hourly_budget_usd is not None:
        names.append("budget")
    if alerts.max_guardrail_triggers is not None:
        names.append("guardrails")
    return names


def evaluate_alerts(source: GatewaySource, alerts: Alerts, hour: datetime) -> list[AlertResult]:
    windows = _windows(source, hour, alerts.error_rate_window_minutes)
    totals = {key: sum(w[key] for w in windows) for key in _SUMS}
    results = [_error_rate(alerts, hour, windows, totals)]
    if alerts.p95_latency_ms is not None:
        results.append(_p95_latency(source, alerts, hour, totals))
    if alerts.hourly_budget_usd is not None:
        results.append(_budget(alerts, totals))
    if alerts.max_guardrail_triggers is not None:
        results.append(_guardrails(source, alerts, hour, totals))
    return results


#: the sums ``_windows`` gives per window; the hour's totals add them up
_SUMS = ("requests", "errors", "spend", "guardrails", "with_latency")


def _windows(source: GatewaySource, hour: datetime, minutes: int) -> list[dict]:
    """The hour cut into ``minutes``-minute windows, each with its requests, errors, spend,
    guardrail triggers and requests with a latency: one scan of the hour for every alert but
    the p95."""
    c = source.table.c
    postgresql = source.engine.dialect.name == "postgresql"
    width = timedelta(minutes=minutes)
    if postgresql:
        # the window's start: date_bin (PostgreSQL 14) costs the server 30% less time for the
        # hour than the minute by extract, which is numeric (bench/README.md)
        window = func.date_bin(width, c.timestamp, hour)
    else:
        window = cast(func.strftime("%M", c.timestamp), Integer) // minutes
    statement = (
        select(
            window.label("window"),
            func.count().label("requests"),
            func.coalesce(func.sum(case((c.is_error, 1), else_=0)), 0).label("errors"),
            func.coalesce(func.sum(c.cost), 0.0).label("spend"),
            func.coalesce(func.sum(case((c.guardrail_triggered, 1), else_=0)), 0).label(
                "guardrails"
            ),
            func.count(c.latency_ms).label("with_latency"),
        )
        .where(source.in_hour(hour))
        .group_by(window)
    )
    with source.engine.connect() as conn:
        windows = [dict(row) for row in conn.execute(statement).mappings()]
    if postgresql:
        for w in windows:
            w["window"] = (w["window"] - hour) // width
    return windows


def _error_rate(alerts: Alerts, hour: datetime, all_windows: list[dict], totals: dict):
    minutes = alerts.error_rate_window_minutes
    windows = [
        (int(w["window"]), w["requests"], int(w["errors"]))
        for w in all_windows
        # SQLite text that is no valid time has no minute: its rows (rejected by the export)
        # are in the hour's totals, in no window
        if w["window"] is not None and w["requests"] >= alerts.error_rate_min_requests
    ]
    over = [(w, n, e) for w, n, e in windows if e / n > alerts.error_rate]
    worst = max(over or windows, key=lambda x: (x[2] / x[1], x[1]), default=None)
    metadata = {
        "requests": totals["requests"],
        "errors": totals["errors"],
        "hour_error_rate": _ratio(totals["errors"], totals["requests"]),
        "threshold": alerts.error_rate,
        "window_minutes": minutes,
        "min_requests_per_window": alerts.error_rate_min_requests,
        "windows_evaluated": len(windows),
        "windows_over_threshold": len(over),
    }
    if worst is not None:
        w, n, e = worst
        start = hour + timedelta(minutes=w * minutes)
        metadata.update(
            worst_window_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            worst_window_requests=n,
            worst_window_errors=e,
            worst_window_error_rate=_ratio(e, n),
        )
    if over:
        return AlertResult(
            "error_rate",
            False,
            ERROR,
            f"error rate spike: {_ratio(worst[2], worst[1]):.1%} of {worst[1]} requests failed in "
            f"the {minutes}-minute window from {metadata['worst_window_start']} (threshold "
            f"{alerts.error_rate:.1%}); {len(over)} window(s) over",
            metadata,
        )
    return AlertResult(
        "error_rate",
        True,
        ERROR,
        f"no {minutes}-minute window with {alerts.error_rate_min_requests}+ requests had an "
        f"error rate above {alerts.error_rate:.1%}",
        metadata,
    )


def p95_latency_ms(source: GatewaySource, hour: datetime, with_latency: int) -> int | None:
    """The hour's p95 latency, nearest rank (the same value on both databases)."""
    if not with_latency:
        return None
    c = source.table.c
    where = source.in_hour(hour) & c.latency_ms.is_not(None)
    if source.engine.dialect.name == "postgresql":
        statement = select(func.percentile_disc(0.95).within_group(c.latency_ms)).where(where)
    else:  # SQLite has no percentile: the one row at the rank
        rank = math.ceil(0.95 * with_latency) - 1
        statement = select(c.latency_ms).where(where).order_by(c.latency_ms).limit(1).offset(rank)
    with source.engine.connect() as conn:
        value = conn.execute(statement).scalar()
    return None if value is None else int(value)


def _p95_latency(source: GatewaySource, alerts: Alerts, hour: datetime, totals: dict):
    p95 = p95_latency_ms(source, hour, totals["with_latency"])
    threshold = alerts.p95_latency_ms
    metadata = {
        "p95_latency_ms": p95,
        "threshold_ms": threshold,
        "requests_with_latency": totals["with_latency"],
    }
    if p95 is not None and p95 > threshold:
        return AlertResult(
            "p95_latency",
            False,
            WARN,
            f"latency spike: p95 {p95} ms over {totals['with_latency']} requests is above "
            f"{threshold} ms",
            metadata,
        )
    return AlertResult(
        "p95_latency",
        True,
        WARN,
        f"p95 latency {p95 if p95 is not None else '-'} ms is within {threshold} ms",
        metadata,
    )


def _budget(alerts: Alerts, totals: dict):
    spend, budget = float(totals["spend"]), alerts.hourly_budget_usd
    percent = round(100 * spend / budget, 1)
    metadata = {
        "spend_usd": round(spend, 6),
        "budget_usd": budget,
        "percent_of_budget": percent,
        "warn_percent": alerts.budget_warn_percent,
        "requests": totals["requests"],
    }
    if percent >= 100:
        return AlertResult(
            "budget",
            False,
            ERROR,
            f"over budget: ${spend:,.4f} spent this hour, {percent}% of ${budget:,.2f}",
            metadata,
        )
    if percent >= alerts.budget_warn_percent:
        return AlertResult(
            "budget",
            False,
            WARN,
            f"budget threshold crossed: ${spend:,.4f} spent this hour, {percent}% of "
            f"${budget:,.2f} (warning at {alerts.budget_warn_percent:g}%)",
            metadata,
        )
    return AlertResult(
        "budget",
        True,
        WARN,
        f"${spend:,.4f} spent this hour, {percent}% of ${budget:,.2f}",
        metadata,
    )


def _guardrails(source: GatewaySource, alerts: Alerts, hour: datetime, totals: dict):
    triggers, allowed = int(totals["guardrails"]), alerts.max_guardrail_triggers
    metadata = {"guardrail_triggers": triggers, "max_guardrail_triggers": allowed}
    if triggers <= allowed:
        return AlertResult(
            "guardrails",
            True,
            WARN,
            f"{triggers} request(s) triggered a guardrail (allowed: {allowed})",
            metadata,
        )
    c = source.table.c
    with source.engine.connect() as conn:
        sample = conn.execute(
            select(c.request_id)
            .where(source.in_hour(hour) & c.guardrail_triggered)
            .order_by(c.id)
            .limit(SAMPLE_SIZE)
        ).scalars()
        metadata["sample_request_ids"] = list(sample)
    return AlertResult(
        "guardrails",
        False,
        WARN,
        f"guardrail triggered: {triggers} request(s) this hour (allowed: {allowed})",
        metadata,
    )


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
