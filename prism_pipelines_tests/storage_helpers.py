"""What the cloud archives' tests share (S3, Azure Blob, GCS), so each behaviour is written once.

A ``Store`` is one provider's fresh bucket (container) on the session's stand-in server: the
integration entry that points at it, and the provider's official client to read it back.
``S3Store`` (moto), ``AzureStore`` (Azurite) and ``GcsStore`` (fake-gcs-server) are the three
adapters: test_storage.py's ``store`` fixture gives each in turn, for the behaviours every
archive must show; each provider's own test file builds its adapter with a fixture of its own.

None of the stand-ins answers a throttling / busy 5xx on demand, so each adapter puts one such
answer in front of its SDK (botocore's ``before-send`` event, azure-core's HTTP transport,
google-cloud-storage's HTTP session): the SDK's own retry logic still makes and counts the retry.
"""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime

import orjson
import requests
from azure.core.pipeline.transport import RequestsTransportResponse
from azure.storage.blob import BlobServiceClient
from botocore.awsrequest import AWSResponse
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from google.cloud.storage._media.requests.upload import ResumableUpload

from prism_pipelines.sinks.storage.azure_blob import AzureBlobSink
from prism_pipelines.sinks.storage.gcs import GcsSink
from prism_pipelines.sinks.storage.s3 import S3Sink
from prism_pipelines_tests.services import AWS_REGION, AZURITE_ACCOUNT, gcs_client

NAME = "archive"
H = datetime(2026, 11, 22, 14, tzinfo=UTC)
KEY = "2026-11-22-14:00"
HISTORY = {"since": "2026-11-01T00:00:00Z"}
#: the environment variables the adapters' integrations read their credentials from
S3_KEY_ENV, S3_SECRET_ENV = "PRISM_TEST_S3_KEY_ID", "PRISM_TEST_S3_SECRET"
AZURE_CONNECTION_ENV = "PRISM_TEST_AZURE_CONNECTION_STRING"


def partition_key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def unique_name(kind: str = "prism") -> str:
    """A bucket / container name valid on all three providers (the servers are shared)."""
    return f"{kind}-{uuid.uuid4().hex[:16]}"


class Store:
    """One provider's bucket for one test; subclasses say how to reach and read it."""

    #: the sink class under test (its ``put`` is wrapped to simulate crashes)
    sink_class: type
    #: the integration field naming the bucket (``bucket`` or ``container``)
    bucket_field = "bucket"

    def __init__(self, bucket: str):
        self.bucket = bucket

    def integration(self, **settings) -> dict:
        raise NotImplementedError

    def create(self, bucket: str) -> None:
        raise NotImplementedError

    def location(self, path: str) -> str:
        """How the sink's messages name ``path`` in the bucket (a URL, or the tail of one)."""
        raise NotImplementedError

    def object_keys(self) -> list[str]:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        """The object's stored bytes (gzip), through the official client."""
        raise NotImplementedError

    def content_headers(self, key: str) -> tuple[str, str]:
        """(Content-Type, Content-Encoding) the object was stored with."""
        raise NotImplementedError

    def watch_uploads(self, monkeypatch) -> None:
        """Get ready to tell how objects went up (see ``upload_pieces``)."""

    def upload_pieces(self, key: str) -> int:
        """How many parts / blocks / chunks the object was uploaded in."""
        raise NotImplementedError

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        """Make the service answer the next upload request once with a throttling / busy 5xx,
        as no stand-in can on demand; returns the list the injected failure is noted in."""
        raise NotImplementedError


# -- the adapters ---------------------------------------------------------------------------


