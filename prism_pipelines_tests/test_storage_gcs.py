"""Export to Google Cloud Storage, what only GCS does: STORAGE_EMULATOR_HOST, and validation's
messages against fake-gcs-server. It does not check permissions, so the access-denied test puts
one 403 in front of the client's HTTP session (``GcsStore.answer_next_upload_once``). The
behaviours every archive shares are in test_storage.py.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from prism_pipelines_tests.factories import gateway_rows
from prism_pipelines_tests.services import free_port
from prism_pipelines_tests.storage_helpers import (
    KEY,
    NAME,
    GcsStore,
    H,
    check_validation_fails,
    read_archive,
)

KEY_ENV = "PRISM_TEST_GCS_SERVICE_ACCOUNT_JSON"


@pytest.fixture
def gcs_store(fake_gcs) -> GcsStore:
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


def test_storage_emulator_host_is_honoured_without_endpoint_url(
    prism, gateway, gcs_store, monkeypatch
):
    """No endpoint_url and no key: the client uses Application Default Credentials, and follows
    STORAGE_EMULATOR_HOST like every Google client."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_store.endpoint)
    prism.configure({k: v for k, v in gcs_store.integration().items() if k != "endpoint_url"})
    assert prism.validate(NAME)[0]
    gateway.insert_rows([gateway_rows(H, 25)])
    assert prism.sync(NAME, KEY).metadata["records"] == 25
    assert len(read_archive(gcs_store)) == 1


def test_validate_says_what_to_fix_for_each_failure(prism, gcs_store, monkeypatch):
    check_validation_fails(
        prism,
        gcs_store,
        "bucket 'no-such-bucket' does not exist; create it",
        bucket="no-such-bucket",
    )

    closed = f"http://127.0.0.1:{free_port()}"
    check_validation_fails(prism, gcs_store, f"{closed} cannot be reached", endpoint_url=closed)

    with_key = {"service_account_json": {"env": KEY_ENV}}
    for key, expected in [
        ("{'type': 'service_account'", "is not JSON; paste the whole key file"),
        ('{"type": "authorized_user"}', "is not a service account key"),
    ]:
        monkeypatch.setenv(KEY_ENV, key)
        message = check_validation_fails(
            prism, gcs_store, f"service_account_json (from ${KEY_ENV}) {expected}", **with_key
        )
        assert key not in message

    # A well-formed key whose token endpoint does not answer (as for a deleted key, no token).
    monkeypatch.setenv(KEY_ENV, service_account_key(f"http://127.0.0.1:{free_port()}/token"))
    message = check_validation_fails(
        prism,
        gcs_store,
        "no access token could be obtained for the service account in service_account_json "
        f"(from ${KEY_ENV})",
        **with_key,
    )
    assert "PRIVATE KEY" not in message


def test_validate_says_access_was_denied_and_which_permission_is_needed(
    prism, gcs_store, monkeypatch
):
    injected = gcs_store.answer_next_upload_once(
        monkeypatch,
        403,
        {
            "code": 403,
            "message": "exporter@prism-test.iam.gserviceaccount.com does not have "
            "storage.objects.create access to the Google Cloud Storage object.",
        },
    )
    check_validation_fails(
        prism,
        gcs_store,
        "access denied for the Application Default Credentials; it needs storage.objects.create "
        "(and storage.objects.delete, to rewrite a file when a batch is redone) on bucket "
        f"'{gcs_store.bucket}'",
    )
    assert len(injected) == 1
