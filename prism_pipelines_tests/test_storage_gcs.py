"""Export to Google Cloud Storage, end to end through Dagster against fake-gcs-server, read back
with google-cloud-storage.

fake-gcs-server neither checks permissions nor answers 503 on demand: those two tests put one
such answer in front of the client's HTTP session (google-cloud-storage's retry makes and counts
the retry; a 403 becomes the access-denied message). Everything else is the real server.
"""

from __future__ import annotations

import json

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud.storage._media.requests.upload import ResumableUpload

from prism_pipelines.sinks.gcs import GcsArchive
from prism_pipelines_tests import storage_helpers as checks
from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import free_port, gcs_client
from prism_pipelines_tests.storage_helpers import NAME, Store, unique_name

pytest_plugins = ["prism_pipelines_tests.services"]

KEY_ENV = "PRISM_TEST_GCS_SERVICE_ACCOUNT_JSON"


class GcsStore(Store):
    sink_class = GcsArchive

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
            "history": checks.HISTORY,
            **settings,
        }

    def create(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

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
        injected: list[str] = []
        connect = GcsArchive._connect

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

        monkeypatch.setattr(GcsArchive, "_connect", connect_with_fault)
        return injected

    def fail_next_upload_once(self, monkeypatch) -> list[str]:
        return self.answer_next_upload_once(
            monkeypatch, 503, {"code": 503, "message": "We encountered an internal error."}
        )


@pytest.fixture
def store(fake_gcs) -> GcsStore:
    return GcsStore(fake_gcs)


def service_account_key(token_uri: str) -> str:
    """A well-formed service account key (a fresh RSA key) whose token endpoint is token_uri."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "prism-test",
            "private_key_id": "0" * 40,
            "private_key": pem,
            "client_email": "exporter@prism-test.iam.gserviceaccount.com",
            "client_id": "100000000000000000000",
            "token_uri": token_uri,
        }
    )


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


def test_503_is_retried_by_google_cloud_storage_and_counted_in_the_run(
    prism, gateway, store, monkeypatch
):
    checks.check_transient_failure_is_retried_and_counted(prism, gateway, store, monkeypatch)


def test_changing_the_prefix_applies_to_new_files_only(prism, gateway, store):
    checks.check_prefix_change_applies_to_new_files_only(prism, gateway, store)


def test_missing_bucket_fails_the_run_and_keeps_the_cursor_until_it_exists(prism, gateway, store):
    checks.check_missing_bucket_fails_the_run_then_recovers(prism, gateway, store)


def test_validate_writes_and_deletes_a_marker(prism, store):
    message = checks.check_validation_succeeds_and_leaves_nothing(prism, store)
    assert f"gs://{store.bucket}/prism/production/_prism_validate_" in message


def test_storage_emulator_host_is_honoured_without_endpoint_url(prism, gateway, store, monkeypatch):
    """No endpoint_url and no key: dagster-gcp's GCSResource builds the client, which follows
    STORAGE_EMULATOR_HOST like every Google client."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", store.endpoint)
    prism.configure({k: v for k, v in store.integration().items() if k != "endpoint_url"})
    assert prism.validate(NAME)[0]
    gateway.insert_rows([gateway_rows(checks.H, 25)])
    assert prism.sync(NAME, checks.KEY).metadata["records"] == 25
    assert len(checks.read_archive(store)) == 1


def test_validate_says_what_to_fix_for_each_failure(prism, store, monkeypatch):
    checks.check_validation_fails(
        prism, store, "bucket 'no-such-bucket' does not exist; create it", bucket="no-such-bucket"
    )

    closed = f"http://127.0.0.1:{free_port()}"
    checks.check_validation_fails(prism, store, f"{closed} cannot be reached", endpoint_url=closed)

    with_key = {"service_account_json": {"env": KEY_ENV}}
    for key, expected in [
        ("{'type': 'service_account'", "is not JSON; paste the whole key file"),
        ('{"type": "authorized_user"}', "is not a service account key"),
    ]:
        monkeypatch.setenv(KEY_ENV, key)
        message = checks.check_validation_fails(
            prism, store, f"service_account_json (from ${KEY_ENV}) {expected}", **with_key
        )
        assert key not in message

    # A well-formed key whose token endpoint does not answer (as for a deleted key, no token).
    monkeypatch.setenv(KEY_ENV, service_account_key(f"http://127.0.0.1:{free_port()}/token"))
    message = checks.check_validation_fails(
        prism,
        store,
        "no access token could be obtained for the service account in service_account_json "
        f"(from ${KEY_ENV})",
        **with_key,
    )
    assert "PRIVATE KEY" not in message


def test_validate_says_access_was_denied_and_which_permission_is_needed(prism, store, monkeypatch):
    injected = store.answer_next_upload_once(
        monkeypatch,
        403,
        {
            "code": 403,
            "message": "exporter@prism-test.iam.gserviceaccount.com does not have "
            "storage.objects.create access to the Google Cloud Storage object.",
        },
    )
    checks.check_validation_fails(
        prism,
        store,
        "access denied for the Application Default Credentials; it needs storage.objects.create "
        "(and storage.objects.delete, to rewrite a file when a batch is redone) on bucket "
        f"'{store.bucket}'",
    )
    assert len(injected) == 1


def test_100mb_partition_goes_up_in_resumable_chunks_without_holding_the_file_in_memory(
    prism, gateway, store, monkeypatch
):
    checks.check_large_partition_streams_in_pieces(prism, gateway, store, monkeypatch)