class S3Store(Store):
    """A bucket on moto's S3 server, read back with boto3."""

    sink_class = S3Sink

    def __init__(self, moto_server, monkeypatch, region: str = AWS_REGION):
        super().__init__(unique_name())
        self.moto, self.region = moto_server, region
        self.client = moto_server.client("s3")
        monkeypatch.setenv(S3_KEY_ENV, "testing")
        monkeypatch.setenv(S3_SECRET_ENV, "testing")
        self.create(self.bucket)

    def integration(self, **settings) -> dict:
        return {
            "name": NAME,
            "type": "s3",
            "bucket": self.bucket,
            "region": self.region,
            "access_key_id": {"env": S3_KEY_ENV},
            "secret_access_key": {"env": S3_SECRET_ENV},
            "endpoint_url": self.moto.endpoint_url,
            "history": HISTORY,
            **settings,
        }

    def create(self, bucket: str, region: str = AWS_REGION) -> None:
        location = {} if region == "us-east-1" else {"LocationConstraint": region}
        self.client.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)

    def location(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    def object_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def content_headers(self, key: str) -> tuple[str, str | None]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return head["ContentType"], head.get("ContentEncoding")

    def upload_pieces(self, key: str) -> int:
        """A multipart object's ETag ends with ``-<number of parts>``."""
        etag = self.client.head_object(Bucket=self.bucket, Key=key)["ETag"].strip('"')
        return int(etag.partition("-")[2] or 1)

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        """One 503 SlowDown, through botocore's ``before-send`` event."""
        injected: list[str] = []
        connect = S3Sink._connect

        def slow_down(request, **_):
            if not injected:
                injected.append(request.url)
                body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate.</Message></Error>"
                return AWSResponse(
                    request.url, 503, {"Content-Type": "application/xml"}, _Raw(body)
                )
            return None

        def connect_with_fault(sink, max_attempts):
            client = connect(sink, max_attempts)
            client.meta.events.register("before-send.s3.PutObject", slow_down)
            return client

        monkeypatch.setattr(S3Sink, "_connect", connect_with_fault)
        return injected


class _Raw:
    """The raw body botocore reads from a response."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


class AzureStore(Store):
    """A container on Azurite, read back with azure-storage-blob."""

    sink_class = AzureBlobSink
    bucket_field = "container"

    def __init__(self, azurite, monkeypatch):
        super().__init__(unique_name())
        self.azurite, self.monkeypatch = azurite, monkeypatch
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.use_connection_string(azurite.connection_string)
        self.create(self.bucket)

    def use_connection_string(self, connection_string: str) -> None:
        self.monkeypatch.setenv(AZURE_CONNECTION_ENV, connection_string)

    def integration(self, **settings) -> dict:
        return {
            "name": NAME,
            "type": "azure_blob",
            "container": self.bucket,
            "connection_string": {"env": AZURE_CONNECTION_ENV},
            "history": HISTORY,
            **settings,
        }

    def create(self, bucket: str) -> None:
        self.service.create_container(bucket)

    def location(self, path: str) -> str:
        """The blob URL's path (Azurite's URLs put the account first)."""
        return f"/{AZURITE_ACCOUNT}/{self.bucket}/{path}"

    @property
    def container(self):
        return self.service.get_container_client(self.bucket)

    def object_keys(self) -> list[str]:
        return sorted(self.container.list_blob_names())

    def read(self, key: str) -> bytes:
        return self.container.download_blob(key, decompress=False).readall()  # the stored gzip

    def content_headers(self, key: str) -> tuple[str, str]:
        settings = self.container.get_blob_client(key).get_blob_properties().content_settings
        return settings.content_type, settings.content_encoding

    def upload_pieces(self, key: str) -> int:
        committed, _ = self.container.get_blob_client(key).get_block_list("committed")
        return len(committed)

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        """One 503 ServerBusy, in front of the client's HTTP transport."""
        injected: list[str] = []
        connect = AzureBlobSink._connect

        def connect_with_fault(sink, retries):
            container = connect(sink, retries)
            transport = container._pipeline._transport  # the HTTP transport every call goes through
            send = transport.send

            def server_busy(request, **kwargs):
                if not injected and request.method == "PUT":
                    injected.append(request.url)
                    response = requests.Response()
                    response.status_code, response.reason = 503, "Server Busy"
                    response.headers["x-ms-error-code"] = "ServerBusy"
                    response._content = b""
                    return RequestsTransportResponse(request, response)
                return send(request, **kwargs)

            transport.send = server_busy
            return container

        monkeypatch.setattr(AzureBlobSink, "_connect", connect_with_fault)
        return injected


