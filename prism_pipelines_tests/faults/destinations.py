"""The eight destination types as the fault suite sees them: the integration entry that points at
a fresh bucket / queue / topic on the session's stand-in, and the destination read back with its
official client (OTLP: the spans Datadog's APM test agent decoded). Nothing here imports the
product: the suite drives it from outside.

``received()`` is what a consumer sees: storage, request id → the files holding it; queues,
Datadog and OTLP, request id → how many times it arrived.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from azure.storage.blob import BlobServiceClient
from google.cloud import pubsub_v1

from prism_pipelines_tests.services import AWS_REGION, AZURITE_KEY, gcs_client, pubsub_env

NAME = "faulty"
STORAGE = ("local", "s3", "azure_blob", "gcs")
QUEUES = ("sqs", "pubsub", "datadog", "otlp")
TYPES = STORAGE + QUEUES
#: the hour's manifest (``manifest: true``)
MANIFEST = "_manifest.json"


def _unique(kind: str = "prism") -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def _secret() -> str:
    """A secret value no log line could hold by chance."""
    return f"prism-secret-{uuid.uuid4().hex}"


class Destination:
    """One destination for one test. ``secrets`` maps the env vars the entry names to values."""

    type: str
    #: what the stand-in cannot do for the credential test, or None if it refuses keys
    cannot_refuse: str | None = None

    def __init__(self):
        self.secrets: dict[str, str] = {}

    @property
    def storage(self) -> bool:
        return self.type in STORAGE

    def integration(self, endpoint_url: str | None = None, **settings) -> dict:
        """The entry; ``endpoint_url`` puts a proxy between the sink and the stand-in."""
        raise NotImplementedError

    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) of the stand-in the sink talks to, for the fault proxy."""
        raise NotImplementedError

    def received(self) -> dict[str, list[str]] | Counter:
        """Storage: request id → the data files holding it."""
        return _by_file({k: v for k, v in self.objects().items() if _data_file(k)})

    def objects(self) -> dict[str, bytes]:
        """Storage: every object, by key (read with the provider's client)."""
        raise NotImplementedError

    def manifest(self, folder: str) -> dict | None:
        """Storage: the ``_manifest.json`` in ``folder`` (an hour's), or None."""
        data = self.objects().get(f"{folder}/{MANIFEST}")
        return None if data is None else json.loads(data)

    def leftovers(self) -> list[str]:
        """Storage: temporary files, uncommitted blocks, unfinished multipart uploads."""
        return []

    @contextlib.contextmanager
    def refused_credentials(self):
        """The destination refuses the entry's credentials for the block."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _records(data: bytes) -> list[str]:
    """Request ids of a Parquet file or a gzip JSONL file (the Azure client hands the latter
    over already decoded, as the blob's Content-Encoding says)."""
    if data[:4] == b"PAR1":
        return pq.read_table(io.BytesIO(data), columns=["request_id"])["request_id"].to_pylist()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [json.loads(line)["request_id"] for line in data.splitlines()]


def _by_file(files: dict[str, bytes]) -> dict[str, list[str]]:
    """request id → the data files holding it."""
    found: dict[str, list[str]] = defaultdict(list)
    for key, data in files.items():
        for request_id in _records(data):
            found[request_id].append(key)
    return found


def _data_file(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("batch_")


def _published(key: str) -> bool:
    """A data file or an hour's manifest: what the export leaves on purpose."""
    return _data_file(key) or key.rsplit("/", 1)[-1] == MANIFEST


class Local(Destination):
    type = "local"
    cannot_refuse = "a local folder has no credentials (an unwritable folder is the full-disk case)"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {"name": NAME, "type": "local", "path": str(self.folder), **settings}

    def objects(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.folder)): p.read_bytes()
            for p in self.folder.rglob("*")
            if p.is_file()
        }

    def leftovers(self) -> list[str]:
        return [
            str(p.relative_to(self.folder))
            for p in self.folder.rglob("*")
            if p.is_file() and not _published(p.name)
        ]


class S3(Destination):
    type = "s3"

    def __init__(self, moto_server):
        super().__init__()
        self.moto = moto_server
        self.client = moto_server.client("s3")
        self.bucket = _unique()
        self.client.create_bucket(Bucket=self.bucket)
        self.secrets = {"PRISM_FAULT_AWS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper()}
        self.secrets["PRISM_FAULT_AWS_SECRET"] = _secret()

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "s3",
            "bucket": self.bucket,
            "region": AWS_REGION,
            "access_key_id": {"env": "PRISM_FAULT_AWS_KEY_ID"},
            "secret_access_key": {"env": "PRISM_FAULT_AWS_SECRET"},
            "endpoint_url": endpoint_url or self.moto.endpoint_url,
            **settings,
        }

    def endpoint(self):
        host, port = self.moto.endpoint_url.rsplit("/", 1)[-1].split(":")
        return host, int(port)

    def objects(self) -> dict[str, bytes]:
        keys = [
            o["Key"]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for o in page.get("Contents", [])
        ]
        return {k: self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}

    def leftovers(self) -> list[str]:
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        keys = [
            o["Key"]
            for o in self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
            if not _published(o["Key"])
        ]
        return keys + [f"multipart upload of {u['Key']}" for u in uploads]

    @contextlib.contextmanager
    def refused_credentials(self):
        with moto_auth(self.moto):
            yield


