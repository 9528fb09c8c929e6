"""Amazon SQS: every exported record is one JSON message.

The anatomy every sink has:
- settings and healthcheck: ``validate`` reads the queue's attributes (it exists, the keys work,
  its ``MaximumMessageSize``);
- request builder: records become entries, packed into ``SendMessageBatch`` requests of at most
  10 entries and the batch byte limit, counted the way SQS counts them (UTF-8 body plus every
  attribute's name, type and value);
- service: requests go out from a small pool of threads (boto3 clients are thread-safe), so a
  run is bounded by the service rather than by one round trip at a time. Throttling and 5xx
  are retried by botocore's standard retry mode (``aws.py``); entries that failed inside a
  successful call are retried alone through ``retry.RetryLogic`` (``PartFailed``), or rejected
  for good when SQS says the sender is at fault.

At least once: a batch is acknowledged only when every entry of it was sent or rejected, so a
crash re-sends at most the batch in flight. On a FIFO queue the request id is the deduplication
id, so such a re-send within SQS's five-minute deduplication window is dropped by SQS itself.
"""

from __future__ import annotations

import hashlib
import re
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from prism_pipelines.batch import Batch, Chunk
from prism_pipelines.errors import CredentialsError, DestinationError
from prism_pipelines.records import EXPORTED_FIELDS, Reject
from prism_pipelines.sinks.aws import KEY_REFUSED, NOT_ALLOWED, build_client, error_code
from prism_pipelines.sinks.base import Delivery, Sink
from prism_pipelines.sinks.retry import (
    Action,
    Backoff,
    PartFailed,
    RetryCount,
    RetryLogic,
    Verdict,
    part_failed,
)

#: SendMessageBatch takes at most 10 entries.
SQS_BATCH_ENTRIES = 10
#: SendMessageBatch's total payload limit, 1 MiB since August 2025 (256 KiB before).
SQS_BATCH_BYTES = 1_048_576
#: The largest ``MaximumMessageSize`` a queue may have (also 1 MiB since August 2025).
SQS_MESSAGE_BYTES = 1_048_576
#: Deduplication and group ids: 1 to 128 characters of printable ASCII without space.
SQS_ID = re.compile(r"^[!-~]{1,128}$")
#: Characters SQS accepts in a message (body and attribute values):
#: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF.
SQS_INVALID_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: orjson escapes control characters, and cannot encode lone surrogates, so U+FFFE and U+FFFF
#: are the only characters SQS refuses that can reach a body: look for their UTF-8 bytes.
_REFUSED_IN_BODY = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")

#: MessageGroupId of every message of a FIFO queue when ``group_id_field`` is unset (or the
#: record's value is null): one group is strictly ordered, at one group's throughput.
DEFAULT_GROUP_ID = "prism-gateway"
#: Concurrent SendMessageBatch calls. Standard queues take nearly unlimited calls; a FIFO
#: group's order needs its messages sent one call after another, so FIFO spreads groups over
#: this many lanes (a single constant group is one lane).
SEND_WORKERS = 8
#: botocore's attempts per call (standard mode: exponential backoff with jitter for throttling,
#: 5xx and connection errors).
SDK_MAX_ATTEMPTS = 8
VALIDATE_MAX_ATTEMPTS = 2
#: Entries that failed inside a successful call (SenderFault false) are retried this way.
ENTRY_BACKOFF = Backoff(base_seconds=0.2, cap_seconds=20.0, attempts=8)

_MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


@dataclass(slots=True)
class _Entry:
    """One record as a SendMessageBatch entry, with what a reject or the tally needs."""

    source_id: int
    request_id: str | None
    record: dict
    size: int
    group: str | None
    entry: dict


@dataclass
class _Tally:
    sent: int = 0
    bytes: int = 0
    requests: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def add(self, other: _Tally) -> None:
        self.sent += other.sent
        self.bytes += other.bytes
        self.requests += other.requests
        self.rejects.extend(other.rejects)


