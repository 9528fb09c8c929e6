"""Asset checks of ``["prism", name]``: reconciliation, the gateway alerts, status, freshness.

Dagster 1.13 supports partitioned asset checks (``AssetCheckSpec(partitions_def=...)``, a preview
feature) but a check evaluated in its own step is skipped here: the asset yields one
materialization per hour and no output, so a separate check step has nothing to wait for. So
the checks are the asset's own ``check_specs`` and the asset body evaluates them for each hour it
has just delivered (``partition_checks``; the alerts were scanned while it was delivered,
``scan_alerts``, the reconciliation counted while Dagster records the materialization,
``count_reconciliation``), as ``AssetCheckEvaluation`` events carrying that hour as their
partition (a backfill run covers many hours), and at the end of the run the two
integration-wide checks (``run_checks``).

- ``reconciliation`` (per partition, ERROR): source rows up to the cursor = delivered + rejected.
- ``error_rate``, ``p95_latency``, ``budget``, ``guardrails`` (per partition): the gateway alerts
  (alerts.py) with the integration's ``alerts:`` thresholds; the last three only when set.
- ``status`` (ERROR): the last sync succeeded (Active) or not (Error, with its message).
- ``freshness`` (WARN): the integration synced within twice its interval. The late-data sensor
  re-evaluates it between runs, so a stalled integration turns it red too.

A per-partition check whose query fails is recorded failed, WARN, "not evaluated" with the
reason (``not_evaluated``), until the next sync of the hour evaluates it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    PartitionsDefinition,
    PreviewWarning,
)

from prism_pipelines.alerts import AlertResult, alert_names, evaluate_alerts
from prism_pipelines.backlog import ledger_errors
from prism_pipelines.dagster_defs.names import asset_key
from prism_pipelines.hours import partition_key, utcnow
from prism_pipelines.ledger import Ledger
from prism_pipelines.source import GatewaySource

RECONCILIATION, STATUS, FRESHNESS = "reconciliation", "status", "freshness"
ALERT_DESCRIPTIONS = {
    "error_rate": "Gateway alert: the error rate of a window of the hour exceeds alerts.error_rate "
    "(windows of alerts.error_rate_window_minutes with alerts.error_rate_min_requests requests).",
    "p95_latency": "Gateway alert: the hour's p95 latency exceeds alerts.p95_latency_ms.",
    "budget": "Gateway alert: the hour's spend crosses alerts.budget_warn_percent of "
    "alerts.hourly_budget_usd (warning), or the whole budget (error).",
    "guardrails": "Gateway alert: more than alerts.max_guardrail_triggers requests triggered a "
    "guardrail this hour.",
}
SEVERITY = {"WARN": AssetCheckSeverity.WARN, "ERROR": AssetCheckSeverity.ERROR}


def check_specs(integration, partitions_def: PartitionsDefinition) -> list[AssetCheckSpec]:
    key = asset_key(integration.name)
    with warnings.catch_warnings():
        # Partitioned checks are a preview in 1.13 (see the module docstring); the docs say so
        # once, rather than a warning per integration at every load of the code location.
        warnings.simplefilter("ignore", PreviewWarning)
        per_partition = [
            AssetCheckSpec(
                RECONCILIATION,
                asset=key,
                partitions_def=partitions_def,
                description="Every source row of the hour up to the cursor is delivered or "
                "rejected (delivered + rejected = source rows): no gap.",
            ),
            *(
                AssetCheckSpec(
                    name,
                    asset=key,
                    partitions_def=partitions_def,
                    description=ALERT_DESCRIPTIONS[name],
                )
                for name in alert_names(integration.alerts)
            ),
        ]
    return [
        *per_partition,
        AssetCheckSpec(
            STATUS,
            asset=key,
            description="Active when the last sync succeeded; Error, with the message and since "
            "when, when it failed.",
        ),
        AssetCheckSpec(
            FRESHNESS,
            asset=key,
            description=f"Synced successfully within twice its interval "
            f"({2 * integration.sync_interval_minutes} minutes).",
        ),
    ]


# -- reconciliation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    source_rows: int  # rows of the hour up to the cursor
    delivered: int
    rejected: int
    cursor: int
    rows_after_cursor: int  # not synced yet: no gap, the next sync takes them

    @property
    def difference(self) -> int:
        return self.source_rows - self.delivered - self.rejected

    @property
    def passed(self) -> bool:
        return self.difference == 0


def reconcile(source: GatewaySource, ledger: Ledger, name: str, hour: datetime) -> Reconciliation:
    state = ledger.partition_state(name, hour)
    cursor = state.cursor if state else 0
    source_rows, rows_after_cursor = source.count_around(hour, cursor)
    return Reconciliation(
        source_rows=source_rows,
        delivered=state.delivered if state else 0,
        rejected=state.rejected if state else 0,
        cursor=cursor,
        rows_after_cursor=rows_after_cursor,
    )


def reconciliation_evaluation(name: str, hour: datetime, r: Reconciliation):
    key = partition_key(hour)
    if r.passed:
        description = (
            f"{r.source_rows} source rows up to the cursor = {r.delivered} delivered + "
            f"{r.rejected} rejected"
        )
    else:
        description = (
            f"GAP in partition {key}: the source has {r.source_rows} rows up to the cursor "
            f"{r.cursor}, the ledger accounts for {r.delivered} delivered + {r.rejected} rejected "
            f"(difference {r.difference:+d}); re-sync it with full re-delivery "
            f"(prism-pipelines sync {name} --partition {key} --full)"
        )
    return AssetCheckEvaluation(
        asset_key=asset_key(name),
        check_name=RECONCILIATION,
        passed=r.passed,
        severity=AssetCheckSeverity.ERROR,
        description=description,
        partition=key,
        metadata={
            "source_rows": r.source_rows,
            "delivered": r.delivered,
            "rejected": r.rejected,
            "difference": r.difference,
            "cursor": r.cursor,
            "rows_after_cursor": r.rows_after_cursor,
        },
    )


# -- evaluated by the asset ----------------------------------------------------------------------


def _alert_evaluation(name: str, hour: datetime, alert: AlertResult):
    return AssetCheckEvaluation(
        asset_key=asset_key(name),
        check_name=alert.name,
        passed=alert.passed,
        severity=SEVERITY[alert.severity],
        description=alert.description,
        partition=partition_key(hour),
        metadata={
            k: MetadataValue.json(v) if isinstance(v, list | dict) else v
            for k, v in alert.metadata.items()
            if v is not None
        },
    )


def _selected(context: AssetExecutionContext) -> set[str]:
    return {key.name for key in context.selected_asset_check_keys}


def _selected_alerts(context: AssetExecutionContext, integration) -> list[str]:
    return [check for check in alert_names(integration.alerts) if check in _selected(context)]


def scan_alerts(
    pool: ThreadPoolExecutor,
    context: AssetExecutionContext,
    integration,
    source: GatewaySource,
    hour: datetime,
) -> Future | None:
    """Start the scan of the hour's gateway alerts in ``pool``: it reads only the gateway's
    table, not what the sync writes, so it runs while the hour is delivered (on idle cores: the
    export leaves a fifth of two cores idle) rather than after. ``partition_checks`` takes its
    result. None when no alert check is selected."""
    names = _selected_alerts(context, integration)
    return pool.submit(_alerted, integration, source, hour, names) if names else None


def count_reconciliation(
    pool: ThreadPoolExecutor,
    context: AssetExecutionContext,
    integration,
    source: GatewaySource,
    ledger: Ledger,
    hour: datetime,
) -> Future | None:
    """Start the reconciliation's count of the hour in ``pool`` as soon as the sync has left its
    cursor (the count needs it), so it runs while Dagster records the hour's materialization.
    ``partition_checks`` takes its result. None when the check is not selected."""
    if RECONCILIATION not in _selected(context):
        return None
    return pool.submit(_reconciled, integration.name, source, ledger, hour)


def partition_checks(
    context: AssetExecutionContext,
    integration,
    hour: datetime,
    reconciliation: Future | None,
    alerts: Future | None,
) -> Iterator[AssetCheckEvaluation]:
    """The per-hour checks of an hour the run has just synced, recorded at every sync of it (an
    event beside the hour's materialization), so the latest evaluation is always this sync's:
    the reconciliation, counted once the sync ended (``count_reconciliation``), and the alerts,
    scanned while the hour was delivered (``scan_alerts``). Their evaluations are yielded, and a
    failure logged, in the step's thread.

    A check that cannot be evaluated (its query failed) must not undo a delivered sync, nor
    leave the last green result standing as if it had passed: it is recorded as failed, severity
    WARN, with the reason, until the next sync of the hour evaluates it."""
    if reconciliation is not None:
        yield from _evaluated(context, integration, hour, [RECONCILIATION], reconciliation.result)
    if alerts is not None:
        names = _selected_alerts(context, integration)
        yield from _evaluated(context, integration, hour, names, alerts.result)


def _reconciled(name: str, source: GatewaySource, ledger: Ledger, hour: datetime):
    return [reconciliation_evaluation(name, hour, reconcile(source, ledger, name, hour))]


def _alerted(integration, source: GatewaySource, hour: datetime, names: list[str]):
    return [
        _alert_evaluation(integration.name, hour, alert)
        for alert in evaluate_alerts(source, integration.alerts, hour)
        if alert.name in names
    ]


def _evaluated(context, integration, hour: datetime, names: list[str], evaluate):
    """``evaluate()``'s evaluations, or, if it raised, each of ``names`` not evaluated."""
    try:
        return evaluate()
    except Exception as exc:
        reason = integration.scrub(f"{type(exc).__name__}: {exc}").strip().splitlines()[0]
        reason = reason[:MAX_REASON_CHARS]
        context.log.warning(
            f"partition {partition_key(hour)}: {', '.join(names)} not evaluated: {reason}"
        )
        return [not_evaluated(integration.name, hour, check, reason) for check in names]


#: how much of a failed query's message a "not evaluated" result keeps (its first line)
MAX_REASON_CHARS = 500


def not_evaluated(name: str, hour: datetime, check: str, reason: str) -> AssetCheckEvaluation:
    """A per-hour check whose evaluation failed: failed, WARN, with the reason."""
    return AssetCheckEvaluation(
        asset_key=asset_key(name),
        check_name=check,
        passed=False,
        severity=AssetCheckSeverity.WARN,
        description=f"not evaluated: {reason}. The next sync of {partition_key(hour)} "
        "evaluates it again.",
        partition=partition_key(hour),
        metadata={"evaluated": False, "reason": reason},
    )


def status_result(integration, ledger: Ledger, failures: list[str]) -> AssetCheckResult:
    if not failures:
        return AssetCheckResult(
            check_name=STATUS,
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            description="Active: the last sync succeeded",
            metadata={"status": "Active"},
        )
    errors = ledger_errors(ledger, integration.name)
    since = errors.error_since or utcnow()
    return AssetCheckResult(
        check_name=STATUS,
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=f"Error since {since:%Y-%m-%d %H:%M} UTC: {errors.error or failures[0]}",
        metadata={
            "status": "Error",
            "error": errors.error or failures[0],
            "error_since": MetadataValue.timestamp(since),
            "failed_partitions": MetadataValue.json([f.split(": ", 1)[0] for f in failures]),
        },
    )


def freshness_evaluation(
    integration, ledger: Ledger, now: datetime | None = None
) -> AssetCheckEvaluation:
    """Fresh when the last successful sync (of any hour) is within twice the interval."""
    now = now or utcnow()
    allowed = timedelta(minutes=2 * integration.sync_interval_minutes)
    last = ledger_errors(ledger, integration.name).last_success_at
    passed = last is not None and now - last <= allowed
    metadata = {"allowed_minutes": 2 * integration.sync_interval_minutes}
    if last is not None:
        metadata["last_success_at"] = MetadataValue.timestamp(last)
        metadata["minutes_since_last_success"] = round((now - last).total_seconds() / 60, 1)
    if passed:
        description = f"synced {metadata['minutes_since_last_success']} min ago"
    elif last is None:
        description = "never synced successfully"
    else:
        description = (
            f"stale: last successful sync {metadata['minutes_since_last_success']} min ago, "
            f"more than twice the {integration.sync_interval_minutes}-minute interval"
        )
    return AssetCheckEvaluation(
        asset_key=asset_key(integration.name),
        check_name=FRESHNESS,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def run_checks(
    context: AssetExecutionContext, integration, ledger: Ledger, failures: list[str]
) -> Iterator[AssetCheckResult | AssetCheckEvaluation | Output]:
    """At the end of a run: status and freshness, and the outputs Dagster expects once per check
    (the per-hour evaluations were events; the check outputs carry no value)."""
    selected = _selected(context)
    if STATUS in selected:
        yield status_result(integration, ledger, failures)
    if FRESHNESS in selected:
        evaluation = freshness_evaluation(integration, ledger)
        yield AssetCheckResult(
            check_name=FRESHNESS,
            passed=evaluation.passed,
            severity=evaluation.severity,
            description=evaluation.description,
            metadata=evaluation.metadata,
        )
    for output_name, spec in context.assets_def.check_specs_by_output_name.items():
        if spec.name not in (STATUS, FRESHNESS) and spec.name in selected:
            yield Output(None, output_name=output_name)


def latest_evaluation(instance, name: str, check: str) -> tuple[AssetCheckEvaluation, str] | None:
    """The latest completed evaluation of a check and the id of its run ("" for a runless one).
    A planned one (its run still going) is passed over."""
    key = AssetCheckKey(asset_key(name), check)
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=10):
        event = record.event.dagster_event if record.event else None
        data = event.event_specific_data if event else None
        if isinstance(data, AssetCheckEvaluation):
            return data, record.run_id
    return None