@contextlib.contextmanager
def moto_auth(moto_server):
    """moto checks every request's key against its IAM users for the block; the entry's key is
    none of them."""

    def reset(count: str) -> None:
        request = urllib.request.Request(
            f"{moto_server.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(request, timeout=10).close()

    reset("0")
    try:
        yield
    finally:
        reset("inf")


class AzureBlob(Destination):
    type = "azure_blob"

    def __init__(self, azurite):
        super().__init__()
        self.azurite = azurite
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.container = _unique()
        self.service.create_container(self.container)
        self.secrets = {"PRISM_FAULT_AZURE": azurite.connection_string}

    def _connection_string(self, endpoint_url: str | None) -> str:
        parts = dict(p.split("=", 1) for p in self.azurite.connection_string.split(";") if p)
        if endpoint_url:
            parts["BlobEndpoint"] = f"{endpoint_url}/{parts['AccountName']}"
        return ";".join(f"{k}={v}" for k, v in parts.items())

    def integration(self, endpoint_url=None, **settings) -> dict:
        self.secrets["PRISM_FAULT_AZURE"] = self._connection_string(endpoint_url)
        return {
            "name": NAME,
            "type": "azure_blob",
            "container": self.container,
            "connection_string": {"env": "PRISM_FAULT_AZURE"},
            **settings,
        }

    def endpoint(self):
        parts = dict(p.split("=", 1) for p in self.azurite.connection_string.split(";") if p)
        host, port = parts["BlobEndpoint"].split("//", 1)[1].split("/", 1)[0].split(":")
        return host, int(port)

    def objects(self) -> dict[str, bytes]:
        container = self.service.get_container_client(self.container)
        return {
            name: container.download_blob(name).readall() for name in container.list_blob_names()
        }

    def leftovers(self) -> list[str]:
        container = self.service.get_container_client(self.container)
        names = {b.name for b in container.list_blobs()}
        uncommitted = {b.name for b in container.list_blobs(include=["uncommittedblobs"])} - names
        return sorted(n for n in names if not _published(n)) + [
            f"uncommitted blocks of {n}" for n in sorted(uncommitted)
        ]

    @contextlib.contextmanager
    def refused_credentials(self):
        wrong = AZURITE_KEY[:-8] + "AAAAAAA="
        saved = self.secrets["PRISM_FAULT_AZURE"]
        self.secrets["PRISM_FAULT_AZURE"] = saved.replace(AZURITE_KEY, wrong)
        self.secrets["PRISM_FAULT_AZURE_REFUSED"] = self.secrets["PRISM_FAULT_AZURE"]
        try:
            yield
        finally:
            self.secrets["PRISM_FAULT_AZURE"] = saved


class Gcs(Destination):
    type = "gcs"
    cannot_refuse = "fake-gcs-server accepts any credentials (it has no authentication)"

    def __init__(self, fake_gcs):
        super().__init__()
        self.server = fake_gcs
        self.client = gcs_client(fake_gcs.endpoint)
        self.bucket = _unique()
        self.client.create_bucket(self.bucket)

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "gcs",
            "bucket": self.bucket,
            "project_id": "prism-test",
            "endpoint_url": endpoint_url or self.server.endpoint,
            **settings,
        }

    def endpoint(self):
        host, port = self.server.endpoint.split("//", 1)[1].split("/", 1)[0].split(":")
        return host, int(port)

    def objects(self) -> dict[str, bytes]:
        return {
            b.name: b.download_as_bytes(raw_download=True)
            for b in self.client.list_blobs(self.bucket)
        }

    def leftovers(self) -> list[str]:
        return [b.name for b in self.client.list_blobs(self.bucket) if not _published(b.name)]


class Sqs(Destination):
    type = "sqs"

    def __init__(self, moto_server):
        super().__init__()
        self.moto = moto_server
        self.client = moto_server.client("sqs")
        self.queue_url = self.client.create_queue(QueueName=_unique())["QueueUrl"]
        self.secrets = {
            "PRISM_FAULT_AWS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
            "PRISM_FAULT_AWS_SECRET": _secret(),
        }
        self._seen: Counter = Counter()

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "sqs",
            "queue_url": self.queue_url,
            "region": AWS_REGION,
            "access_key_id": {"env": "PRISM_FAULT_AWS_KEY_ID"},
            "secret_access_key": {"env": "PRISM_FAULT_AWS_SECRET"},
            "endpoint_url": endpoint_url or self.moto.endpoint_url,
            **settings,
        }

    endpoint = S3.endpoint

    def received(self) -> Counter:
        """Every message so far, deleted as read (so later calls add only what is new)."""
        while True:
            messages = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return Counter(self._seen)
            self._seen.update(json.loads(m["Body"])["request_id"] for m in messages)
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )

    @contextlib.contextmanager
    def refused_credentials(self):
        with moto_auth(self.moto):
            yield


