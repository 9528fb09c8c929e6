"""Export to Amazon SQS, through Dagster, against a real moto server; a consumer reads every
message back with boto3.

Faults no server produces on demand (a crash after a call was accepted, entries failed inside a
200 answer, throttling) are injected by wrapping the client the sink builds, and only in the
tests about them. moto rescans a queue on every message it takes, so queues here stay small.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import orjson
import pytest
from botocore.awsrequest import AWSResponse

from prism_pipelines.records import EXPORTED_FIELDS
from prism_pipelines.sinks.sqs import DEFAULT_GROUP_ID, SqsSink
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import AWS_REGION, free_port

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"
NAME = "events"


@pytest.fixture
def sqs(moto_server, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_SQS_KEY_ID", "testing")
    monkeypatch.setenv("PRISM_TEST_SQS_SECRET", "testing")
    return moto_server.client("sqs")


@pytest.fixture
def make_queue(sqs):
    urls = []

    def make(fifo: bool = False, **attributes) -> str:
        name = f"prism-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attributes = {k: str(v) for k, v in attributes.items()}
        if fifo:
            attributes["FifoQueue"] = "true"
        urls.append(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
        return urls[-1]

    yield make
    for url in urls:
        sqs.delete_queue(QueueUrl=url)


def integration(moto_server, queue_url: str, **settings) -> dict:
    return {
        "name": NAME,
        "type": "sqs",
        "queue_url": queue_url,
        "region": AWS_REGION,
        "endpoint_url": moto_server.endpoint_url,
        "access_key_id": {"env": "PRISM_TEST_SQS_KEY_ID"},
        "secret_access_key": {"env": "PRISM_TEST_SQS_SECRET"},
        "history": {"since": "2026-11-20T00:00:00Z"},
        **settings,
    }


def consume(sqs, queue_url: str) -> list[dict]:
    """Every message in the queue, in the order received (deleted as read)."""
    messages: list[dict] = []
    empty = 0
    while empty < 2:  # moto may answer empty once while a send is still being stored
        received = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            empty += 1
            continue
        empty = 0
        messages += received
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)
            ],
        )
    return messages


def request_ids(messages: list[dict]) -> Counter:
    return Counter(orjson.loads(m["Body"])["request_id"] for m in messages)


def exported(row: tuple) -> dict:
    """The exported-record contract for a factory row, written out independently of the code."""
    values = dict(zip(INSERT_COLUMNS, row, strict=True))
    record = {field: values[field] for field in EXPORTED_FIELDS}
    stamp = values["timestamp"]
    record["timestamp"] = f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}Z"
    return record


def ids(rows: list[tuple]) -> list[str]:
    return [row[INSERT_COLUMNS.index("request_id")] for row in rows]


class Wrapped:
    """The real boto3 client, with ``send_message_batch`` replaced by ``send(real, **kwargs)``."""

    def __init__(self, client, send):
        self._client, self._send = client, send

    def send_message_batch(self, **kwargs):
        return self._send(self._client, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def wrap_sink_client(monkeypatch, send):
    build = SqsSink._build_client
    monkeypatch.setattr(
        SqsSink, "_build_client", lambda self, *args: Wrapped(build(self, *args), send)
    )


class SimulatedCrash(Exception):
    pass


def crash_after_call(number: int):
    """The call ``number`` is accepted by SQS, then the process 'dies' before it hears back."""
    calls = Counter()
    lock = threading.Lock()

    def send(client, **kwargs):
        response = client.send_message_batch(**kwargs)
        with lock:
            calls["n"] += 1
            crash = calls["n"] == number
        if crash:
            raise SimulatedCrash("the worker died after SQS accepted the call")
        return response

    return send


def test_sqs_queue_receives_every_record_as_json_with_attributes(
    prism, gateway, sqs, make_queue, moto_server
):
    rows = gateway_rows(H, 150)
    gateway.insert_rows([gateway_rows(H.replace(hour=13), 20), rows])
    queue = make_queue()
    prism.configure(integration(moto_server, queue, batch_rows=50, message_source="prism-prod"))

    run = prism.sync(NAME, KEY)

    messages = consume(sqs, queue)
    assert request_ids(messages) == Counter(ids(rows))
    expected = {r["request_id"]: r for r in map(exported, rows)}
    for message in messages:
        body = orjson.loads(message["Body"])
        assert list(body) == list(EXPORTED_FIELDS)
        assert body == expected[body["request_id"]]
        attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
        assert attributes == {
            "source": "prism-prod",
            "event_type": "request",
            "request_id": body["request_id"],
        }
    assert run.metadata["records"] == 150 and run.metadata["messages"] == 150
    assert run.metadata["requests"] == 15  # 10 messages per SendMessageBatch
    assert run.metadata["rejects"] == 0 and run.metadata["retries"] == 0
    assert run.metadata["bytes"] > sum(len(m["Body"]) for m in messages)  # attributes count
    assert prism.sync(NAME, KEY).metadata["records"] == 0
    assert consume(sqs, queue) == []


def test_sqs_fifo_delivers_each_record_once_after_crash(
    prism, gateway, sqs, make_queue, moto_server, monkeypatch
):
    rows = gateway_rows(H, 120)
    gateway.insert_rows([rows])
    queue = make_queue(fifo=True)
    prism.configure(integration(moto_server, queue, batch_rows=40, group_id_field="session_id"))
    with monkeypatch.context() as patch:
        wrap_sink_client(patch, crash_after_call(6))  # in the second batch (4 calls a batch)
        crashed = prism.sync(NAME, KEY, raise_on_error=False)
    assert not crashed.success and "the worker died" in crashed.error

    prism.sync(NAME, KEY)

    messages = consume(sqs, queue)
    assert request_ids(messages) == Counter(ids(rows))  # each exactly once
    by_group = defaultdict(list)
    for message in messages:
        body = orjson.loads(message["Body"])
        assert message["Attributes"]["MessageGroupId"] == body["session_id"]
        assert message["Attributes"]["MessageDeduplicationId"] == body["request_id"]
        by_group[body["session_id"]].append(body["request_id"])
    assert all(order == sorted(order) for order in by_group.values())  # each session in order


def test_sqs_fifo_without_group_field_uses_one_constant_group(
    prism, gateway, sqs, make_queue, moto_server
):
    gateway.insert_rows([gateway_rows(H, 30, session_id=None), gateway_rows(H, 30, start=30)])
    queue = make_queue(fifo=True)
    prism.configure(integration(moto_server, queue))

    prism.sync(NAME, KEY)

    messages = consume(sqs, queue)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {DEFAULT_GROUP_ID}
    assert [orjson.loads(m["Body"])["request_id"] for m in messages] == ids(
        gateway_rows(H, 30) + gateway_rows(H, 30, start=30)
    )


def test_sqs_standard_duplicates_after_crash_are_bounded_by_one_batch(
    prism, gateway, sqs, make_queue, moto_server, monkeypatch
):
    rows = gateway_rows(H, 150)
    gateway.insert_rows([rows])
    queue = make_queue()
    prism.configure(integration(moto_server, queue, batch_rows=50))
    with monkeypatch.context() as patch:
        wrap_sink_client(patch, crash_after_call(8))  # the middle of the second batch
        assert not prism.sync(NAME, KEY, raise_on_error=False).success

    run = prism.sync(NAME, KEY)

    received = request_ids(consume(sqs, queue))
    assert set(received) == set(ids(rows))  # at least once
    assert sum(received.values()) - len(rows) <= 50  # duplicates: at most the batch in flight
    assert run.metadata["records"] == 100  # the batch in flight again, then the last one


def test_sqs_partial_batch_failure_retries_only_the_failed_entries(
    prism, gateway, sqs, make_queue, moto_server, monkeypatch
):
    rows = gateway_rows(H, 200)
    gateway.insert_rows([rows])
    queue = make_queue()
    failures = Counter()
    lock = threading.Lock()

    def fail_every_other_entry_of_five_calls(client, QueueUrl, Entries):
        with lock:  # only full first attempts fail: a retry of the failed half goes through
            fail = failures["calls"] < 5 and len(Entries) == 10
            failures["calls"] += fail
            failures["entries"] += 5 * fail
        if not fail:
            return client.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)
        response = client.send_message_batch(QueueUrl=QueueUrl, Entries=Entries[::2])
        response["Failed"] = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in Entries[1::2]
        ]
        return response

    wrap_sink_client(monkeypatch, fail_every_other_entry_of_five_calls)
    prism.configure(integration(moto_server, queue))

    run = prism.sync(NAME, KEY)

    assert request_ids(consume(sqs, queue)) == Counter(ids(rows))  # nothing lost, no duplicate
    assert run.metadata["entry_retries"] == failures["entries"] == 25
    assert run.metadata["records"] == 200 and run.metadata["rejects"] == 0


def test_sqs_throttling_is_retried_by_the_sdk_and_loses_nothing(
    prism, gateway, sqs, make_queue, moto_server, monkeypatch
):
    rows = gateway_rows(H, 60)
    gateway.insert_rows([rows])
    queue = make_queue()
    throttled = Counter()
    lock = threading.Lock()

    class Body:
        def stream(self, **_):
            yield b'{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Rate exceeded"}'

    def throttle(request, **_):
        with lock:
            if throttled["n"] >= 3:
                return None
            throttled["n"] += 1
            headers = {
                "content-type": "application/x-amz-json-1.0",
                "x-amzn-query-error": "RequestThrottled;Sender",
            }
        return AWSResponse(request.url, 400, headers, Body())

    build = SqsSink._build_client

    def throttled_client(self, *args):
        client = build(self, *args)
        client.meta.events.register("before-send.sqs.SendMessageBatch", throttle)
        return client

    monkeypatch.setattr(SqsSink, "_build_client", throttled_client)
    prism.configure(integration(moto_server, queue))

    run = prism.sync(NAME, KEY)

    assert request_ids(consume(sqs, queue)) == Counter(ids(rows))
    assert throttled["n"] == 3 and run.metadata["sdk_retries"] == 3 and run.metadata["retries"] == 3


def test_sqs_entry_refused_by_sqs_is_a_reject_with_its_reason(
    prism, gateway, sqs, make_queue, moto_server, monkeypatch
):
    rows = gateway_rows(H, 40)
    gateway.insert_rows([rows])
    queue = make_queue()
    poisoned = ids(rows)[17]

    def refuse_one(client, QueueUrl, Entries):
        bad = [
            e for e in Entries if e["MessageAttributes"]["request_id"]["StringValue"] == poisoned
        ]
        good = [e for e in Entries if e not in bad]
        response = client.send_message_batch(QueueUrl=QueueUrl, Entries=good)
        response["Failed"] = [
            {
                "Id": e["Id"],
                "SenderFault": True,
                "Code": "InvalidMessageContents",
                "Message": "Invalid binary character '#x1B' was found in the message body",
            }
            for e in bad
        ]
        return response

    wrap_sink_client(monkeypatch, refuse_one)
    prism.configure(integration(moto_server, queue))

    run = prism.sync(NAME, KEY)

    assert request_ids(consume(sqs, queue)) == Counter(i for i in ids(rows) if i != poisoned)
    [reject] = prism.ledger.rejects(NAME)
    assert reject["request_id"] == poisoned
    assert "InvalidMessageContents" in reject["reason"] and "#x1B" in reject["reason"]
    assert run.metadata["rejects"] == 1 and run.metadata["records"] == 39


def test_sqs_record_over_the_queue_size_limit_is_rejected_and_its_neighbours_delivered(
    prism, gateway, sqs, make_queue, moto_server
):
    before, after = gateway_rows(H, 15), gateway_rows(H, 15, start=16)
    large = gateway_rows(H, 1, start=15, error_message="overloaded " * 300)
    gateway.insert_rows([before + large + after])
    queue = make_queue(MaximumMessageSize=2048)
    prism.configure(integration(moto_server, queue))

    run = prism.sync(NAME, KEY)

    assert request_ids(consume(sqs, queue)) == Counter(ids(before + after))
    [reject] = prism.ledger.rejects(NAME)
    assert reject["request_id"] == ids(large)[0]
    assert (
        "too large for SQS" in reject["reason"] and "MaximumMessageSize of 2048" in reject["reason"]
    )
    assert run.metadata["rejects"] == 1 and run.metadata["reject_reasons"] == {
        "too large for SQS": 1
    }


def test_sqs_validate_names_what_is_wrong(prism, make_queue, moto_server, monkeypatch):
    queue = make_queue(MaximumMessageSize=65536)
    missing = queue.rsplit("/", 1)[0] + "/no-such-queue"
    prism.configure(
        integration(moto_server, queue),
        {**integration(moto_server, missing), "name": "missing"},
        {
            **integration(moto_server, queue),
            "name": "down",
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
        },
        {
            **integration(moto_server, queue),
            "name": "nokeys",
            "access_key_id": {"env": "PRISM_TEST_UNSET"},
        },
    )
    monkeypatch.delenv("PRISM_TEST_UNSET", raising=False)

    ok, message = prism.validate(NAME)
    assert ok and "MaximumMessageSize 65536" in message and "standard" in message

    ok, message = prism.validate("missing")
    assert not ok and "no-such-queue does not exist" in message and "queue_url" in message

    ok, message = prism.validate("down")
    assert not ok and "cannot reach http://127.0.0.1:" in message and "endpoint_url" in message

    ok, message = prism.validate("nokeys")
    assert not ok and "PRISM_TEST_UNSET" in message and "testing" not in message
