"""Google Cloud Storage: the archive as objects in one bucket.

The client is ``google.cloud.storage.Client``: without ``service_account_json`` it uses
Application Default Credentials (workload identity on GKE), or none when
``STORAGE_EMULATOR_HOST`` names an emulator; a custom ``endpoint_url`` without a key is taken
for an emulator too (no credentials).

Retries are google-cloud-storage's own (429, 5xx, timeouts, dropped connections; exponential
backoff with jitter), tuned below; its ``on_error`` hook, called before every retry, counts them
for the run's metadata. A file larger than 8 MiB goes up as a resumable upload in
``CHUNK_BYTES`` requests read from the spooled file one chunk at a time; the object appears only
when the last chunk is in, so a reader never sees half a file.

Fencing (storage/base.py): every upload carries ``ifGenerationMatch`` — 0 for a first publish
(the name must be free), the recorded generation to replace — and GCS answers 412 without
writing. A resumable session a crashed run left open needs no clean-up: GCS drops it after a
week, and its bytes never become an object.
"""

from __future__ import annotations

import json
from typing import BinaryIO

import requests
from google.api_core import exceptions as api
from google.api_core.retry import Retry
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.cloud import storage
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from prism_pipelines.errors import CredentialsError, DestinationError, PrismError
from prism_pipelines.sinks.storage.base import StorageSink
from prism_pipelines.sinks.storage.formats import content_headers

#: bytes per resumable-upload request (a multiple of 256 KiB, as the API requires)
CHUNK_BYTES = 8 * 1024 * 1024
#: retry backoff: 1 s doubling to 32 s, retried until the deadline
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAXIMUM_SECONDS = 32.0
RETRY_MULTIPLIER = 2.0
EXPORT_RETRY_DEADLINE_SECONDS = 300.0
#: Validate & Continue answers within seconds when the endpoint is wrong
VALIDATE_RETRY_DEADLINE_SECONDS = 3.0
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
#: (connect, read) seconds per request
TIMEOUT = (10, 120)

#: the object's custom metadata that names the attempt that wrote it (storage/base.py)
ATTEMPT_METADATA = "prism-attempt"

_UNREACHABLE = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)


