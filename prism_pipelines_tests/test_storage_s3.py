"""Export to Amazon S3, end to end through Dagster against moto's S3 server, read back with boto3.

moto cannot answer 503 SlowDown on demand, so that one test injects it through botocore's own
``before-send`` event: the SDK's retry logic still makes (and counts) the retry. Refused keys
and missing permissions use moto's IAM access control, switched on for that test only.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from botocore.awsrequest import AWSResponse
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from prism_pipelines.sinks.s3 import S3Archive
from prism_pipelines_tests import storage_helpers as checks
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import AWS_REGION, free_port
from prism_pipelines_tests.storage_helpers import NAME, Store, partition_key, unique_name

pytest_plugins = ["prism_pipelines_tests.services"]

KEY_ENV, SECRET_ENV = "PRISM_TEST_S3_KEY_ID", "PRISM_TEST_S3_SECRET"


class S3Store(Store):
    sink_class = S3Archive

    def __init__(self, moto_server, monkeypatch, region: str = AWS_REGION):
        super().__init__(unique_name())
        self.moto, self.region = moto_server, region
        self.client = moto_server.client("s3")
        monkeypatch.setenv(KEY_ENV, "testing")
        monkeypatch.setenv(SECRET_ENV, "testing")
        self.create(self.bucket)

    def integration(self, **settings) -> dict:
        return {
            "name": NAME,
            "type": "s3",
            "bucket": self.bucket,
            "region": self.region,
            "access_key_id": {"env": KEY_ENV},
            "secret_access_key": {"env": SECRET_ENV},
            "endpoint_url": self.moto.endpoint_url,
            "history": checks.HISTORY,
            **settings,
        }

    def create(self, bucket: str, region: str = AWS_REGION) -> None:
        location = {} if region == "us-east-1" else {"LocationConstraint": region}
        self.client.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)

    def object_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def content_headers(self, key: str) -> tuple[str, str]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return head["ContentType"], head["ContentEncoding"]

    def upload_pieces(self, key: str) -> int:
        """A multipart object's ETag ends with ``-<number of parts>``."""
        etag = self.client.head_object(Bucket=self.bucket, Key=key)["ETag"].strip('"')
        return int(etag.partition("-")[2] or 1)

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        injected: list[str] = []
        connect = S3Archive._connect

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

        monkeypatch.setattr(S3Archive, "_connect", connect_with_fault)
        return injected