class SqsSink(Sink):
    def __init__(self, integration):
        super().__init__(integration)
        self._client = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: the queue's MaximumMessageSize, read once per run (the sink lives for one run)
        self.max_message_bytes: int | None = None
        self._attributes = {
            "source": _string(integration.message_source),
            "event_type": _string(integration.message_event_type),
        }
        self._attributes_size = _attributes_size(self._attributes)
        #: the two kinds of retry, each shown in the metadata; ``self.retries`` is their sum
        self.sdk_retries = RetryCount()
        self.entry_retries = RetryCount()

    # -- settings and healthcheck ----------------------------------------------------------------

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self, max_attempts: int = SDK_MAX_ATTEMPTS):
        # A connection pool as large as our pool of sender threads.
        return build_client(
            "sqs",
            self.integration,
            max_attempts,
            self.sdk_retries,
            max_pool_connections=SEND_WORKERS,
            connect_timeout=10,
            read_timeout=60,
        )

    def validate(self) -> str:
        self._check_group_field()
        # Few attempts: Validate & Continue should answer in seconds, also when nothing answers.
        client = self._build_client(VALIDATE_MAX_ATTEMPTS)
        try:
            size = self._read_max_message_bytes(client)
        finally:
            client.close()
        kind = "FIFO" if self.integration.is_fifo else "standard"
        return (
            f"queue {self.integration.queue_url} exists ({kind}, MaximumMessageSize {size} "
            f"bytes) and the credentials were accepted"
        )

    def _read_max_message_bytes(self, client) -> int:
        try:
            response = client.get_queue_attributes(
                QueueUrl=self.integration.queue_url,
                AttributeNames=["MaximumMessageSize"],
            )
        except Exception as exc:  # every failure becomes one of our errors
            raise self._error(exc, "reading the queue's attributes") from None
        value = response.get("Attributes", {}).get("MaximumMessageSize")
        self.max_message_bytes = min(int(value), SQS_MESSAGE_BYTES) if value else SQS_MESSAGE_BYTES
        return self.max_message_bytes

    def _check_group_field(self) -> None:
        field_name = self.integration.group_id_field
        exported = self.integration.fields or EXPORTED_FIELDS
        if field_name is not None and field_name not in exported:
            raise DestinationError(
                f"integration '{self.integration.name}': group_id_field '{field_name}' is not a "
                f"field of the exported record; use one of {', '.join(exported)}"
            )

    # -- request builder -------------------------------------------------------------------------

    def _entries(self, chunk: Chunk, rejects: list[Reject]) -> list[_Entry]:
        limit = self.max_message_bytes
        fifo = self.integration.is_fifo
        group_field = self.integration.group_id_field
        entries = []
        for record, line, source_id in zip(chunk.records, chunk.lines, chunk.ids, strict=True):
            request_id = record.get("request_id")
            attributes = dict(self._attributes)
            size = len(line) + self._attributes_size
            if request_id:
                attributes["request_id"] = _string(request_id)
                size += len("request_id") + len("String") + len(request_id.encode())
            if size > limit:
                rejects.append(
                    Reject(
                        source_id,
                        request_id,
                        f"too large for SQS: {size} bytes with its message attributes, over the "
                        f"queue's MaximumMessageSize of {limit} bytes",
                        record,
                    )
                )
                continue
            refused = _refused_character(line, request_id)
            if refused:
                rejects.append(
                    Reject(
                        source_id,
                        request_id,
                        f"invalid characters for SQS: the message contains {refused}, which SQS "
                        f"does not accept",
                        record,
                    )
                )
                continue
            entry = {
                "Id": str(source_id),
                "MessageBody": line.decode(),
                "MessageAttributes": attributes,
            }
            group = None
            if fifo:
                value = record.get(group_field) if group_field else None
                group = _sqs_id(str(value)) if value not in (None, "") else DEFAULT_GROUP_ID
                entry["MessageGroupId"] = group
                entry["MessageDeduplicationId"] = _sqs_id(request_id or f"prism-{source_id}")
            entries.append(_Entry(source_id, request_id, record, size, group, entry))
        return entries

    def _requests(self, entries: list[_Entry]) -> Iterator[list[_Entry]]:
        """Entries, in order, packed into requests within SQS's count and byte limits.

        The byte limit is the smaller of the request limit and the queue's MaximumMessageSize:
        conservative when a queue's message limit is small, and never a request SQS refuses."""
        limit = min(SQS_BATCH_BYTES, self.max_message_bytes)
        request: list[_Entry] = []
        size = 0
        for entry in entries:
            if request and (len(request) == SQS_BATCH_ENTRIES or size + entry.size > limit):
                yield request
                request, size = [], 0
            request.append(entry)
            size += entry.size
        if request:
            yield request

    def _lanes(self, entries: list[_Entry]) -> list[list[list[_Entry]]]:
        """Work for the pool: lists of requests, each list sent one request after another.

        Standard queues have no order, so every request is a lane of its own. A FIFO group's
        messages keep their order only if each request of the group is acknowledged before the
        next is sent, so groups are spread over lanes by a stable hash."""
        if not self.integration.is_fifo:
            return [[request] for request in self._requests(entries)]
        lanes: dict[int, list[_Entry]] = {}
        for entry in entries:
            lanes.setdefault(zlib.crc32(entry.group.encode()) % SEND_WORKERS, []).append(entry)
        return [list(self._requests(lane)) for lane in lanes.values()]

    # -- service ---------------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> Delivery:
        client = self.client  # built here, in one thread: creating a client is not thread-safe
        if self.max_message_bytes is None:  # the start of a run
            self._check_group_field()
            self._read_max_message_bytes(client)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SEND_WORKERS, thread_name_prefix="prism-sqs")
        tally = _Tally()
        sdk_before, entries_before = self.sdk_retries.value, self.entry_retries.value
        previous: list[Future] = []
        submitted: list[Future] = []
        try:
            for chunk in batch.chunks():
                entries = self._entries(chunk, tally.rejects)
                if self.integration.is_fifo:
                    # A group's next messages go only after its earlier ones were acknowledged.
                    _collect(previous, tally)
                    previous = []
                submitted = [
                    self._pool.submit(self._send_lane, client, lane)
                    for lane in self._lanes(entries)
                ]
                # One chunk is sent while the next is read from the database: memory stays at
                # about two chunks, and the pool is never idle while the source reads.
                _collect(previous, tally)
                previous, submitted = submitted, []
            _collect(previous, tally)
        finally:
            # After a failure, let the calls in flight finish before raising: no thread of
            # this batch may still be sending once the batch is reported failed.
            wait(previous + submitted)
        sdk_retries = self.sdk_retries.value - sdk_before
        entry_retries = self.entry_retries.value - entries_before
        self.retries.add(sdk_retries + entry_retries)
        return Delivery(
            records=tally.sent,
            bytes=tally.bytes,
            requests=tally.requests,
            retries=sdk_retries + entry_retries,
            rejects=tally.rejects,
            counters={
                "messages": tally.sent,
                "sdk_retries": sdk_retries,
                "entry_retries": entry_retries,
            },
        )

    def _send_lane(self, client, lane: list[list[_Entry]]) -> _Tally:
        tally = _Tally()
        for request in lane:
            tally.add(self._send_request(client, request))
        return tally

    def _send_request(self, client, entries: list[_Entry]) -> _Tally:
        """One SendMessageBatch; then only its failed entries again until none is left."""
        tally = _Tally()
        left = entries

        def attempt() -> None:
            nonlocal left
            try:
                response = client.send_message_batch(
                    QueueUrl=self.integration.queue_url, Entries=[e.entry for e in left]
                )
            except Exception as exc:  # every failure becomes one of our errors
                raise self._error(exc, "sending messages") from None
            tally.requests += 1
            by_id = {e.entry["Id"]: e for e in left}
            for sent in response.get("Successful", ()):
                entry = by_id.pop(sent["Id"])
                tally.sent += 1
                tally.bytes += entry.size
            last_failure = None
            for failed in response.get("Failed", ()):
                entry = by_id.get(failed["Id"])
                if entry is None:
                    continue
                if failed.get("SenderFault"):
                    del by_id[failed["Id"]]
                    tally.rejects.append(
                        Reject(
                            entry.source_id,
                            entry.request_id,
                            f"refused by SQS: {failed.get('Code')}: {failed.get('Message', '')}",
                            entry.record,
                        )
                    )
                else:
                    last_failure = failed
            # What is left failed on the service's side (or was not answered at all): again,
            # in its original order, so a FIFO group's retried messages stay in order.
            left = [e for e in left if e.entry["Id"] in by_id]
            if left:
                raise PartFailed(
                    len(left),
                    f"{last_failure.get('Code')}: {last_failure.get('Message', '')}"
                    if last_failure
                    else "entries missing from the response",
                )

        def classify(exc: Exception):
            # Whole calls were retried by botocore already: what reaches here is final.
            return part_failed(exc) or Verdict(Action.FATAL)

        def give_up(tries: int, last) -> DestinationError:
            return DestinationError(
                f"integration '{self.integration.name}': SQS failed {len(left)} message(s) "
                f"{tries} times ({last.reason}); the batch will be redone by the next run"
            )

        RetryLogic(ENTRY_BACKOFF, self.entry_retries).run(attempt, classify, give_up)
        return tally

    def _error(self, exc: Exception, doing: str) -> Exception:
        """A boto error as ours: what is wrong, and what to do (never a secret)."""
        name = self.integration.name
        queue = self.integration.queue_url
        if isinstance(exc, CredentialsError | DestinationError):
            return exc
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return CredentialsError(
                f"integration '{name}': no AWS credentials found; set access_key_id and "
                f"secret_access_key (as {{env: VAR}}) or give Dagster an AWS role"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error_code(exc)
            message = self.integration.scrub(error.get("Message", ""))
            if code in _MISSING_QUEUE_CODES or error.get("QueryErrorCode") in _MISSING_QUEUE_CODES:
                return DestinationError(
                    f"integration '{name}': queue {queue} does not exist (or is in another "
                    f"region than {self.integration.region}); create it or fix queue_url"
                )
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in KEY_REFUSED | NOT_ALLOWED or status == 403:
                # A 403 whose body the JSON protocol could not parse (an XML answer from a
                # proxy or an older endpoint) is still a refusal: say so, without the body.
                said = f"{code}: {message}" if code in KEY_REFUSED | NOT_ALLOWED else "HTTP 403"
                return CredentialsError(
                    f"integration '{name}': AWS refused the credentials while {doing} "
                    f"({said}); check access_key_id and secret_access_key and that "
                    f"they may call sqs:GetQueueAttributes, sqs:SendMessage and "
                    f"sqs:SendMessageBatch on {queue}"
                )
            retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            after = f" after {retried} retries" if retried else ""
            return DestinationError(
                f"integration '{name}': SQS answered {code}: {message}{after} while {doing} on "
                f"{queue}; the batch will be redone by the next run"
            )
        if isinstance(exc, BotoCoreError):
            endpoint = self.integration.endpoint_url or f"SQS in {self.integration.region}"
            return DestinationError(
                f"integration '{name}': cannot reach {endpoint} while {doing} "
                f"({type(exc).__name__}: {self.integration.scrub(str(exc))}); check endpoint_url, "
                f"region and the network"
            )
        return exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self.max_message_bytes = None


def _collect(futures: list[Future], tally: _Tally) -> None:
    """Wait for ``futures`` and add up their tallies; the first failure is raised once the rest
    have finished (a failed lane does not stop the others from finishing what they started)."""
    wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
        tally.add(future.result())


def _string(value: str) -> dict:
    return {"DataType": "String", "StringValue": value}


def _attributes_size(attributes: dict) -> int:
    """Bytes SQS counts for message attributes: name, data type and value of each."""
    return sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
        for name, a in attributes.items()
    )


def _sqs_id(value: str) -> str:
    """``value`` as a deduplication or group id; a value SQS would refuse (too long, other
    characters) is replaced by its SHA-256, which keeps equal values equal."""
    if SQS_ID.match(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()


def _refused_character(line: bytes, request_id: str | None) -> str | None:
    for sequence in _REFUSED_IN_BODY:
        if sequence in line:
            return f"U+{ord(sequence.decode()):04X}"
    if request_id:
        match = SQS_INVALID_CHARACTER.search(request_id)
        if match:
            return f"U+{ord(match.group()):04X} in its request_id"
    return None