class GcsSink(StorageSink):
    def __init__(self, integration):
        super().__init__(integration)
        self._client: storage.Client | None = None
        self._deadline = EXPORT_RETRY_DEADLINE_SECONDS

    @property
    def bucket(self) -> storage.Bucket:
        if self._client is None:
            self._client = self._connect()
        return self._client.bucket(self.integration.bucket)

    def _connect(self) -> storage.Client:
        integration = self.integration
        key = integration.secret("service_account_json")
        if key is None and integration.endpoint_url is None:
            try:
                return storage.Client(project=integration.project_id)
            except DefaultCredentialsError:
                raise CredentialsError(
                    f"integration '{integration.name}': no service_account_json is set and no "
                    f"Application Default Credentials were found; set service_account_json "
                    f"(as {{env: VAR}}), or give the process a Google identity (workload "
                    f"identity, GOOGLE_APPLICATION_CREDENTIALS)"
                ) from None
        credentials = None if key is None else self._credentials(key)
        return storage.Client(
            project=integration.project_id or getattr(credentials, "project_id", None),
            credentials=credentials,
            client_options={"api_endpoint": integration.endpoint_url}
            if integration.endpoint_url
            else None,
            # A custom endpoint without a key is an emulator: no credentials are looked up.
            use_auth_w_custom_endpoint=key is not None,
        )

    def _credentials(self, key: str) -> service_account.Credentials:
        where = (
            f"integration '{self.integration.name}': service_account_json (from "
            f"${self.integration.service_account_json.env})"
        )
        try:
            info = json.loads(key)
        except ValueError:
            raise CredentialsError(
                f"{where} is not JSON; paste the whole key file downloaded from IAM > Service "
                f"accounts > Keys"
            ) from None
        try:
            return service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CredentialsError(
                f"{where} is not a service account key ({_first_line(exc)}); download a JSON key "
                f"from IAM > Service accounts > Keys"
            ) from None

    def _retry(self) -> Retry:
        # google-cloud-storage's own predicate (what it deems transient), our timing and counter.
        return Retry(
            predicate=DEFAULT_RETRY._predicate,
            initial=RETRY_INITIAL_SECONDS,
            maximum=RETRY_MAXIMUM_SECONDS,
            multiplier=RETRY_MULTIPLIER,
            timeout=self._deadline,
            on_error=self._count_retry,
        )

    def _count_retry(self, _exc: Exception) -> None:
        self.retries.add()

    # -- the three operations the archive needs ---------------------------------------------

    def put(self, key: str, data: BinaryIO, size: int, replaces: str | None, attempt: str) -> str:
        content_type, content_encoding = content_headers(key)
        try:
            blob = self.bucket.blob(key, chunk_size=CHUNK_BYTES)
            blob.content_encoding = content_encoding
            blob.metadata = {ATTEMPT_METADATA: attempt}
            blob.upload_from_file(
                data,
                size=size,
                content_type=content_type,
                timeout=TIMEOUT,
                retry=self._retry(),
                if_generation_match=int(replaces or 0),
            )
            return str(blob.generation)
        except api.PreconditionFailed:
            raise self.superseded(key) from None
        except InvalidResponse as exc:
            if exc.response.status_code == 412:
                raise self.superseded(key) from None
            raise self._error(exc, f"write {self.describe(key)}") from None
        except (api.GoogleAPIError, GoogleAuthError, *_UNREACHABLE) as exc:
            raise self._error(exc, f"write {self.describe(key)}") from None

    def published_version(self, location: str) -> str | None:
        return self.stored(location)[0]

    def stored(self, key: str) -> tuple[str | None, str | None]:
        try:
            blob = self.bucket.get_blob(key, timeout=TIMEOUT, retry=self._retry())
        except (api.GoogleAPIError, GoogleAuthError, *_UNREACHABLE) as exc:
            raise self._error(exc, f"read {self.describe(key)}") from None
        if blob is None:
            return None, None
        return str(blob.generation), (blob.metadata or {}).get(ATTEMPT_METADATA)

    def remove(self, key: str, version: str) -> None:
        try:
            self.bucket.blob(key).delete(
                timeout=TIMEOUT, retry=self._retry(), if_generation_match=int(version)
            )
        except api.NotFound:
            pass  # no such object (or no bucket): nothing to remove
        except api.PreconditionFailed:
            raise self.superseded(key) from None
        except (api.GoogleAPIError, GoogleAuthError, *_UNREACHABLE) as exc:
            raise self._error(exc, f"delete {self.describe(key)}") from None

    def describe(self, key: str) -> str:
        return f"gs://{self.integration.bucket}/{key}"

    # -- Validate & Continue -----------------------------------------------------------------

    def validate(self) -> str:
        """The base's marker write and delete, with a short retry deadline so that a wrong
        address fails in seconds."""
        self._deadline = VALIDATE_RETRY_DEADLINE_SECONDS
        try:
            return super().validate()
        finally:
            self._deadline = EXPORT_RETRY_DEADLINE_SECONDS

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- errors a user can act on ------------------------------------------------------------

    def _error(self, exc: Exception, action: str) -> PrismError:
        integration = self.integration
        where = f"integration '{integration.name}': cannot {action}"
        if isinstance(exc, api.RetryError) and exc.cause is not None:
            exc = exc.cause
        if isinstance(exc, InvalidResponse):  # the upload layer's own error for a bad status
            exc = api.from_http_status(exc.response.status_code, _first_line(exc))
        identity = (
            f"the service account in service_account_json (from "
            f"${integration.service_account_json.env})"
            if integration.service_account_json
            else "the Application Default Credentials"
        )
        if isinstance(exc, GoogleAuthError):
            return CredentialsError(
                f"{where}: no access token could be obtained for {identity} ({_first_line(exc)}); "
                f"check that the key is current (not deleted or disabled) and that the token "
                f"endpoint is reachable"
            )
        if isinstance(exc, api.Unauthorized):
            return CredentialsError(
                f"{where}: Google Cloud Storage refused {identity} (401); create a new key for the "
                f"service account and update service_account_json"
            )
        if isinstance(exc, api.Forbidden):
            needed = (
                "storage.objects.delete"
                if action.startswith("delete")
                else (
                    "storage.objects.create (and storage.objects.delete, to rewrite a file when a "
                    "batch is redone)"
                )
            )
            return CredentialsError(
                f"{where}: access denied for {identity}; it needs {needed} on bucket "
                f"'{integration.bucket}' (e.g. the Storage Object User role)"
            )
        if isinstance(exc, api.NotFound):
            return DestinationError(
                f"{where}: bucket '{integration.bucket}' does not exist; create it, or fix bucket"
            )
        if isinstance(exc, _UNREACHABLE):
            endpoint = integration.endpoint_url or "storage.googleapis.com"
            return DestinationError(
                f"{where}: {endpoint} cannot be reached ({type(exc).__name__}); check "
                f"endpoint_url (or STORAGE_EMULATOR_HOST) and the network; the batch is redone on "
                f"the next run"
            )
        if isinstance(exc, api.GoogleAPIError):
            return DestinationError(
                f"{where}: Google Cloud Storage answered {_first_line(exc)}; the batch is redone "
                f"on the next run"
            )
        return DestinationError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
