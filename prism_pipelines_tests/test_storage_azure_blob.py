"""Export to Azure Blob Storage, what only Azure does: validation's messages against Azurite,
which checks Shared Key signatures and SAS permissions, so a wrong key and a read-only SAS are
refused for real. The behaviours every archive shares are in test_storage.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from prism_pipelines_tests.services import AZURITE_ACCOUNT, AZURITE_KEY, free_port
from prism_pipelines_tests.storage_helpers import (
    AZURE_CONNECTION_ENV,
    AzureStore,
    check_validation_fails,
)


@pytest.fixture
def azure_store(azurite, monkeypatch) -> AzureStore:
    return AzureStore(azurite, monkeypatch)


def test_validate_says_what_to_fix_for_each_failure(prism, azure_store):
    check_validation_fails(
        prism,
        azure_store,
        "container 'no-such-container' does not exist in this storage account; create it",
        container="no-such-container",
    )

    wrong_key = AZURITE_KEY[:-8] + "AAAAAAA="
    azure_store.use_connection_string(
        azure_store.azurite.connection_string.replace(AZURITE_KEY, wrong_key)
    )
    message = check_validation_fails(
        prism,
        azure_store,
        f"the storage account refused the key in connection_string (from ${AZURE_CONNECTION_ENV}) "
        "(AuthenticationFailed); copy the connection string again",
    )
    assert wrong_key not in message

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        azure_store.bucket,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    endpoint = azure_store.azurite.connection_string.split("BlobEndpoint=")[1].rstrip(";")
    azure_store.use_connection_string(f"BlobEndpoint={endpoint};SharedAccessSignature={sas}")
    message = check_validation_fails(
        prism, azure_store, f"does not allow writing blobs in container '{azure_store.bucket}'"
    )
    assert sas not in message and "sig=" not in message

    azure_store.use_connection_string("https://myaccount.blob.core.windows.net/?sv=2024")
    check_validation_fails(
        prism,
        azure_store,
        f"connection_string (from ${AZURE_CONNECTION_ENV}) "
        "is not a storage account connection string",
    )

    closed = f"http://127.0.0.1:{free_port()}"
    azure_store.use_connection_string(
        azure_store.azurite.connection_string.split("BlobEndpoint=")[0]
        + f"BlobEndpoint={closed}/{AZURITE_ACCOUNT};"
    )
    check_validation_fails(prism, azure_store, f"{closed} cannot be reached")
