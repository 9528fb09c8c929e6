"""Azure Blob Storage: the archive as block blobs in one container.

The client is azure-storage-blob's ``ContainerClient.from_connection_string``, not dagster-azure's
``AzureBlobStorageResource``: that resource takes an account URL and a credential object, not
the connection string the spec's setup form asks for (which also carries ``BlobEndpoint=`` for
Azurite and sovereign clouds), and it passes no client options, so it could carry neither our
retry policy nor the block sizes that keep memory bounded.

Retries are azure-storage's own ``ExponentialRetry`` (503 ServerBusy, 500, 408, timeouts and
dropped connections), tuned below; its per-retry ``retry_hook`` counts them for the run's
metadata. A file larger than ``BLOCK_BYTES`` goes up as blocks (Put Block) read from the spooled
file ``BLOCK_BYTES`` at a time and becomes visible only when the block list is committed, so a
reader never sees half a file.

Fencing (storage/base.py): a first publish is ``If-None-Match: *`` (``overwrite=False``), a
replace ``If-Match: <recorded ETag>``; on a block upload the condition is checked when the block
list is committed, so a stalled run's blocks never become the blob. Blocks a crashed run staged
and never committed need no clean-up: Azure discards uncommitted blocks after a week.
"""

from __future__ import annotations

from typing import BinaryIO
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import ContainerClient, ContentSettings, ExponentialRetry

from prism_pipelines.errors import CredentialsError, DestinationError, PrismError
from prism_pipelines.sinks.storage.base import StorageSink
from prism_pipelines.sinks.storage.formats import content_headers

#: block size, and the largest file sent in one Put Blob (Azure allows 50,000 blocks per blob)
BLOCK_BYTES = 8 * 1024 * 1024
#: blocks in flight at once
UPLOAD_THREADS = 2
#: azure-storage's exponential retry: 1 s, then 1 + 2^n s, each ± 1 s of jitter
RETRY_INITIAL_SECONDS = 1
RETRY_INCREMENT_BASE = 2
RETRY_JITTER_SECONDS = 1
EXPORT_RETRIES = 6
#: Validate & Continue answers within seconds when the endpoint is wrong
VALIDATE_RETRIES = 1
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 120

#: the blob metadata that names the attempt that wrote it (storage/base.py); Azure's metadata
#: names are C# identifiers, so no hyphen
ATTEMPT_METADATA = "prism_attempt"

_KEY_REFUSED = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}
_NOT_ALLOWED = {
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch",
    "InsufficientAccountPermissions",
}


