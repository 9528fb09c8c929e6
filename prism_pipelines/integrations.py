"""The integrations file: typed models, loading, and one message per problem.

The file is YAML (path from ``PRISM_INTEGRATIONS``, default ``integrations.yaml`` at the project
root) whose ``integrations`` key lists one entry per destination. Secrets are never inline: they
are ``{env: VAR_NAME}`` and read from the environment only when a sink needs them, so the file,
the run config and the UI never hold a secret.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from prism_pipelines.errors import CredentialsError, IntegrationsFileError, UnknownIntegrationError
from prism_pipelines.extras import missing
from prism_pipelines.home import in_home
from prism_pipelines.hours import floor_hour
from prism_pipelines.records import EXPORTED_FIELDS
from prism_pipelines.sinks.datadog.sites import SITE_ALIASES, site_domain
from prism_pipelines.source import unknown_columns_problem

SYNC_INTERVALS = (1, 2, 5, 10, 15, 30, 60)


class Secret(BaseModel):
    """A secret named by its environment variable; its value is read at use, never stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

    def value(self, integration: str, field: str) -> str:
        value = os.environ.get(self.env)
        if not value:
            raise CredentialsError(
                f"integration '{integration}': {field} comes from the environment variable "
                f"{self.env}, which is not set; export it where Dagster runs"
            )
        return value

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r})"


def _secret_not_inline(value: Any) -> Any:
    if isinstance(value, str):
        # Never echo the value: it may be the secret itself.
        raise ValueError("a secret is never written inline: write it as {env: VAR_NAME}")
    return value


SecretRef = Annotated[Secret, BeforeValidator(_secret_not_inline)]


