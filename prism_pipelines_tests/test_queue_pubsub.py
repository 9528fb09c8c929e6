"""Export to Google Pub/Sub, through Dagster, against the Pub/Sub emulator (and the in-process
gRPC stand-in, for the main path); a subscriber reads every message back with the official
client.

Faults no server produces on demand (a crash mid-batch, a failed or unavailable Publish) are
injected around the client the sink builds, and only in the tests about them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1

from prism_pipelines.integrations import load_integrations
from prism_pipelines.records import EXPORTED_FIELDS
from prism_pipelines.sinks import pubsub as pubsub_sink
from prism_pipelines.sinks.pubsub import PubSubSink, _CountingPublisher
from prism_pipelines.source import INSERT_COLUMNS
from prism_pipelines.sync import SyncError, deliver_partition
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import free_port, pubsub_env

H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"
NAME = "events"


@pytest.fixture(params=["pubsub_emulator", "pubsub_standin"])
def any_pubsub(request):
    """The main path runs on the Java emulator and on the gRPC stand-in."""
    return request.getfixturevalue(request.param)


class Topic:
    """A fresh topic with one subscription, made and read with the official clients."""

    def __init__(self, server):
        self.server = server
        with pubsub_env(server):
            self.publisher = pubsub_v1.PublisherClient()
            self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:12]
        self.path = f"projects/{server.project}/topics/prism-{suffix}"
        self.subscription = f"projects/{server.project}/subscriptions/prism-{suffix}"
        self.publisher.create_topic(name=self.path)
        self.subscriber.create_subscription(name=self.subscription, topic=self.path)

    def consume(self, expected: int) -> list:
        """Every message published so far (acked as read); ``expected`` distinct request ids
        at least, then until the subscription answers empty."""
        messages = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = self.subscriber.pull(
                request={
                    "subscription": self.subscription,
                    "max_messages": 1000,
                    "return_immediately": True,
                },
                timeout=10,
            )
            received = response.received_messages
            if not received:
                if len(request_ids(messages)) >= expected:
                    break
                time.sleep(0.05)
                continue
            messages += [r.message for r in received]
            self.subscriber.acknowledge(
                request={"subscription": self.subscription, "ack_ids": [r.ack_id for r in received]}
            )
        return messages

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.delete_subscription(subscription=self.subscription)
            self.publisher.delete_topic(topic=self.path)
        self.subscriber.close()
        self.publisher.transport.close()


@pytest.fixture
def topic(pubsub_emulator):
    made = Topic(pubsub_emulator)
    yield made
    made.close()


def integration(topic: Topic, **settings) -> dict:
    return {
        "name": NAME,
        "type": "pubsub",
        "topic_path": topic.path,
        "endpoint_url": f"http://{topic.server.host}",
        "history": {"since": "2026-11-20T00:00:00Z"},
        **settings,
    }


def request_ids(messages) -> Counter:
    return Counter(orjson.loads(m.data)["request_id"] for m in messages)


def ids(rows: list[tuple]) -> list[str]:
    return [row[INSERT_COLUMNS.index("request_id")] for row in rows]


def exported(row: tuple) -> dict:
    """The exported-record contract for a factory row, written out independently of the code."""
    values = dict(zip(INSERT_COLUMNS, row, strict=True))
    record = {field: values[field] for field in EXPORTED_FIELDS}
    stamp = values["timestamp"]
    record["timestamp"] = f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}Z"
    return record


class SimulatedCrash(Exception):
    pass


def test_pubsub_topic_receives_every_record_as_json_with_attributes(prism, gateway, any_pubsub):
    topic = Topic(any_pubsub)
    try:
        rows = gateway_rows(H, 150)
        gateway.insert_rows([gateway_rows(H - timedelta(hours=1), 20), rows])
        prism.configure(
            integration(
                topic, batch_rows=50, ordering_key_field="session_id", message_event_type="llm"
            )
        )

        run = prism.sync(NAME, KEY)

        messages = topic.consume(len(rows))
        assert request_ids(messages) == Counter(ids(rows))
        expected = {r["request_id"]: r for r in map(exported, rows)}
        for message in messages:
            body = orjson.loads(message.data)
            assert list(body) == list(EXPORTED_FIELDS)
            assert body == expected[body["request_id"]]
            assert dict(message.attributes) == {
                "source": "prism-gateway",
                "event_type": "llm",
                "request_id": body["request_id"],
            }
            assert message.ordering_key == body["session_id"]
        assert run.metadata["records"] == 150 and run.metadata["messages"] == 150
        assert run.metadata["requests"] >= 15  # one request per ordering key and batch
        assert run.metadata["rejects"] == 0 and run.metadata["retries"] == 0
        assert run.metadata["bytes"] > sum(len(m.data) for m in messages)  # attributes count
        assert prism.sync(NAME, KEY).metadata["records"] == 0
        assert topic.consume(0) == []
    finally:
        topic.close()


def test_pubsub_honours_the_emulator_variable(prism, gateway, topic):
    rows = gateway_rows(H, 30)
    gateway.insert_rows([rows])
    prism.configure({k: v for k, v in integration(topic).items() if k != "endpoint_url"})

    with pubsub_env(topic.server):
        ok, message = prism.validate(NAME)
        run = prism.sync(NAME, KEY)

    assert ok and "exists" in message and "not checked" in message
    assert request_ids(topic.consume(30)) == Counter(ids(rows))
    assert run.metadata["records"] == 30


def test_pubsub_duplicates_after_crash_are_bounded_by_one_batch(prism, gateway, topic, monkeypatch):
    rows = gateway_rows(H, 150)
    gateway.insert_rows([rows])
    prism.configure(integration(topic, batch_rows=50))
    publish = _CountingPublisher.publish
    calls = Counter()

    def crash_at_75th(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 75:  # the middle of the second batch
            raise SimulatedCrash("the worker died while publishing")
        return publish(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(_CountingPublisher, "publish", crash_at_75th)
        crashed = prism.sync(NAME, KEY, raise_on_error=False)
    assert not crashed.success and "the worker died" in crashed.error

    run = prism.sync(NAME, KEY)

    received = request_ids(topic.consume(len(rows)))
    assert set(received) == set(ids(rows))  # at least once
    assert sum(received.values()) - len(rows) <= 50  # duplicates: at most the batch in flight
    assert run.metadata["records"] == 100


def test_pubsub_failed_publish_fails_the_batch_and_the_ordering_key_resumes(
    prism, gateway, topic, monkeypatch
):
    """A Publish refused for good fails its batch (the cursor stays); the same sink then
    publishes the next hour, whose messages share the failed ordering keys."""
    earlier, later = H - timedelta(hours=1), H
    gateway.insert_rows([gateway_rows(earlier, 40), gateway_rows(later, 40)])
    prism.configure(integration(topic, ordering_key_field="session_id"))
    config = load_integrations(prism.path).get(NAME)
    gapic_publish = _CountingPublisher._gapic_publish
    refused = Counter()

    def refuse_first(self, *args, **kwargs):
        if not refused["n"]:
            refused["n"] += 1
            raise google_exceptions.InvalidArgument("injected: request refused")
        return gapic_publish(self, *args, **kwargs)

    monkeypatch.setattr(_CountingPublisher, "_gapic_publish", refuse_first)
    sink = PubSubSink(config)
    try:
        with pytest.raises(SyncError, match="injected: request refused") as failure:
            deliver_partition(config, sink, gateway, prism.ledger, earlier, settle_seconds=0)
        assert "the batch will be redone by the next run" in str(failure.value)
        assert prism.ledger.cursor(NAME, earlier) == 0

        assert deliver_partition(config, sink, gateway, prism.ledger, later).records == 40
        assert deliver_partition(config, sink, gateway, prism.ledger, earlier).records == 40
    finally:
        sink.close()

    received = request_ids(topic.consume(80))
    assert set(received) == set(ids(gateway_rows(earlier, 40) + gateway_rows(later, 40)))


class _Unavailable(grpc.RpcError, grpc.Call, grpc.Future):
    """A finished call that the service answered UNAVAILABLE (as a stub's interceptor sees it)."""

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return None

    def done(self):
        return True

    def running(self):
        return False

    def cancelled(self):
        return False

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "injected: the service is unavailable"

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class _FailPublishes(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, times: int):
        self.left = times
        self.lock = threading.Lock()

    def intercept_unary_unary(self, continuation, details, request):
        with self.lock:
            fail = details.method.endswith("/Publish") and self.left > 0
            self.left -= fail
        if fail:
            return _Unavailable()
        return continuation(details, request)


def test_pubsub_unavailable_is_retried_by_the_client_and_loses_nothing(
    prism, gateway, topic, monkeypatch
):
    rows = gateway_rows(H, 60)
    gateway.insert_rows([rows])
    prism.configure(integration(topic))
    insecure_channel = grpc.insecure_channel
    monkeypatch.setattr(
        pubsub_sink.grpc,
        "insecure_channel",
        lambda target: grpc.intercept_channel(insecure_channel(target), _FailPublishes(2)),
    )

    run = prism.sync(NAME, KEY)

    assert request_ids(topic.consume(60)) == Counter(ids(rows))  # each exactly once
    assert run.metadata["publish_retries"] == 2 and run.metadata["retries"] == 2


def test_pubsub_record_over_the_size_limit_is_rejected_and_its_neighbours_delivered(
    prism, gateway, topic
):
    before, after = gateway_rows(H, 10), gateway_rows(H, 10, start=11)
    large = gateway_rows(H, 1, start=10, error_message="x" * 10_000_000)
    gateway.insert_rows([before + large + after])
    prism.configure(integration(topic))

    run = prism.sync(NAME, KEY)

    assert request_ids(topic.consume(20)) == Counter(ids(before + after))
    [reject] = prism.ledger.rejects(NAME)
    assert reject["request_id"] == ids(large)[0]
    assert "too large for Pub/Sub" in reject["reason"] and "10000000 bytes" in reject["reason"]
    assert run.metadata["rejects"] == 1 and run.metadata["records"] == 20


def test_pubsub_validate_names_what_is_wrong(prism, topic, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_BAD_KEY", '{"type": "service_account"}')
    prism.configure(
        integration(topic),
        {**integration(topic), "name": "missing", "topic_path": topic.path + "-gone"},
        {**integration(topic), "name": "down", "endpoint_url": f"http://127.0.0.1:{free_port()}"},
        {
            **integration(topic),
            "name": "badkey",
            "endpoint_url": None,
            "service_account_json": {"env": "PRISM_TEST_BAD_KEY"},
        },
    )

    ok, message = prism.validate(NAME)
    assert ok and f"topic {topic.path} exists" in message

    ok, message = prism.validate("missing")
    assert not ok and "-gone does not exist" in message and "topic_path" in message

    ok, message = prism.validate("down")
    assert not ok and "cannot reach http://127.0.0.1:" in message and "endpoint_url" in message

    ok, message = prism.validate("badkey")
    assert not ok and "service_account_json is not a service account key" in message
    assert 'service_account"' not in message  # the secret's value is never shown
