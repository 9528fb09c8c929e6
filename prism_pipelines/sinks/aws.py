"""What the AWS sinks (S3, SQS) share: one way to build a boto3 client, and AWS's error codes.

The client's retries are botocore's *standard* mode (throttling, 5xx, timeouts, dropped
connections; exponential backoff with full jitter, capped at 20 s): the SDK's retry does the
job, so we only configure it and count its retries (``ResponseMetadata.RetryAttempts`` of every
call, through botocore's ``after-call`` event) into the sink's ``RetryCount``.
"""

from __future__ import annotations

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.loaders import create_loader

from prism_pipelines.errors import DestinationError
from prism_pipelines.sinks.retry import RetryCount

#: botocore's service models, parsed once per process and shared by every client (S3's takes
#: about 12 MB of heap and a tenth of a second): each sink still gets a session of its own, so
#: its credentials are resolved afresh
_MODELS = create_loader()

#: the access key itself was refused (unknown, wrong secret, expired)
KEY_REFUSED = frozenset(
    {
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidSecurity",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "RequestExpired",
        "MissingAuthenticationToken",
    }
)
#: the key is valid but may not do this
NOT_ALLOWED = frozenset(
    {"AccessDenied", "AccessDeniedException", "KMS.AccessDeniedException", "KmsAccessDenied"}
)
UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def build_client(service: str, integration, max_attempts: int, retries: RetryCount, **config):
    """A boto3 client from the integration's region, ``endpoint_url`` and keys (or, without
    keys, the default credential chain: environment, profile, IAM role), with botocore's
    standard retry mode and ``config`` (``botocore.config.Config`` options)."""
    try:
        core = botocore.session.get_session()
        core.register_component("data_loader", _MODELS)
        client = boto3.session.Session(botocore_session=core).client(
            service,
            region_name=integration.region,
            endpoint_url=integration.endpoint_url,
            aws_access_key_id=integration.secret("access_key_id"),
            aws_secret_access_key=integration.secret("secret_access_key"),
            config=Config(retries={"mode": "standard", "max_attempts": max_attempts}, **config),
        )
    except (BotoCoreError, ValueError) as exc:  # a malformed region name or endpoint_url
        raise DestinationError(
            f"integration '{integration.name}': cannot set up the {service.upper()} client: "
            f"{exc}; check region and endpoint_url"
        ) from None

    def count(parsed=None, **_) -> None:
        retries.add((parsed or {}).get("ResponseMetadata", {}).get("RetryAttempts", 0))

    client.meta.events.register(f"after-call.{service}", count)
    return client