class History(BaseModel):
    """Historical data: ``none`` (only new traffic) or the hours to backfill from (and until).
    ``since`` is an ISO time, or a span like ``-24h`` / ``-30d``: that long before the hour the
    integration was first configured (so the demo's history is the demo traffic's own window,
    and the partitions' start does not move as time passes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    since: datetime | None = None
    until: datetime | None = None
    #: ``since: -24h``: how long before the hour the integration was first configured
    since_before: timedelta = Field(timedelta(0), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _none_means_new_traffic_only(cls, value: Any) -> Any:
        if value is None or value == "none":
            return {}
        if isinstance(value, str):
            raise ValueError(
                "history is 'none' or {since: <ISO time, or a span like -24h or -30d>, "
                "until: <ISO time>}"
            )
        if isinstance(value, dict) and isinstance(value.get("since"), str):
            span = _SPAN.fullmatch(value["since"].strip())
            if span:
                number, unit = int(span[1]), span[2]
                before = timedelta(hours=number) if unit == "h" else timedelta(days=number)
                return {**{k: v for k, v in value.items() if k != "since"}, "since_before": before}
        return value

    @field_validator("since", "until")
    @classmethod
    def _to_utc_hour(cls, value: datetime | None) -> datetime | None:
        return None if value is None else floor_hour(value)

    @model_validator(mode="after")
    def _until_after_since(self) -> History:
        if self.until and not (self.since or self.since_before):
            raise ValueError("history.until needs history.since")
        if self.since and self.until and self.until <= self.since:
            raise ValueError("history.until must be after history.since")
        return self

    @property
    def backfills(self) -> bool:
        """Whether there is historical data to sync (not ``history: none``)."""
        return self.since is not None or self.since_before > timedelta(0)

    def start(self, first_configured: datetime) -> datetime:
        """The first hour to sync, given the hour the integration was first configured."""
        return self.since or first_configured - self.since_before


#: ``since: -24h`` / ``-30d``
_SPAN = re.compile(r"-\s*(\d+)\s*([hd])")


class Alerts(BaseModel):
    """Thresholds of the gateway alerts (the observability spec's alerting table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error_rate: float = Field(0.05, gt=0, le=1, description="error share that trips the alert")
    error_rate_window_minutes: int = Field(15, ge=1, le=60)
    error_rate_min_requests: int = Field(20, ge=1, description="below this, a window is noise")
    p95_latency_ms: int | None = Field(None, gt=0)
    hourly_budget_usd: float | None = Field(None, gt=0)
    budget_warn_percent: float = Field(80, gt=0, le=100)
    max_guardrail_triggers: int | None = Field(None, ge=0)


class IntegrationBase(BaseModel):
    """What every integration has, whatever its destination."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    sync_interval_minutes: int = 5
    history: History = History()
    paused: bool = False
    fields: tuple[str, ...] | None = Field(
        None, description="narrow the exported record to these fields, in this order"
    )
    batch_rows: int | None = Field(None, ge=1, description="rows per batch (file, send unit)")
    grace_minutes: int = Field(
        15, ge=0, le=59, description="how long after an hour closes the schedule still syncs it"
    )
    alerts: Alerts = Alerts()

    #: rows per batch when ``batch_rows`` is not set: one file for storage, one ack unit for
    #: queues (a crash re-sends at most this many).
    default_batch_rows: ClassVar[int] = 10_000

    @field_validator("sync_interval_minutes")
    @classmethod
    def _known_interval(cls, value: int) -> int:
        if value not in SYNC_INTERVALS:
            raise ValueError(f"must be one of {', '.join(map(str, SYNC_INTERVALS))} (minutes)")
        return value

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            unknown = [f for f in value if f not in EXPORTED_FIELDS]
            if unknown:
                raise ValueError(
                    f"unknown field(s) {', '.join(unknown)}; known: {', '.join(EXPORTED_FIELDS)}"
                )
            if not value:
                raise ValueError("an empty field list would export nothing")
        return value

    @property
    def rows_per_batch(self) -> int:
        return self.batch_rows or self.default_batch_rows

    def secret(self, field: str) -> str | None:
        """The value of the secret in ``field``, read from the environment now."""
        ref: Secret | None = getattr(self, field)
        return None if ref is None else ref.value(self.name, field)

    def scrub(self, text: str) -> str:
        """``text`` with this integration's secret values masked: a last guard for error text
        that quotes a client's message, which we do not control."""
        for _, value in self:
            for ref in value.values() if isinstance(value, dict) else (value,):
                secret = os.environ.get(ref.env) if isinstance(ref, Secret) else None
                if secret:
                    text = text.replace(secret, "***")
        return text


def _one_of(field: str, allowed: tuple[str, ...], meaning: str):
    """A validator that names the allowed values when ``field`` holds another."""

    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"must be {' or '.join(allowed)} ({meaning})")
        return value

    return field_validator(field, mode="before")(check)


