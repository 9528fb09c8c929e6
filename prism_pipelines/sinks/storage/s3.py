"""Amazon S3 and S3-compatible stores (MinIO, Cloudflare R2, …): the archive as S3 objects.

The client is built by ``sinks/aws.py`` (region, ``endpoint_url``, the keys or else the default
credential chain). Throttling (503 SlowDown, 429), 5xx, timeouts and dropped connections are
retried by botocore's standard mode, with exponential backoff and full jitter; ``aws.py``
counts those retries for the run's metadata.

A file goes up as one PutObject below ``PART_BYTES``, else as a multipart upload of
``PART_BYTES`` parts that becomes visible only when completed (and is aborted on failure), so a
reader never sees half a file. Either is a conditional write (fencing, storage/base.py):
``If-None-Match: *`` for a first publish, ``If-Match: <recorded ETag>`` to replace, on the
PutObject or on CompleteMultipartUpload; S3 answers 412 (409 for a concurrent conditional
write) and nothing is overwritten. boto3's ``upload_fileobj`` passes neither header, so the parts
are sent here. A multipart upload a crashed run left unfinished is aborted by ``clean_up``.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import BinaryIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from prism_pipelines.errors import CredentialsError, DestinationError, PrismError
from prism_pipelines.sinks.aws import KEY_REFUSED, UNREACHABLE, build_client, error_code
from prism_pipelines.sinks.storage.base import StorageSink
from prism_pipelines.sinks.storage.formats import content_headers

#: multipart threshold and part size (S3 takes 5 MiB to 5 GiB per part, 10,000 parts at most)
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000
#: parts in flight at once, plus the next one read: an upload costs
#: ``(UPLOAD_THREADS + 1) * PART_BYTES`` of memory whatever the file's size
UPLOAD_THREADS = 2
#: botocore standard mode: attempts per request, the first included (backoff capped at 20 s)
EXPORT_ATTEMPTS = 8
#: Validate & Continue answers within seconds when the endpoint is wrong
VALIDATE_ATTEMPTS = 2

#: what S3 answers when a conditional write's condition fails (409: a concurrent one won); and
#: NoSuchUpload when a newer run's clean_up aborted this run's stalled multipart upload
_SUPERSEDED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchUpload"}

#: the object metadata (x-amz-meta-…) that names the attempt that wrote it (storage/base.py)
ATTEMPT_METADATA = "prism-attempt"

_WRONG_REGION = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
}


class S3Sink(StorageSink):
    def __init__(self, integration):
        super().__init__(integration)
        self._client = None
        self._attempts = EXPORT_ATTEMPTS
        self._kept_marker: str | None = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect(self._attempts)
        return self._client

    def _connect(self, max_attempts: int):
        return build_client("s3", self.integration, max_attempts, self.retries)

    # -- the three operations the archive needs ---------------------------------------------

    def put(self, key: str, data: BinaryIO, size: int, replaces: str | None, attempt: str) -> str:
        condition = {"IfNoneMatch": "*"} if replaces is None else {"IfMatch": replaces}
        content_type, content_encoding = content_headers(key)
        headers = {"ContentType": content_type, "Metadata": {ATTEMPT_METADATA: attempt}}
        if content_encoding:
            headers["ContentEncoding"] = content_encoding
        bucket = self.integration.bucket
        try:
            if size < PART_BYTES:
                return self.client.put_object(
                    Bucket=bucket, Key=key, Body=data, ContentLength=size, **headers, **condition
                )["ETag"]
            upload = self.client.create_multipart_upload(Bucket=bucket, Key=key, **headers)
            try:
                parts = self._send_parts(key, upload["UploadId"], data, size)
                return self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": parts},
                    **condition,
                )["ETag"]
            except BaseException:
                self._abort(key, upload["UploadId"])
                raise
        except ClientError as exc:
            if error_code(exc) in _SUPERSEDED:
                raise self.superseded(key) from None
            raise self._error(exc, f"write {self.describe(key)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"write {self.describe(key)}") from None

    def _send_parts(self, key: str, upload_id: str, data: BinaryIO, size: int) -> list[dict]:
        """Upload ``data`` in parts, ``UPLOAD_THREADS`` at a time, reading each when a thread
        is free (bounded memory); the parts' list for CompleteMultipartUpload."""
        part_bytes = max(PART_BYTES, math.ceil(size / MAX_PARTS))

        def send(number: int, body: bytes) -> dict:
            answer = self.client.upload_part(
                Bucket=self.integration.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        parts: list[dict] = []
        in_flight: deque[Future] = deque()
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="prism-s3-part") as pool:
            for number in range(1, math.ceil(size / part_bytes) + 1):
                if len(in_flight) == UPLOAD_THREADS:
                    parts.append(in_flight.popleft().result())
                in_flight.append(pool.submit(send, number, data.read(part_bytes)))
            parts.extend(future.result() for future in in_flight)
        return parts

    def _abort(self, key: str, upload_id: str) -> None:
        # If this fails too, the next sync's clean_up aborts it.
        with suppress(ClientError, BotoCoreError):
            self.client.abort_multipart_upload(
                Bucket=self.integration.bucket, Key=key, UploadId=upload_id
            )

    def published_version(self, location: str) -> str | None:
        try:
            return self._head(location)[0]
        except CredentialsError:
            # The spec's permission is s3:PutObject alone, without which HEAD is refused: take
            # the name for free. If an earlier attempt did publish, the conditional write is
            # refused and ``stored`` says which permission the redo needs.
            return None

    def stored(self, key: str) -> tuple[str | None, str | None]:
        try:
            return self._head(key)
        except CredentialsError:
            raise CredentialsError(
                f"integration '{self.integration.name}': {self.describe(key)} exists and this "
                f"sync cannot read it to tell whether an earlier attempt of the same batch wrote "
                f"it; give the credentials s3:GetObject on arn:aws:s3:::{self.integration.bucket}"
                f"/* to let a redo replace it"
            ) from None

    def _head(self, key: str) -> tuple[str | None, str | None]:
        """(ETag, attempt id) of ``key``; (None, None) if there is no such object."""
        try:
            head = self.client.head_object(Bucket=self.integration.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None, None
            raise self._error(exc, f"read {self.describe(key)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"read {self.describe(key)}") from None
        return head["ETag"], head.get("Metadata", {}).get(ATTEMPT_METADATA)

    def clean_up(self, partition: datetime, stale_after: float) -> None:
        """Abort the hour's multipart uploads begun over ``stale_after`` seconds ago by S3's own
        clock (the listing's Date): a crashed run's, whose parts S3 keeps, and bills, until
        aborted. Without s3:ListBucketMultipartUploads / s3:AbortMultipartUpload it does
        nothing: a bucket lifecycle rule (AbortIncompleteMultipartUpload) does it then."""
        bucket = self.integration.bucket
        prefix = self.folder_of(partition) + "/"
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                date = page["ResponseMetadata"]["HTTPHeaders"].get("date")
                now = parsedate_to_datetime(date) if date else None
                for upload in page.get("Uploads", []):
                    if now and upload["Initiated"] < now - timedelta(seconds=stale_after):
                        self._abort(upload["Key"], upload["UploadId"])
        except ClientError as exc:
            if error_code(exc) != "AccessDenied":
                raise self._error(exc, f"list the uploads under {self.describe(prefix)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"list the uploads under {self.describe(prefix)}") from None

    def remove(self, key: str, version: str) -> None:
        try:
            self.client.delete_object(Bucket=self.integration.bucket, Key=key, IfMatch=version)
        except ClientError as exc:
            code = error_code(exc)
            if code in {"404", "NoSuchKey", "NotFound"}:
                return
            if code in _SUPERSEDED:
                raise self.superseded(key) from None
            if code == "AccessDenied":
                # The export needs only s3:PutObject (the spec's permission): a validation
                # marker we may not delete is reported, not a failed validation.
                self._kept_marker = key
                return
            raise self._error(exc, f"delete {self.describe(key)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"delete {self.describe(key)}") from None

    def describe(self, key: str) -> str:
        return f"s3://{self.integration.bucket}/{key}"

    # -- Validate & Continue -----------------------------------------------------------------

    def validate(self) -> str:
        """The base's marker write and delete, with few attempts so that a wrong address fails
        in seconds; then the bucket's region against the configured one."""
        self._attempts, self._client, self._kept_marker = VALIDATE_ATTEMPTS, None, None
        try:
            message = super().validate()
            self._check_region()
        finally:
            self.close()
            self._attempts = EXPORT_ATTEMPTS
        if self._kept_marker:
            return (
                f"wrote {self.describe(self._kept_marker)}, so the export can write; it could "
                f"not delete it (no s3:DeleteObject, or no s3:GetObject, which a conditional "
                f"delete needs too; the export itself never deletes): delete the marker by hand"
            )
        return message

    def _check_region(self) -> None:
        integration = self.integration
        try:
            head = self.client.head_bucket(Bucket=integration.bucket)
        except ClientError:
            return  # s3:ListBucket is not required; the write above proved the bucket works
        actual = head.get("BucketRegion")
        if actual and actual != integration.region:
            raise DestinationError(
                f"integration '{integration.name}': bucket '{integration.bucket}' is in region "
                f"{actual}, not {integration.region}; set region: {actual}"
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- errors a user can act on ------------------------------------------------------------

    def _error(self, exc: Exception, action: str) -> PrismError:
        integration = self.integration
        where = f"integration '{integration.name}': cannot {action}"
        if isinstance(exc, NoCredentialsError):
            return CredentialsError(
                f"{where}: no AWS credentials were found; set access_key_id and "
                f"secret_access_key (as {{env: VAR}}) or give the process an AWS role"
            )
        if isinstance(exc, UNREACHABLE):
            if not integration.endpoint_url and integration.region not in _aws_regions():
                return DestinationError(
                    f"{where}: region '{integration.region}' is not an AWS region; set region "
                    f"to the bucket's region (e.g. us-east-1), as the S3 console shows it"
                )
            endpoint = integration.endpoint_url or f"the S3 endpoint of region {integration.region}"
            return DestinationError(
                f"{where}: {endpoint} cannot be reached ({type(exc).__name__}); check "
                f"endpoint_url, region and the network; the batch is redone on the next run"
            )
        if not isinstance(exc, ClientError):
            return DestinationError(f"{where}: {type(exc).__name__}: {exc}")
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        said = exc.response.get("Error", {}).get("Message") or code
        if code in KEY_REFUSED:
            keys = ", ".join(
                f"{field} (from ${ref.env})" if (ref := getattr(integration, field)) else field
                for field in ("access_key_id", "secret_access_key")
            )
            return CredentialsError(
                f"{where}: S3 refused the access key ({code}: {said}); check {keys}"
            )
        if code == "AccessDenied" or status == 403:
            return CredentialsError(
                f"{where}: access denied ({code}); the credentials need s3:PutObject (and "
                f"s3:DeleteObject) on arn:aws:s3:::{integration.bucket}/"
                f"{integration.prefix.strip('/') + '/' if integration.prefix.strip('/') else ''}*"
            )
        if code == "NoSuchBucket":
            return DestinationError(
                f"{where}: bucket '{integration.bucket}' does not exist; create it, or fix bucket"
            )
        if code in _WRONG_REGION or status == 301:
            actual = exc.response.get("Error", {}).get("Region") or exc.response.get(
                "ResponseMetadata", {}
            ).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            hint = f"set region: {actual}" if actual else "set region to the bucket's region"
            return DestinationError(
                f"{where}: bucket '{integration.bucket}' is not in region {integration.region}; "
                f"{hint}"
            )
        return DestinationError(
            f"{where}: S3 answered {status} {code} ({said}) after {self._attempts} attempts; "
            f"the batch is redone on the next run"
        )


def _aws_regions() -> set[str]:
    """Regions botocore knows in every partition (aws, aws-cn, aws-us-gov, …)."""
    session = boto3.session.Session()
    return {
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("s3", partition)
    }