class PubSub(Destination):
    type = "pubsub"
    cannot_refuse = (
        "the Pub/Sub emulator accepts any credentials (it does not authenticate); refused "
        "credentials are covered by the Pub/Sub sink's own tests with an injected error"
    )

    def __init__(self, server):
        super().__init__()
        self.server = server
        with pubsub_env(server):
            self.publisher = pubsub_v1.PublisherClient()
            self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:12]
        self.topic = f"projects/{server.project}/topics/prism-{suffix}"
        self.subscription = f"projects/{server.project}/subscriptions/prism-{suffix}"
        self.publisher.create_topic(name=self.topic)
        self.subscriber.create_subscription(name=self.subscription, topic=self.topic)
        self._seen: Counter = Counter()

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "pubsub",
            "topic_path": self.topic,
            "endpoint_url": endpoint_url or f"http://{self.server.host}",
            **settings,
        }

    def endpoint(self):
        host, port = self.server.host.split(":")
        return host, int(port)

    def received(self) -> Counter:
        while True:
            received = self.subscriber.pull(
                request={
                    "subscription": self.subscription,
                    "max_messages": 1000,
                    "return_immediately": True,
                },
                timeout=10,
            ).received_messages
            if not received:
                time.sleep(0.2)  # the emulator may answer empty once before the rest
                received = self.subscriber.pull(
                    request={
                        "subscription": self.subscription,
                        "max_messages": 1000,
                        "return_immediately": True,
                    },
                    timeout=10,
                ).received_messages
                if not received:
                    return Counter(self._seen)
            self._seen.update(json.loads(r.message.data)["request_id"] for r in received)
            self.subscriber.acknowledge(
                request={"subscription": self.subscription, "ack_ids": [r.ack_id for r in received]}
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.delete_subscription(subscription=self.subscription)
            self.publisher.delete_topic(topic=self.topic)
        self.subscriber.close()
        self.publisher.transport.close()


class Datadog(Destination):
    type = "datadog"

    def __init__(self, intake):
        super().__init__()
        intake.reset()
        self.intake = intake
        key = f"dd-{uuid.uuid4().hex}"
        intake.api_keys.add(key)
        self.secrets = {"PRISM_FAULT_DD_API_KEY": key}

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "datadog",
            "api_key": {"env": "PRISM_FAULT_DD_API_KEY"},
            "endpoint_url": endpoint_url or self.intake.url,
            **settings,
        }

    def endpoint(self):
        host, port = self.intake.url.split("//", 1)[1].split(":")
        return host, int(port)

    def received(self) -> Counter:
        return Counter(e["request_id"] for e in self.intake.logs)

    @contextlib.contextmanager
    def refused_credentials(self):
        saved = self.secrets["PRISM_FAULT_DD_API_KEY"]
        self.secrets["PRISM_FAULT_DD_API_KEY"] = f"dd-revoked-{uuid.uuid4().hex}"
        self.secrets["PRISM_FAULT_DD_REFUSED"] = self.secrets["PRISM_FAULT_DD_API_KEY"]
        try:
            yield
        finally:
            self.secrets["PRISM_FAULT_DD_API_KEY"] = saved


class Otlp(Destination):
    type = "otlp"
    cannot_refuse = (
        "the APM test agent takes any header; a refused header is covered by test_otlp.py with "
        "a strict receiver"
    )

    def __init__(self, agent):
        super().__init__()
        agent.clear()
        self.agent = agent

    def integration(self, endpoint_url=None, **settings) -> dict:
        return {
            "name": NAME,
            "type": "otlp",
            "endpoint": endpoint_url or self.agent.url,
            "headers": {"x-prism-fault-suite": "1"},
            **settings,
        }

    def endpoint(self):
        host, port = self.agent.url.split("//", 1)[1].split(":")
        return host, int(port)

    def received(self) -> Counter:
        """Spans per request id, from the agent's decoded requests (protobuf, read through
        protobuf's JSON mapping with the proto's field names)."""
        found: Counter = Counter()
        for request in self.agent.traces():
            for resource_spans in request.get("resource_spans", ()):
                for scope_spans in resource_spans.get("scope_spans", ()):
                    for span in scope_spans.get("spans", ()):
                        found.update(
                            a["value"]["string_value"]
                            for a in span.get("attributes", ())
                            if a["key"] == "prism.request_id"
                        )
        return found
