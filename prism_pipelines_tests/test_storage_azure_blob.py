"""Export to Azure Blob Storage, end to end through Dagster against Azurite, read back with
azure-storage-blob.

Azurite checks Shared Key signatures and SAS permissions, so a wrong key and a read-only SAS are
refused for real. It cannot answer 503 ServerBusy on demand, so that one test puts a single 503
in front of the client's HTTP transport; azure-storage's retry policy makes (and counts) the
retry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransportResponse
from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from prism_pipelines.sinks.azure_blob import AzureBlobArchive
from prism_pipelines_tests import storage_helpers as checks
from prism_pipelines_tests.services import AZURITE_ACCOUNT, AZURITE_KEY, free_port
from prism_pipelines_tests.storage_helpers import NAME, Store, unique_name

pytest_plugins = ["prism_pipelines_tests.services"]

CONNECTION_ENV = "PRISM_TEST_AZURE_CONNECTION_STRING"


class AzureStore(Store):
    sink_class = AzureBlobArchive
    bucket_field = "container"

    def __init__(self, azurite, monkeypatch):
        super().__init__(unique_name())
        self.azurite, self.monkeypatch = azurite, monkeypatch
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.use_connection_string(azurite.connection_string)
        self.create(self.bucket)

    def use_connection_string(self, connection_string: str) -> None:
        self.monkeypatch.setenv(CONNECTION_ENV, connection_string)

    def integration(self, **settings) -> dict:
        return {
            "name": NAME,
            "type": "azure_blob",
            "container": self.bucket,
            "connection_string": {"env": CONNECTION_ENV},
            "history": checks.HISTORY,
            **settings,
        }

    def create(self, bucket: str) -> None:
        self.service.create_container(bucket)

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
        injected: list[str] = []
        connect = AzureBlobArchive._connect

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

        monkeypatch.setattr(AzureBlobArchive, "_connect", connect_with_fault)
        return injected


@pytest.fixture
def store(azurite, monkeypatch) -> AzureStore:
    return AzureStore(azurite, monkeypatch)


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


def test_server_busy_503_is_retried_by_azure_storage_and_counted_in_the_run(
    prism, gateway, store, monkeypatch
):
    checks.check_transient_failure_is_retried_and_counted(prism, gateway, store, monkeypatch)


def test_changing_the_prefix_applies_to_new_files_only(prism, gateway, store):
    checks.check_prefix_change_applies_to_new_files_only(prism, gateway, store)


def test_missing_container_fails_the_run_and_keeps_the_cursor_until_it_exists(
    prism, gateway, store
):
    checks.check_missing_bucket_fails_the_run_then_recovers(prism, gateway, store)


def test_validate_writes_and_deletes_a_marker(prism, store):
    message = checks.check_validation_succeeds_and_leaves_nothing(prism, store)
    assert f"/{AZURITE_ACCOUNT}/{store.bucket}/prism/production/_prism_validate_" in message


def test_validate_says_what_to_fix_for_each_failure(prism, store):
    checks.check_validation_fails(
        prism,
        store,
        "container 'no-such-container' does not exist in this storage account; create it",
        container="no-such-container",
    )

    wrong_key = AZURITE_KEY[:-8] + "AAAAAAA="
    store.use_connection_string(store.azurite.connection_string.replace(AZURITE_KEY, wrong_key))
    message = checks.check_validation_fails(
        prism,
        store,
        f"the storage account refused the key in connection_string (from ${CONNECTION_ENV}) "
        "(AuthenticationFailed); copy the connection string again",
    )
    assert wrong_key not in message

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        store.bucket,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    endpoint = store.azurite.connection_string.split("BlobEndpoint=")[1].rstrip(";")
    store.use_connection_string(f"BlobEndpoint={endpoint};SharedAccessSignature={sas}")
    message = checks.check_validation_fails(
        prism, store, f"does not allow writing blobs in container '{store.bucket}'"
    )
    assert sas not in message and "sig=" not in message

    store.use_connection_string("https://myaccount.blob.core.windows.net/?sv=2024")
    checks.check_validation_fails(
        prism,
        store,
        f"connection_string (from ${CONNECTION_ENV}) is not a storage account connection string",
    )

    closed = f"http://127.0.0.1:{free_port()}"
    store.use_connection_string(
        store.azurite.connection_string.split("BlobEndpoint=")[0]
        + f"BlobEndpoint={closed}/{AZURITE_ACCOUNT};"
    )
    checks.check_validation_fails(prism, store, f"{closed} cannot be reached")


def test_100mb_partition_goes_up_in_blocks_without_holding_the_file_in_memory(
    prism, gateway, store, monkeypatch
):
    checks.check_large_partition_streams_in_pieces(prism, gateway, store, monkeypatch)