class AzureBlobSink(StorageSink):
    def __init__(self, integration):
        super().__init__(integration)
        self._container: ContainerClient | None = None
        self._retries_allowed = EXPORT_RETRIES

    @property
    def container(self) -> ContainerClient:
        if self._container is None:
            self._container = self._connect(self._retries_allowed)
        return self._container

    def _connect(self, retries: int) -> ContainerClient:
        integration = self.integration
        connection_string = integration.secret("connection_string")
        retry = ExponentialRetry(
            initial_backoff=RETRY_INITIAL_SECONDS,
            increment_base=RETRY_INCREMENT_BASE,
            random_jitter_range=RETRY_JITTER_SECONDS,
            retry_total=retries,
            retry_connect=retries,
            retry_read=retries,
            retry_status=retries,
        )
        try:
            return ContainerClient.from_connection_string(
                connection_string,
                integration.container,
                retry_policy=retry,
                max_single_put_size=BLOCK_BYTES,
                max_block_size=BLOCK_BYTES,
                connection_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
            )
        except (ValueError, TypeError, AzureError) as exc:
            raise CredentialsError(
                f"integration '{integration.name}': connection_string (from "
                f"${integration.connection_string.env}) is not a storage account connection "
                f"string ({_first_line(exc)}); copy it from Azure Portal > Storage account > "
                f"Access keys (it reads DefaultEndpointsProtocol=https;AccountName=…;"
                f"AccountKey=…;EndpointSuffix=core.windows.net)"
            ) from None

    def _count_retry(self, **_) -> None:
        self.retries.add()

    # -- the three operations the archive needs ---------------------------------------------

    def put(self, key: str, data: BinaryIO, size: int, replaces: str | None, attempt: str) -> str:
        condition = (
            {"overwrite": False}  # If-None-Match: *
            if replaces is None
            else {
                "overwrite": True,
                "etag": replaces,
                "match_condition": MatchConditions.IfNotModified,
            }
        )
        content_type, content_encoding = content_headers(key)
        try:
            return self.container.get_blob_client(key).upload_blob(
                data,
                length=size,
                **condition,
                metadata={ATTEMPT_METADATA: attempt},
                content_settings=ContentSettings(
                    content_type=content_type, content_encoding=content_encoding
                ),
                max_concurrency=UPLOAD_THREADS,
                retry_hook=self._count_retry,
            )["etag"]
        except (ResourceExistsError, ResourceModifiedError):
            raise self.superseded(key) from None
        except ResourceNotFoundError as exc:
            if _code(exc) == "BlobNotFound":  # If-Match on a blob another run removed
                raise self.superseded(key) from None
            raise self._error(exc, f"write {self.describe(key)}") from None
        except (AzureError, ValueError) as exc:
            raise self._error(exc, f"write {self.describe(key)}") from None

    def published_version(self, location: str) -> str | None:
        return self.stored(location)[0]

    def stored(self, key: str) -> tuple[str | None, str | None]:
        try:
            properties = self.container.get_blob_client(key).get_blob_properties(
                retry_hook=self._count_retry
            )
        except ResourceNotFoundError as exc:
            if _code(exc) in {"BlobNotFound", ""}:
                return None, None
            raise self._error(exc, f"read {self.describe(key)}") from None
        except (AzureError, ValueError) as exc:
            raise self._error(exc, f"read {self.describe(key)}") from None
        return properties.etag, (properties.metadata or {}).get(ATTEMPT_METADATA)

    def remove(self, key: str, version: str) -> None:
        try:
            self.container.delete_blob(
                key,
                etag=version,
                match_condition=MatchConditions.IfNotModified,
                retry_hook=self._count_retry,
            )
        except ResourceModifiedError:
            if self.stored(key)[0] is not None:  # Azurite answers 412 for a missing blob too
                raise self.superseded(key) from None
        except ResourceNotFoundError as exc:
            if _code(exc) != "BlobNotFound":
                raise self._error(exc, f"delete {self.describe(key)}") from None
        except (AzureError, ValueError) as exc:
            raise self._error(exc, f"delete {self.describe(key)}") from None

    def describe(self, key: str) -> str:
        # The container's address without its query: a SAS connection string puts the token there.
        base = urlsplit(self.container.url)._replace(query="", fragment="").geturl()
        return f"{base.rstrip('/')}/{key}"

    # -- Validate & Continue -----------------------------------------------------------------

    def validate(self) -> str:
        """The base's marker write and delete, with one retry so that a wrong address fails in
        seconds."""
        self.close()
        self._retries_allowed = VALIDATE_RETRIES
        try:
            return super().validate()
        finally:
            self.close()
            self._retries_allowed = EXPORT_RETRIES

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    # -- errors a user can act on ------------------------------------------------------------

    def _error(self, exc: Exception, action: str) -> PrismError:
        integration = self.integration
        where = f"integration '{integration.name}': cannot {action}"
        secret = f"connection_string (from ${integration.connection_string.env})"
        code = _code(exc)
        if code in _KEY_REFUSED or (
            isinstance(exc, ClientAuthenticationError) and not isinstance(exc, HttpResponseError)
        ):
            return CredentialsError(
                f"{where}: the storage account refused the key in {secret} "
                f"({code or _first_line(exc)}); copy the connection string again from Azure "
                f"Portal > Storage account > Access keys"
            )
        if code in _NOT_ALLOWED or getattr(exc, "status_code", None) == 403:
            return CredentialsError(
                f"{where}: {secret} does not allow writing blobs in container "
                f"'{integration.container}' ({code or 403}); use the account key connection "
                f"string, or a SAS with read, write, create and delete permissions on the container"
            )
        if code == "ContainerNotFound":
            return DestinationError(
                f"{where}: container '{integration.container}' does not exist in this storage "
                f"account; create it, or fix container"
            )
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return DestinationError(
                f"{where}: {_endpoint(self.container.url)} cannot be reached "
                f"({_first_line(exc)}); check AccountName / BlobEndpoint in {secret} and the "
                f"network; the batch is redone on the next run"
            )
        if isinstance(exc, HttpResponseError):
            return DestinationError(
                f"{where}: Azure answered {exc.status_code} {code} after "
                f"{self._retries_allowed} retries; the batch is redone on the next run"
            )
        return DestinationError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")


def _code(exc: Exception) -> str:
    """The storage error code (``ContainerNotFound``, …); a signature the service could not
    verify counts as ``AuthenticationFailed`` (Azurite calls it ``AuthorizationFailure``)."""
    code = getattr(exc, "error_code", None)
    if not code and getattr(exc, "response", None) is not None:
        code = exc.response.headers.get("x-ms-error-code")
    code = str(getattr(code, "value", code) or "")
    if code == "AuthorizationFailure" and "failed to authenticate" in str(exc).lower():
        return "AuthenticationFailed"
    return code


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