class StorageIntegration(IntegrationBase):
    """What the four archives share: the folder prefix, and the files' format, layout and
    manifest (DESIGN.md, "Archive formats, layouts and manifests")."""

    prefix: str = ""
    format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="gzip JSONL (the spec's) or Parquet (zstd, typed columns)"
    )
    layout: Literal["spec", "hive"] = Field(
        "spec", description="logs/YYYY/MM/DD/hour=HH (spec) or logs/date=YYYY-MM-DD/hour=HH (hive)"
    )
    manifest: bool = Field(False, description="write _manifest.json once an hour is complete")

    _format = _one_of("format", ("jsonl", "parquet"), "gzip JSONL, the default, or Parquet")
    _layout = _one_of(
        "layout", ("spec", "hive"), "logs/YYYY/MM/DD/hour=HH, the default, or logs/date=…/hour=HH"
    )

    @field_validator("manifest", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value


#: the fields only storage types take (a queue or Datadog entry that has one is told so)
STORAGE_ONLY_FIELDS = ("format", "layout", "manifest")


class LocalIntegration(StorageIntegration):
    """A folder that stands for a bucket: the embedded default and the benchmark's baseline."""

    type: Literal["local"]
    path: str = "archive"
    default_batch_rows: ClassVar[int] = 100_000

    @property
    def folder(self) -> Path:
        return in_home(self.path)


def _aws_keys_in_pairs(integration: S3Integration | SqsIntegration):
    if (integration.access_key_id is None) != (integration.secret_access_key is None):
        raise ValueError(
            "access_key_id and secret_access_key go together (leave both out to use the "
            "AWS default credential chain)"
        )
    return integration


class S3Integration(StorageIntegration):
    type: Literal["s3"]
    bucket: str
    region: str
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    endpoint_url: str | None = None
    default_batch_rows: ClassVar[int] = 100_000

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Integration:
        return _aws_keys_in_pairs(self)


class AzureBlobIntegration(StorageIntegration):
    type: Literal["azure_blob"]
    container: str
    connection_string: SecretRef
    default_batch_rows: ClassVar[int] = 100_000


class GcsIntegration(StorageIntegration):
    type: Literal["gcs"]
    bucket: str
    service_account_json: SecretRef | None = None
    project_id: str | None = None
    endpoint_url: str | None = None
    default_batch_rows: ClassVar[int] = 100_000


class SqsIntegration(IntegrationBase):
    type: Literal["sqs"]
    queue_url: str
    region: str
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    endpoint_url: str | None = None
    message_source: str = "prism-gateway"
    message_event_type: str = "request"
    group_id_field: str | None = Field(
        None,
        description="FIFO only: record field for MessageGroupId; unset = one constant group "
        "(strict order, one group's throughput)",
    )
    default_batch_rows: ClassVar[int] = 1_000

    @property
    def is_fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> SqsIntegration:
        return _aws_keys_in_pairs(self)


class PubSubIntegration(IntegrationBase):
    type: Literal["pubsub"]
    topic_path: Annotated[str, Field(pattern=r"^projects/[^/]+/topics/[^/]+$")]
    project_id: str | None = None
    service_account_json: SecretRef | None = None
    endpoint_url: str | None = None
    message_source: str = "prism-gateway"
    message_event_type: str = "request"
    ordering_key_field: str | None = None
    default_batch_rows: ClassVar[int] = 1_000


class DatadogIntegration(IntegrationBase):
    type: Literal["datadog"]
    site: str = "datadoghq.com"
    api_key: SecretRef
    app_key: SecretRef | None = None
    endpoint_url: str | None = None
    ddsource: str = "futureagi"
    service: str = "prism-gateway"
    tags: tuple[str, ...] = ()
    logs_per_request: int = Field(500, ge=1, le=1000)
    old_logs: Literal["reject", "send_now"] = Field(
        "reject",
        description="logs older than Datadog's 18 h intake window: reject with reason, or send "
        "with the current time and the event time kept as an attribute",
    )
    metric_namespace: str = "prism.gateway"
    old_metrics: Literal["skip", "submit"] = Field(
        "skip",
        description="metric points older than Datadog's 1 h window: skip (counted) or submit "
        "(accounts with historical metric ingestion)",
    )
    default_batch_rows: ClassVar[int] = 5_000

    @field_validator("site")
    @classmethod
    def _known_site(cls, value: str) -> str:
        site = site_domain(value)
        if site is None:
            raise ValueError(
                f"unknown Datadog site '{value}'; use one of "
                f"{', '.join(sorted(k.upper() for k in SITE_ALIASES))} or its domain"
            )
        return site


#: header names whose value is a credential: never inline, always {env: VAR}
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature", re.IGNORECASE)


class OtlpIntegration(IntegrationBase):
    """OpenTelemetry traces over OTLP/HTTP (DESIGN.md, "OpenTelemetry traces")."""

    type: Literal["otlp"]
    endpoint: str = Field(description="the receiver's base URL; spans go to {endpoint}/v1/traces")
    headers: dict[str, str | SecretRef] = Field(
        default_factory=dict, description="sent with every request; credentials as {env: VAR}"
    )
    encoding: Literal["protobuf", "json"] = "protobuf"
    compression: Literal["none", "gzip"] = "none"
    service_name: str = Field("prism-gateway", min_length=1)
    spans_per_request: int = Field(1000, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: a crash re-sends at most one batch: with the defaults, about one request of spans
    default_batch_rows: ClassVar[int] = 1_000

    _encoding = _one_of("encoding", ("protobuf", "json"), "protobuf, the default, or OTLP/JSON")
    _compression = _one_of("compression", ("none", "gzip"), "none, the default, or gzip")

    @field_validator("endpoint")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be the receiver's http:// or https:// base URL")
        if value.endswith("/v1/traces"):
            raise ValueError(
                "is the receiver's base URL: leave out /v1/traces, which is added to it"
            )
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _credentials_not_inline(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, header in value.items():
                if isinstance(header, str) and _CREDENTIAL_HEADER.search(str(name)):
                    # Never echo the value: it is likely the credential itself.
                    raise ValueError(
                        f"{name}: a credential header is never written inline: write it as "
                        "{env: VAR_NAME}"
                    )
        return value

    @property
    def traces_url(self) -> str:
        return f"{self.endpoint}/v1/traces"


@dataclass(frozen=True)
class Destination:
    """One integration type, declared once: its settings, its sink, its Dagster kind."""

    model: type[IntegrationBase]
    #: ``module:Class``, imported only when an integration of the type is built, so loading the
    #: code location does not import every cloud SDK
    sink: str
    #: the kind tag Dagster shows on the asset (one of Dagster's known kinds, for its icon)
    kind: str
    #: the package extra that installs the type's SDK (``extras.EXTRAS``; None: nothing more)
    extra: str | None = None
    #: whether the type has a dashboard template (a ``<name>_dashboard`` job)
    dashboard: bool = False

    @property
    def type(self) -> str:
        return self.model.model_fields["type"].annotation.__args__[0]


DESTINATIONS = {
    d.type: d
    for d in (
        Destination(LocalIntegration, "prism_pipelines.sinks.storage.local:LocalSink", "file"),
        Destination(S3Integration, "prism_pipelines.sinks.storage.s3:S3Sink", "s3", extra="s3"),
        Destination(
            AzureBlobIntegration,
            "prism_pipelines.sinks.storage.azure_blob:AzureBlobSink",
            "azure",
            extra="azure",
        ),
        Destination(
            GcsIntegration, "prism_pipelines.sinks.storage.gcs:GcsSink", "gcs", extra="gcs"
        ),
        Destination(SqsIntegration, "prism_pipelines.sinks.sqs:SqsSink", "sqs", extra="sqs"),
        Destination(
            PubSubIntegration, "prism_pipelines.sinks.pubsub:PubSubSink", "pubsub", extra="pubsub"
        ),
        Destination(
            DatadogIntegration,
            "prism_pipelines.sinks.datadog.sink:DatadogSink",
            "datadog",
            extra="datadog",
            dashboard=True,
        ),
        Destination(
            OtlpIntegration,
            "prism_pipelines.sinks.otlp.sink:OtlpSink",
            "opentelemetry",  # Dagster has no icon for it: the kind shows as text
            extra="otlp",
        ),
    )
}
INTEGRATION_TYPES = tuple(DESTINATIONS)
STORAGE_TYPES = tuple(t for t, d in DESTINATIONS.items() if issubclass(d.model, StorageIntegration))
Integration = Annotated[
    Union[tuple(d.model for d in DESTINATIONS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="type"),
]


def destination(integration: IntegrationBase) -> Destination:
    return DESTINATIONS[integration.type]


class SourceSettings(BaseModel):
    """Where the gateway's rows are, when the gateway names its table or columns differently."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table: str = "prism_request_logs"
    columns: dict[str, str] = {}
    settle_seconds: float = Field(
        5.0, ge=0, description="rows younger than this are held back (out-of-order commits)"
    )

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        problem = unknown_columns_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Notifications(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    webhook_url: SecretRef | None = None


class IntegrationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    integrations: list[Integration]
    source: SourceSettings = SourceSettings()
    notifications: Notifications = Notifications()

    def get(self, name: str) -> Integration:
        for integration in self.integrations:
            if integration.name == name:
                return integration
        known = ", ".join(i.name for i in self.integrations) or "none"
        raise UnknownIntegrationError(f"no integration named '{name}' (configured: {known})")


_FILE = TypeAdapter(IntegrationsFile)


def integrations_path() -> Path:
    """``PRISM_INTEGRATIONS``, else ``integrations.yaml`` under ``PRISM_HOME``."""
    return in_home(os.environ.get("PRISM_INTEGRATIONS") or "integrations.yaml")


def load_integrations(path: str | Path | None = None) -> IntegrationsFile:
    """Read and validate the integrations file; every problem is reported at once."""
    path = Path(path) if path else integrations_path()
    return parse_integrations(read_integrations_file(path), str(path))


def read_integrations_file(path: Path) -> Any:
    """The file's YAML, not yet validated."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrationsFileError(
            str(path), ["file not found: create it or point PRISM_INTEGRATIONS at it"]
        ) from None
    except IsADirectoryError:
        raise IntegrationsFileError(
            str(path), ["is a folder: point PRISM_INTEGRATIONS at the YAML file itself"]
        ) from None
    except OSError as exc:
        raise IntegrationsFileError(str(path), [f"cannot be read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise IntegrationsFileError(
            str(path), [f"line {line} is not UTF-8 text: save the file as UTF-8"]
        ) from None
    except yaml.YAMLError as exc:
        raise IntegrationsFileError(str(path), [_yaml_problem(exc)]) from None


def parse_integrations(raw: Any, origin: str) -> IntegrationsFile:
    """Validate what an integrations file (or a PrismIntegrations component's attributes) holds;
    every problem is reported at once, under ``origin`` (the file it came from)."""
    problems = _shape_problems(raw)
    if problems:
        raise IntegrationsFileError(origin, problems)
    try:
        parsed = _FILE.validate_python(raw)
    except ValidationError as exc:
        raise IntegrationsFileError(origin, _describe(exc, raw)) from None
    names = [i.name for i in parsed.integrations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise IntegrationsFileError(
            origin, [f"integration '{n}': name is used more than once" for n in duplicates]
        )
    problems = list(filter(None, map(_missing_extra, parsed.integrations)))
    if problems:
        raise IntegrationsFileError(origin, problems)
    return parsed


def _missing_extra(integration: IntegrationBase) -> str | None:
    """The ``pip install`` an integration's type still needs."""
    extra = destination(integration).extra
    label = f"integration '{integration.name}': type {integration.type}"
    return (extra and missing(extra, label)) or None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML is wrong and what is wrong, never the offending text (PyYAML's own message
    quotes the line, which may hold a secret written inline)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def _shape_problems(raw: Any) -> list[str]:
    """Problems pydantic would word poorly: the top-level shape and unknown types."""
    if not isinstance(raw, dict) or not isinstance(raw.get("integrations"), list):
        return ["the file must be a mapping whose key 'integrations' holds a list of entries"]
    problems = []
    for index, entry in enumerate(raw["integrations"]):
        label = _label(raw, index)
        if not isinstance(entry, dict):
            problems.append(f"{label}: each entry is a mapping with name, type and settings")
        elif entry.get("type") not in INTEGRATION_TYPES:
            problems.append(
                f"{label}: type '{entry.get('type')}' is not one of {', '.join(INTEGRATION_TYPES)}"
            )
        elif not issubclass(DESTINATIONS[entry["type"]].model, StorageIntegration):
            problems.extend(
                f"{label}: {field}: only storage types ({', '.join(STORAGE_TYPES)}) take "
                f"{field}; remove it"
                for field in STORAGE_ONLY_FIELDS
                if field in entry
            )
    return problems


def _label(raw: dict, index: int) -> str:
    entry = raw["integrations"][index]
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"integration '{name}'" if name else f"integration #{index + 1} (no name)"


def _describe(exc: ValidationError, raw: dict) -> list[str]:
    """Turn pydantic's errors into 'integration X: field: what to do' lines (never the input,
    which may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = list(error["loc"])
        message = re.sub(r"^Value error, ", "", error["msg"])
        if loc[:1] == ["integrations"] and len(loc) >= 2 and isinstance(loc[1], int):
            label = _label(raw, loc[1])
            field = ".".join(str(p) for p in loc[3:])  # loc[2] is the type tag
            problems.append(f"{label}: {field or 'entry'}: {message}")
        else:
            problems.append(f"{'.'.join(str(p) for p in loc) or 'file'}: {message}")
    return problems
