"""Telling people that an integration is in Error: a Slack-compatible webhook.

The run-failure sensor (dagster_defs/sensors.py) calls ``notify_failure`` for every failed sync.
An integration that keeps failing should not post on every run (a 5-minute schedule would post
288 messages a day), so each Error posts once when it starts, once more if it is still there an
hour later, and then stays quiet until it changes or clears:

- a new Error (first failure, or first failure after a successful sync, or a failure whose
  message differs from the one notified, ignoring numbers such as hours and ids): post;
- the same Error, in Error for more than an hour and not yet reminded: post a reminder;
- otherwise: only the Dagster UI (the run's failure event and the sensor's log).

What was notified is kept in the state database (``prism_notifications``, beside the ledger),
not in the sensor's cursor: a run-status sensor's cursor is Dagster's own (it tracks which runs
the sensor has seen), and the state database survives a wiped Dagster instance just like the
ledger whose successes clear an Error.

The webhook URL is a secret (a Slack URL carries its token): it comes from
``notifications.webhook_url: {env: VAR}`` and never appears in a log or a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import insert, select, update

from prism_pipelines.backlog import ledger_errors
from prism_pipelines.errors import PrismError
from prism_pipelines.ledger import Ledger, notified

REMIND_AFTER = timedelta(hours=1)
TIMEOUT_SECONDS = 10
MAX_ERROR_CHARS = 1_500  # Slack shows ~4,000 characters of a message; keep room for the rest


class NotificationError(PrismError):
    """The webhook could not be reached or refused the message (its URL is never included)."""


@dataclass(frozen=True)
class Failure:
    """A failed sync as the notification tells it."""

    integration: str
    type: str
    partitions: list[str]
    error: str
    run_id: str
    run_url: str | None = None


def fingerprint(error: str) -> str:
    """The error without what changes from run to run (hours, counts, batch ids, temporary file
    names): the same problem on another hour is the same Error."""
    without_ids = re.sub(r"\w*\d\w*", "#", error.strip())
    return without_ids[:2_000]


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def message_text(failure: Failure, kind: str, since: datetime, failed_runs: int) -> str:
    where = ", ".join(failure.partitions) or "no partition"
    error = (
        failure.error
        if len(failure.error) <= MAX_ERROR_CHARS
        else (failure.error[:MAX_ERROR_CHARS] + " …")
    )
    if kind == "reminder":
        head = (
            f":rotating_light: Prism integration *{failure.integration}* ({failure.type}) is "
            f"still in *Error* since {since:%Y-%m-%d %H:%M} UTC ({failed_runs} failed syncs)"
        )
    else:
        head = (
            f":rotating_light: Prism integration *{failure.integration}* ({failure.type}) is in "
            f"*Error*: the sync of {where} failed"
        )
    run = (
        f"<{failure.run_url}|run {failure.run_id[:8]}>"
        if failure.run_url
        else (f"run {failure.run_id}")
    )
    return f"{head}\n```{error}```\nPartitions: {where} · {run}"


def post_webhook(url: str, text: str) -> None:
    """POST ``{"text": ...}`` (Slack, Mattermost, Teams workflows, and most chat webhooks)."""
    try:
        response = requests.post(url, json={"text": text}, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise NotificationError(
            f"the notification webhook could not be reached ({type(exc).__name__}); check "
            f"notifications.webhook_url and the network"
        ) from None
    if response.status_code >= 300:
        raise NotificationError(
            f"the notification webhook answered HTTP {response.status_code}; check that "
            f"notifications.webhook_url is a valid incoming-webhook URL"
        )


class Notifier:
    """Decides whether a failure is worth a message, posts it, and remembers it."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def _state(self, integration: str):
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                select(notified).where(notified.c.integration == integration)
            ).first()

    def decide(self, failure: Failure, now: datetime) -> tuple[str | None, datetime, int]:
        """("new" | "reminder" | None, error since, failed runs) for this failure; records it."""
        state = self._state(failure.integration)
        last_success = ledger_errors(self.ledger, failure.integration).last_success_at
        fp = fingerprint(failure.error)
        cleared = state is not None and (
            last_success is not None and last_success > _utc(state.notified_at)
        )
        with self.ledger.engine.begin() as conn:
            if state is None or cleared or state.fingerprint != fp:
                values = {
                    "fingerprint": fp,
                    "error_since": now,
                    "notified_at": now,
                    "reminded_at": None,
                    "failed_runs": 1,
                }
                if state is None:
                    conn.execute(insert(notified).values(integration=failure.integration, **values))
                else:
                    conn.execute(
                        update(notified)
                        .where(notified.c.integration == failure.integration)
                        .values(**values)
                    )
                return "new", now, 1
            since, runs = _utc(state.error_since), state.failed_runs + 1
            remind = state.reminded_at is None and now - since >= REMIND_AFTER
            values = {"failed_runs": runs}
            if remind:
                values.update(reminded_at=now, notified_at=now)
            conn.execute(
                update(notified)
                .where(notified.c.integration == failure.integration)
                .values(**values)
            )
        return ("reminder" if remind else None), since, runs

    def forget(self, integration: str) -> None:
        """Undo the record of a message that could not be delivered, so the next failure
        tries again."""
        with self.ledger.engine.begin() as conn:
            conn.execute(notified.delete().where(notified.c.integration == integration))


def notify_failure(
    failure: Failure, webhook_url: str | None, ledger: Ledger, now: datetime | None = None
) -> str | None:
    """Post the failure to the webhook when it is news; returns the text posted (None: nothing
    was posted). Raises ``NotificationError`` when the webhook fails."""
    if not webhook_url:
        return None
    notifier = Notifier(ledger)
    kind, since, runs = notifier.decide(failure, now or datetime.now(UTC))
    if kind is None:
        return None
    text = message_text(failure, kind, since, runs)
    try:
        post_webhook(webhook_url, text)
    except NotificationError:
        if kind == "new":
            notifier.forget(failure.integration)
        raise
    return text
