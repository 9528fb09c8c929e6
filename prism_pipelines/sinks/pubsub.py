"""Google Pub/Sub: every exported record is one JSON message, published asynchronously.

The anatomy every sink has:
- settings and healthcheck: ``validate`` asks Pub/Sub whether the credentials may publish to the
  topic (``testIamPermissions``; an emulator has no IAM, then only the topic's existence is
  checked);
- request builder: google-cloud-pubsub batches messages itself; we set its batch settings inside
  Pub/Sub's limits and its flow control to block, so memory stays bounded, and refuse a message
  over Pub/Sub's size limit before it is handed over;
- service: the client publishes in background threads and retries transient errors itself
  (google-api-core's ``Retry``, set in ``_build_publisher``: the SDK's retry does the job;
  its ``on_error`` hook counts into the sink's ``RetryCount``). A batch is acknowledged only
  once every publish future of it resolved; one failed future fails the batch, which the next
  run redoes.

At least once: a crash re-sends at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import wait

import grpc
from google.api_core import exceptions as google_exceptions
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_exceptions
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import (
    BatchSettings,
    LimitExceededBehavior,
    PublisherOptions,
    PublishFlowControl,
)
from google.oauth2 import service_account
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.types import PublishRequest, PubsubMessage

from prism_pipelines.batch import Batch
from prism_pipelines.errors import CredentialsError, DestinationError
from prism_pipelines.records import EXPORTED_FIELDS, Reject
from prism_pipelines.sinks.base import Delivery, Sink

#: A publish request holds at most 1,000 messages and 10 MB (10,000,000 bytes); so does the
#: largest message (data, attributes and ordering key, as the request encodes them).
PUBSUB_REQUEST_MESSAGES = 1_000
PUBSUB_REQUEST_BYTES = 10_000_000
#: Attribute values and ordering keys are at most 1,024 bytes.
PUBSUB_ATTRIBUTE_VALUE_BYTES = 1_024
PUBSUB_ORDERING_KEY_BYTES = 1_024
#: Our requests: full by count for ordinary records, and well under the byte limit so that one
#: slow request does not hold 10 MB.
BATCH_SETTINGS = BatchSettings(
    max_messages=PUBSUB_REQUEST_MESSAGES, max_bytes=4_000_000, max_latency=0.05
)
#: Messages handed to the client and not yet published: ``publish`` blocks beyond this. The
#: byte limit must exceed the largest message, or the client refuses it.
FLOW_CONTROL = PublishFlowControl(
    message_limit=5_000,
    byte_limit=32 * 1024 * 1024,
    limit_exceeded_behavior=LimitExceededBehavior.BLOCK,
)
#: google-api-core's default retry for Publish (the codes and timing of the generated client),
#: repeated here so that each retry is counted for the run's metadata.
RETRYABLE = (
    google_exceptions.Aborted,
    google_exceptions.Cancelled,
    google_exceptions.DeadlineExceeded,
    google_exceptions.InternalServerError,
    google_exceptions.ResourceExhausted,
    google_exceptions.ServiceUnavailable,
    google_exceptions.Unknown,
)
PUBLISH_DEADLINE_SECONDS = 600.0
PUBLISH_TIMEOUT_SECONDS = 60.0
#: How long a batch waits for its futures. With message ordering the client retries a key
#: forever, so the wait itself has to end.
ACK_TIMEOUT_SECONDS = PUBLISH_DEADLINE_SECONDS + PUBLISH_TIMEOUT_SECONDS
#: Validate & Continue answers within seconds, whether or not the endpoint answers.
VALIDATE_TIMEOUT_SECONDS = 5.0
VALIDATE_RETRY = Retry(
    initial=0.2,
    maximum=2.0,
    multiplier=2,
    timeout=VALIDATE_TIMEOUT_SECONDS,
    predicate=if_exception_type(
        google_exceptions.ServiceUnavailable, google_exceptions.DeadlineExceeded
    ),
)
PUBLISH_PERMISSION = "pubsub.topics.publish"

_DENIED = (
    google_exceptions.PermissionDenied,
    google_exceptions.Unauthenticated,
    google_exceptions.Forbidden,
    google_exceptions.Unauthorized,
    auth_exceptions.RefreshError,
    auth_exceptions.DefaultCredentialsError,
)
_UNREACHABLE = (
    google_exceptions.ServiceUnavailable,
    google_exceptions.DeadlineExceeded,
    google_exceptions.RetryError,
    auth_exceptions.TransportError,
)


class _CountingPublisher(pubsub_v1.PublisherClient):
    """The publisher, counting the Publish requests it makes (for the run's metadata)."""

    def __init__(self, *args, **kwargs):
        self.publish_requests = 0
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _gapic_publish(self, *args, **kwargs):
        with self._count_lock:
            self.publish_requests += 1
        return super()._gapic_publish(*args, **kwargs)


class PubSubSink(Sink):
    def __init__(self, integration):
        super().__init__(integration)
        self._publisher: _CountingPublisher | None = None
        self._lock = threading.Lock()
        self._attributes = {
            "source": integration.message_source,
            "event_type": integration.message_event_type,
        }
        self._attributes_size = sum(
            len(k.encode()) + len(v.encode()) for k, v in self._attributes.items()
        )
        self._base_request_size = PublishRequest(topic=integration.topic_path)._pb.ByteSize()

    # -- settings and healthcheck ----------------------------------------------------------------

    @property
    def publisher(self) -> _CountingPublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = self._build_publisher()
            return self._publisher

    def _build_publisher(self) -> _CountingPublisher:
        integration = self.integration
        retry = Retry(
            initial=0.1,
            maximum=60.0,
            multiplier=4,
            predicate=if_exception_type(*RETRYABLE),
            timeout=PUBLISH_DEADLINE_SECONDS,
            on_error=self._count_retry,
        )
        options = PublisherOptions(
            enable_message_ordering=integration.ordering_key_field is not None,
            flow_control=FLOW_CONTROL,
            retry=retry,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        kwargs: dict = {}
        endpoint = integration.endpoint_url
        if endpoint and endpoint.startswith("http://"):
            # Plaintext gRPC, as to an emulator: a transport on an insecure channel. Given as an
            # instance, it also wins over PUBSUB_EMULATOR_HOST, as an explicit setting should.
            target = endpoint.removeprefix("http://").rstrip("/")
            kwargs["transport"] = PublisherGrpcTransport(channel=grpc.insecure_channel(target))
        else:
            if endpoint:
                kwargs["client_options"] = {
                    "api_endpoint": endpoint.removeprefix("https://").rstrip("/")
                }
            credentials = self._credentials()
            if credentials is not None:
                kwargs["credentials"] = credentials
        try:
            return _CountingPublisher(
                batch_settings=BATCH_SETTINGS, publisher_options=options, **kwargs
            )
        except Exception as exc:  # every failure becomes one of our errors
            raise self._error(exc, "creating the Pub/Sub client") from None

    def _credentials(self):
        """The service account key, or None: Application Default Credentials (and, with
        PUBSUB_EMULATOR_HOST set, no credentials at all: the client handles both)."""
        text = self.integration.secret("service_account_json")
        if text is None:
            return None
        try:
            info = json.loads(text)
            return service_account.Credentials.from_service_account_info(
                info, scopes=["https://www.googleapis.com/auth/pubsub"]
            )
        except (ValueError, KeyError, TypeError):
            raise CredentialsError(
                f"integration '{self.integration.name}': service_account_json is not a service "
                f"account key (the JSON file downloaded from IAM > Service accounts > Keys); "
                f"put the whole file's content in the environment variable"
            ) from None

    def _count_retry(self, _exc: Exception) -> None:
        self.retries.add()

    def validate(self) -> str:
        self._check_ordering_field()
        topic = self.integration.topic_path
        publisher = self.publisher
        iam = "checked with testIamPermissions"
        try:
            granted = publisher.test_iam_permissions(
                request={"resource": topic, "permissions": [PUBLISH_PERMISSION]},
                retry=VALIDATE_RETRY,
                timeout=VALIDATE_TIMEOUT_SECONDS,
            ).permissions
        except google_exceptions.MethodNotImplemented:
            granted = None  # an emulator: no IAM to ask
            iam = "not checked: the endpoint has no IAM (an emulator)"
        except Exception as exc:  # every failure becomes one of our errors
            raise self._error(exc, "checking the publish permission") from None
        try:
            publisher.get_topic(
                request={"topic": topic}, retry=VALIDATE_RETRY, timeout=VALIDATE_TIMEOUT_SECONDS
            )
        except _DENIED:
            # roles/pubsub.publisher may publish without being allowed to read the topic.
            if granted is None:
                raise self._error(
                    google_exceptions.PermissionDenied("pubsub.topics.get"), "reading the topic"
                ) from None
        except Exception as exc:  # every failure becomes one of our errors
            raise self._error(exc, "reading the topic") from None
        if granted is not None and PUBLISH_PERMISSION not in granted:
            raise CredentialsError(
                f"integration '{self.integration.name}': the credentials may not publish to "
                f"{topic}; grant the service account roles/pubsub.publisher (the "
                f"{PUBLISH_PERMISSION} permission) on the topic"
            )
        return f"topic {topic} exists and the credentials may publish to it (permission {iam})"

    def _check_ordering_field(self) -> None:
        field_name = self.integration.ordering_key_field
        exported = self.integration.fields or EXPORTED_FIELDS
        if field_name is not None and field_name not in exported:
            raise DestinationError(
                f"integration '{self.integration.name}': ordering_key_field '{field_name}' is "
                f"not a field of the exported record; use one of {', '.join(exported)}"
            )

    # -- request builder and service -------------------------------------------------------------

    def deliver(self, batch: Batch) -> Delivery:
        self._check_ordering_field()
        publisher = self.publisher
        topic = self.integration.topic_path
        key_field = self.integration.ordering_key_field
        requests_before = publisher.publish_requests
        retries_before = self.retries.value
        rejects: list[Reject] = []
        futures = []
        sizes = []
        keys = []
        try:
            for chunk in batch.chunks():
                for record, line, source_id in zip(
                    chunk.records, chunk.lines, chunk.ids, strict=True
                ):
                    request_id = record.get("request_id")
                    attributes = dict(self._attributes)
                    if request_id:
                        attributes["request_id"] = request_id
                    key = _ordering_key(record.get(key_field)) if key_field else ""
                    reason = self._refusal(line, attributes, key)
                    if reason:
                        rejects.append(Reject(source_id, request_id, reason, record))
                        continue
                    # Blocks while the flow control's limits are reached: memory stays bounded.
                    futures.append(publisher.publish(topic, line, ordering_key=key, **attributes))
                    # As Pub/Sub counts a message: data, attributes and ordering key.
                    sizes.append(
                        len(line)
                        + self._attributes_size
                        + (len("request_id") + len(request_id.encode()) if request_id else 0)
                        + len(key.encode())
                    )
                    keys.append(key)
        finally:
            # Whatever happened, the messages handed over are the batch's: wait for them, so
            # that nothing of this batch is still being published once it is reported.
            done, not_done = wait(futures, timeout=ACK_TIMEOUT_SECONDS)
        failed = [(f, k) for f, k in zip(futures, keys, strict=True) if f in done and f.exception()]
        if failed and key_field:
            # A failed ordering key is paused by the client; let later batches use it again
            # (this batch is redone whole by the next run, in order).
            for key in {k for _, k in failed if k}:
                publisher.resume_publish(topic, key)
        if not_done:
            raise DestinationError(
                f"integration '{self.integration.name}': Pub/Sub did not acknowledge "
                f"{len(not_done)} of {len(futures)} message(s) within {ACK_TIMEOUT_SECONDS:g} s; "
                f"the batch will be redone by the next run"
            )
        if failed:
            error = self._error(failed[0][0].exception(), "publishing")
            raise type(error)(
                f"{error} ({len(failed)} of {len(futures)} message(s) of the batch failed; the "
                f"batch will be redone by the next run)"
            )
        retries = self.retries.value - retries_before
        return Delivery(
            records=len(futures),
            bytes=sum(sizes),
            requests=publisher.publish_requests - requests_before,
            retries=retries,
            rejects=rejects,
            counters={"messages": len(futures), "publish_retries": retries},
        )

    def _refusal(self, line: bytes, attributes: dict, key: str) -> str | None:
        """Why Pub/Sub would refuse this message (so it is rejected, not sent), or None."""
        request_id = attributes.get("request_id", "")
        if len(request_id.encode()) > PUBSUB_ATTRIBUTE_VALUE_BYTES:
            return (
                f"request_id too long for Pub/Sub: {len(request_id.encode())} bytes, over the "
                f"{PUBSUB_ATTRIBUTE_VALUE_BYTES}-byte attribute value limit"
            )
        estimate = (
            len(line) + self._attributes_size + len(request_id.encode()) + len(key.encode()) + 64
        )
        if estimate + self._base_request_size < PUBSUB_REQUEST_BYTES - 4096:
            return None
        # Near the limit: measure exactly what the client would (the request it would send).
        message = PubsubMessage(data=line, attributes=attributes, ordering_key=key)
        size = PublishRequest(messages=[message])._pb.ByteSize() + self._base_request_size
        if size > PUBSUB_REQUEST_BYTES:
            return (
                f"too large for Pub/Sub: {size} bytes as a publish request, over Pub/Sub's "
                f"limit of {PUBSUB_REQUEST_BYTES} bytes"
            )
        return None

    def _error(self, exc: BaseException, doing: str) -> Exception:
        """A Google error as ours: what is wrong, and what to do (never a secret)."""
        name = self.integration.name
        topic = self.integration.topic_path
        if isinstance(exc, CredentialsError | DestinationError):
            return exc
        detail = self.integration.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, google_exceptions.NotFound):
            return DestinationError(
                f"integration '{name}': topic {topic} does not exist; create it or fix topic_path"
            )
        if isinstance(exc, auth_exceptions.DefaultCredentialsError):
            return CredentialsError(
                f"integration '{name}': no service_account_json and no Application Default "
                f"Credentials found; set service_account_json (as {{env: VAR}}) or run Dagster "
                f"with a Google identity (workload identity, GOOGLE_APPLICATION_CREDENTIALS)"
            )
        if isinstance(exc, _DENIED):
            return CredentialsError(
                f"integration '{name}': Google refused the credentials while {doing} "
                f"({detail}); check service_account_json and grant it roles/pubsub.publisher "
                f"on {topic}"
            )
        if isinstance(exc, _UNREACHABLE):
            endpoint = self.integration.endpoint_url or "Pub/Sub"
            return DestinationError(
                f"integration '{name}': cannot reach {endpoint} while {doing} ({detail}); "
                f"check endpoint_url and the network"
            )
        return DestinationError(
            f"integration '{name}': Pub/Sub failed while {doing} on {topic} ({detail})"
        )

    def close(self) -> None:
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            try:
                publisher.stop()
            finally:
                publisher.transport.close()


def _ordering_key(value) -> str:
    """A record's value as an ordering key: none for null; a value over Pub/Sub's 1,024 bytes
    becomes its SHA-256, which keeps equal values in one order."""
    if value is None or value == "":
        return ""
    key = str(value)
    if len(key.encode()) > PUBSUB_ORDERING_KEY_BYTES:
        return hashlib.sha256(key.encode()).hexdigest()
    return key
