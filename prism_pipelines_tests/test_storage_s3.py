"""Export to Amazon S3, what only S3 does: validation's messages (including a bucket in another
region), moto's IAM access control switched on for one test to refuse keys and permissions, and
DuckDB reading the archive back. The behaviours every archive shares are in test_storage.py.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import free_port
from prism_pipelines_tests.storage_helpers import (
    KEY,
    NAME,
    S3_KEY_ENV,
    S3_SECRET_ENV,
    BotoFileSystem,
    H,
    S3Store,
    check_validation_fails,
    partition_key,
    unique_name,
)


@pytest.fixture
def s3_store(moto_server, monkeypatch) -> S3Store:
    return S3Store(moto_server, monkeypatch)


def test_validate_says_what_to_fix_for_a_missing_bucket_wrong_region_or_unreachable_endpoint(
    prism, s3_store
):
    check_validation_fails(
        prism,
        s3_store,
        "bucket 'no-such-bucket' does not exist; create it",
        bucket="no-such-bucket",
    )
    elsewhere = unique_name()
    s3_store.create(elsewhere, region="eu-west-1")
    check_validation_fails(
        prism,
        s3_store,
        f"bucket '{elsewhere}' is in region eu-west-1, not us-east-1; set region: eu-west-1",
        bucket=elsewhere,
    )
    endpoint = f"http://127.0.0.1:{free_port()}"
    check_validation_fails(prism, s3_store, f"{endpoint} cannot be reached", endpoint_url=endpoint)


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
    prism, gateway, s3_store, moto_server, monkeypatch
):
    with access_control(moto_server, s3_store) as keys:

        def use(key: dict) -> None:
            monkeypatch.setenv(S3_KEY_ENV, key["AccessKeyId"])
            monkeypatch.setenv(S3_SECRET_ENV, key["SecretAccessKey"])

        use(keys["writer"])
        assert prism.configure(s3_store.integration()).validate(NAME)[0]

        use({"AccessKeyId": "AKIAEXAMPLEUNKNOWN00", "SecretAccessKey": "x" * 40})
        message = check_validation_fails(
            prism, s3_store, "S3 refused the access key (InvalidAccessKeyId"
        )
        assert (
            f"check access_key_id (from ${S3_KEY_ENV}), secret_access_key (from ${S3_SECRET_ENV})"
            in message
        )

        use({**keys["writer"], "SecretAccessKey": "wrong" * 8})
        refused = "S3 refused the access key (SignatureDoesNotMatch"
        message = check_validation_fails(prism, s3_store, refused)
        assert "wrong" not in message and keys["writer"]["AccessKeyId"] not in message

        use(keys["reader"])
        check_validation_fails(
            prism,
            s3_store,
            "access denied (AccessDenied); the credentials need s3:PutObject (and "
            f"s3:DeleteObject) on arn:aws:s3:::{s3_store.bucket}/prism/*",
            prefix="prism",
        )

        # The spec asks for s3:PutObject only: enough to export, so validation passes and says
        # that its marker had to stay.
        use(keys["put_only"])
        ok, message = prism.configure(s3_store.integration()).validate(NAME)
        assert ok and "could not delete it (no s3:DeleteObject" in message

        # A run with refused credentials fails with the message and the cursor stays.
        use(keys["reader"])
        gateway.insert_rows([gateway_rows(H, 10)])
        failed = prism.configure(s3_store.integration()).sync(NAME, KEY, raise_on_error=False)
        assert not failed.success and "access denied (AccessDenied)" in failed.error
        assert prism.ledger.cursor(NAME, H) == 0

        use(keys["writer"])
        assert prism.sync(NAME, KEY).metadata["records"] == 10


def test_duckdb_counts_each_hours_records_over_the_hive_partitioned_archive(
    prism, gateway, s3_store
):
    start = datetime(2026, 11, 21, 22, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(4)]
    counts = [25, 40, 0, 15]
    gateway.insert_rows([gateway_rows(h, n) for h, n in zip(hours, counts, strict=True) if n])
    prism.configure(s3_store.integration(prefix="prism/production", batch_rows=20))
    prism.backfill(NAME, [partition_key(h) for h in hours])

    con = duckdb.connect()
    con.register_filesystem(BotoFileSystem(s3_store.client))
    rows = con.sql(
        f"""
        SELECT split_part(filename, '/logs/', 2)[1:10] AS day, hour::INTEGER AS hour,
               count(*) AS requests, count(DISTINCT request_id) AS distinct_requests,
               sum(total_tokens) AS tokens
        FROM read_json('s3://{s3_store.bucket}/prism/production/logs/*/*/*/*/*.jsonl.gz',
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