class _Raw:
    """The raw body botocore reads from a response."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


@pytest.fixture
def store(moto_server, monkeypatch) -> S3Store:
    return S3Store(moto_server, monkeypatch)


def test_second_sync_adds_only_new_rows_in_a_new_file(prism, gateway, store):
    checks.check_second_sync_adds_only_new_rows_in_a_new_file(prism, gateway, store)


def test_backfill_of_24_hours_puts_each_hours_rows_in_that_hours_files(prism, gateway, store):
    checks.check_backfill_of_24_hours(prism, gateway, store)


@pytest.mark.parametrize("crash", ["before_upload", "after_upload"])
def test_crash_after_some_batches_then_rerun_leaves_each_record_in_one_file(
    prism, gateway, store, monkeypatch, crash
):
    checks.check_crash_then_rerun_delivers_each_record_once(
        prism, gateway, store, monkeypatch, crash
    )


def test_slow_down_503_is_retried_by_botocore_and_counted_in_the_run(
    prism, gateway, store, monkeypatch
):
    checks.check_transient_failure_is_retried_and_counted(prism, gateway, store, monkeypatch)


def test_changing_the_prefix_applies_to_new_files_only(prism, gateway, store):
    checks.check_prefix_change_applies_to_new_files_only(prism, gateway, store)


def test_missing_bucket_fails_the_run_and_keeps_the_cursor_until_it_exists(prism, gateway, store):
    checks.check_missing_bucket_fails_the_run_then_recovers(prism, gateway, store)


def test_validate_writes_and_deletes_a_marker(prism, store):
    message = checks.check_validation_succeeds_and_leaves_nothing(prism, store)
    assert f"s3://{store.bucket}/prism/production/_prism_validate_" in message


def test_validate_says_what_to_fix_for_a_missing_bucket_wrong_region_or_unreachable_endpoint(
    prism, store
):
    checks.check_validation_fails(
        prism, store, "bucket 'no-such-bucket' does not exist; create it", bucket="no-such-bucket"
    )
    elsewhere = unique_name()
    store.create(elsewhere, region="eu-west-1")
    checks.check_validation_fails(
        prism,
        store,
        f"bucket '{elsewhere}' is in region eu-west-1, not us-east-1; set region: eu-west-1",
        bucket=elsewhere,
    )
    endpoint = f"http://127.0.0.1:{free_port()}"
    checks.check_validation_fails(
        prism, store, f"{endpoint} cannot be reached", endpoint_url=endpoint
    )


@contextlib.contextmanager
def access_control(moto_server, store: S3Store):
    """moto's IAM access control, on for the block: users with the given S3 permissions on the
    store's bucket and their keys (created while access control is still off)."""
    iam = moto_server.client("iam")
    keys = {}
    for user, actions in {
        "writer": ["s3:PutObject", "s3:DeleteObject"],
        "put_only": ["s3:PutObject"],
        "reader": ["s3:GetObject"],
    }.items():
        name = f"{user}-{store.bucket}"
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": actions, "Resource": f"arn:aws:s3:::{store.bucket}/*"}
            ],
        }
        iam.put_user_policy(UserName=name, PolicyName="archive", PolicyDocument=json.dumps(policy))
        keys[user] = iam.create_access_key(UserName=name)["AccessKey"]
    _reset_auth(moto_server, "0")  # from now on every request is authenticated and authorized
    try:
        yield keys
    finally:
        _reset_auth(moto_server, "inf")


def _reset_auth(moto_server, count: str) -> None:
    request = urllib.request.Request(
        f"{moto_server.endpoint_url}/moto-api/reset-auth",
        data=count.encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(request, timeout=10).close()


def test_validate_names_refused_keys_and_missing_permissions(
    prism, gateway, store, moto_server, monkeypatch
):
    with access_control(moto_server, store) as keys:

        def use(key: dict) -> None:
            monkeypatch.setenv(KEY_ENV, key["AccessKeyId"])
            monkeypatch.setenv(SECRET_ENV, key["SecretAccessKey"])

        use(keys["writer"])
        assert prism.configure(store.integration()).validate(NAME)[0]

        use({"AccessKeyId": "AKIAEXAMPLEUNKNOWN00", "SecretAccessKey": "x" * 40})
        message = checks.check_validation_fails(
            prism, store, "S3 refused the access key (InvalidAccessKeyId"
        )
        assert (
            f"check access_key_id (from ${KEY_ENV}), secret_access_key (from ${SECRET_ENV})"
            in message
        )

        use({**keys["writer"], "SecretAccessKey": "wrong" * 8})
        refused = "S3 refused the access key (SignatureDoesNotMatch"
        message = checks.check_validation_fails(prism, store, refused)
        assert "wrong" not in message and keys["writer"]["AccessKeyId"] not in message

        use(keys["reader"])
        checks.check_validation_fails(
            prism,
            store,
            "access denied (AccessDenied); the credentials need s3:PutObject (and "
            f"s3:DeleteObject) on arn:aws:s3:::{store.bucket}/prism/*",
            prefix="prism",
        )

        # The spec asks for s3:PutObject only: enough to export, so validation passes and says
        # that its marker had to stay.
        use(keys["put_only"])
        ok, message = prism.configure(store.integration()).validate(NAME)
        assert ok and "could not delete it (no s3:DeleteObject" in message

        # A run with refused credentials fails with the message and the cursor stays.
        use(keys["reader"])
        gateway.insert_rows([gateway_rows(checks.H, 10)])
        failed = prism.configure(store.integration()).sync(NAME, checks.KEY, raise_on_error=False)
        assert not failed.success and "access denied (AccessDenied)" in failed.error
        assert prism.ledger.cursor(NAME, checks.H) == 0

        use(keys["writer"])
        assert prism.sync(NAME, checks.KEY).metadata["records"] == 10


def test_100mb_partition_goes_up_in_parts_without_holding_the_file_in_memory(
    prism, gateway, store, monkeypatch
):
    checks.check_large_partition_streams_in_pieces(prism, gateway, store, monkeypatch)


class _BotoFileSystem(AbstractFileSystem):
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


def test_duckdb_counts_each_hours_records_over_the_hive_partitioned_archive(prism, gateway, store):
    start = datetime(2026, 11, 21, 22, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(4)]
    counts = [25, 40, 0, 15]
    gateway.insert_rows([gateway_rows(h, n) for h, n in zip(hours, counts, strict=True) if n])
    prism.configure(store.integration(prefix="prism/production", batch_rows=20))
    prism.backfill(NAME, [partition_key(h) for h in hours])

    con = duckdb.connect()
    con.register_filesystem(_BotoFileSystem(store.client))
    rows = con.sql(
        f"""
        SELECT split_part(filename, '/logs/', 2)[1:10] AS day, hour::INTEGER AS hour,
               count(*) AS requests, count(DISTINCT request_id) AS distinct_requests,
               sum(total_tokens) AS tokens
        FROM read_json('s3://{store.bucket}/prism/production/logs/*/*/*/*/*.jsonl.gz',
                       hive_partitioning = true, filename = true)
        GROUP BY ALL ORDER BY day, hour
        """
    ).fetchall()

    expected = [
        (f"{h:%Y/%m/%d}", h.hour, n, n, sum(row[12] for row in gateway_rows(h, n)))
        for h, n in zip(hours, counts, strict=True)
        if n
    ]
    assert rows == expected