class GcsStore(Store):
    """A bucket on fake-gcs-server, read back with google-cloud-storage."""

    sink_class = GcsSink

    def __init__(self, fake_gcs):
        super().__init__(unique_name())
        self.endpoint = fake_gcs.endpoint
        self.client = gcs_client(fake_gcs.endpoint)
        self.create(self.bucket)
        self.resumable_chunks = 0

    def integration(self, **settings) -> dict:
        return {
            "name": NAME,
            "type": "gcs",
            "bucket": self.bucket,
            "project_id": "prism-test",
            "endpoint_url": self.endpoint,
            "history": HISTORY,
            **settings,
        }

    def create(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def location(self, path: str) -> str:
        return f"gs://{self.bucket}/{path}"

    def object_keys(self) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(self.bucket))

    def read(self, key: str) -> bytes:
        # raw: the stored gzip bytes, not GCS's decompressive transcoding of them
        return self.client.bucket(self.bucket).blob(key).download_as_bytes(raw_download=True)

    def content_headers(self, key: str) -> tuple[str, str]:
        blob = self.client.bucket(self.bucket).get_blob(key)
        return blob.content_type, blob.content_encoding

    def watch_uploads(self, monkeypatch) -> None:
        """Count the resumable upload's chunk requests (observed only; each one still goes to
        the server), since the stored object does not tell how it was uploaded."""
        transmit = ResumableUpload.transmit_next_chunk

        def counted(upload, *args, **kwargs):
            self.resumable_chunks += 1
            return transmit(upload, *args, **kwargs)

        monkeypatch.setattr(ResumableUpload, "transmit_next_chunk", counted)

    def upload_pieces(self, key: str) -> int:
        return self.resumable_chunks

    def answer_next_upload_once(self, monkeypatch, status: int, error: dict) -> list[str]:
        """Answer the next upload request once with ``status`` and ``error``, in front of the
        client's HTTP session (fake-gcs-server neither checks permissions nor answers 5xx)."""
        injected: list[str] = []
        connect = GcsSink._connect

        def connect_with_fault(sink):
            client = connect(sink)
            session = client._http  # the HTTP session every request goes through
            request = session.request

            def answer(method, url, *args, **kwargs):
                if not injected and method == "POST" and "/upload/" in url:
                    injected.append(url)
                    response = requests.Response()
                    response.status_code, response.url = status, url
                    response.request = requests.Request(method, url).prepare()
                    response.headers["Content-Type"] = "application/json"
                    response._content = json.dumps({"error": error}).encode()
                    return response
                return request(method, url, *args, **kwargs)

            session.request = answer
            return client

        monkeypatch.setattr(GcsSink, "_connect", connect_with_fault)
        return injected

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        return self.answer_next_upload_once(
            monkeypatch, 503, {"code": 503, "message": "We encountered an internal error."}
        )


# -- reading an archive back, and what every provider's validation failures have in common --


def read_archive(store: Store) -> dict[str, list[dict]]:
    """Every file of the archive, gunzipped: key → records. Fails on a file that is not a
    complete gzip stream (a half-written object would be)."""
    files = {}
    for key in store.object_keys():
        raw = store.read(key)
        assert raw[:2] == b"\x1f\x8b", f"{key} is not stored gzip-compressed"
        files[key] = [orjson.loads(line) for line in gzip.decompress(raw).splitlines()]
    return files


# -- DuckDB over an S3 bucket ---------------------------------------------------------------


class BotoFileSystem(AbstractFileSystem):
    """A read-only fsspec filesystem over a boto3 client, for DuckDB without its httpfs
    extension (which needs a download this machine cannot make; s3fs pins an older botocore
    than boto3 1.44 needs)."""

    protocol = ("s3",)
    root_marker = ""

    def __init__(self, client, **kwargs):
        super().__init__(**kwargs)
        self.client = client

    def ls(self, path, detail=True, **kwargs):
        bucket, _, prefix = self._strip_protocol(path).rstrip("/").partition("/")
        listing = self.client.list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", Delimiter="/"
        )
        entries = [
            {"name": f"{bucket}/{p['Prefix'].rstrip('/')}", "type": "directory", "size": 0}
            for p in listing.get("CommonPrefixes", [])
        ] + [
            {"name": f"{bucket}/{o['Key']}", "type": "file", "size": o["Size"]}
            for o in listing.get("Contents", [])
        ]
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path):
        bucket, _, key = self._strip_protocol(path).partition("/")
        return self.client.head_object(Bucket=bucket, Key=key)["LastModified"]

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return _BotoFile(self, path, mode, block_size=block_size or 4 * 1024 * 1024, **kwargs)


class _BotoFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        bucket, _, key = self.path.partition("/")
        response = self.fs.client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}"
        )
        return response["Body"].read()


def check_validation_fails(prism, store: Store, expected: str, **settings) -> str:
    """Validation of ``store``'s integration (with ``settings``) fails, naming the integration
    and saying ``expected``; returns the message."""
    prism.configure(store.integration(**settings))
    ok, message = prism.validate(NAME)
    assert not ok, message
    assert f"integration '{NAME}'" in message and expected in message, message
    return message
