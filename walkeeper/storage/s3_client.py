"""The boto3 side of the S3 backend (storage/s3.py): the SDK check, the client, botocore errors mapped to
walkeeper's, and a GET body as a stream. boto3 and botocore are imported only inside these functions, so
importing this module costs nothing until an ``s3://`` repository is used.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable
from typing import Any

from walkeeper.core.config import S3Config
from walkeeper.core.errors import AlreadyExists, ConfigError, NotFound, StorageError, TransientError

TRANSIENT_CODES = {
    "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "ServiceUnavailable", "InternalError", "OperationAborted",
    "ConditionalRequestConflict", "TooManyRequests",
}
_DENIED_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId",
}


def require_sdk() -> None:
    """Refuse an s3:// repository up front when boto3 or botocore is missing.

    Checked when the storage is opened (find_spec imports nothing), because botocore is imported in
    several places, the first of which is not always the client's construction.
    """
    import importlib.util

    missing = [name for name in ("boto3", "botocore") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"an s3:// repository needs {' and '.join(missing)}, which this Python does not have",
            hint=f"pip install 'walkeeper[s3]' into {sys.prefix}",
        )


def _import_boto3() -> Any:
    try:
        import boto3
    except ModuleNotFoundError:
        require_sdk()
        raise
    return boto3


def make_client(settings: S3Config, url: str) -> Any:
    """A boto3 S3 client with walkeeper's timeouts and no retry of its own (importing boto3 now)."""
    boto3 = _import_boto3()
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError

    s = settings
    config = BotoConfig(
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        # No retry inside botocore: one retry policy, ours ([retry], RetryingStorage and _retrying), so that
        # a call's worst case is attempts x (connect_timeout + read_timeout) + backoff, not that times
        # botocore's own attempts. (botocore's "max_attempts" counts retries; total_max_attempts counts
        # every attempt, the first included: 1 = no retry.) A dropped keep-alive connection is a
        # TransientError like any other.
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": s.addressing_style},
        max_pool_connections=max(10, s.max_concurrency + 2),
        # Checksums only when an operation requires them: S3-compatible stores reject the newer defaults.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        session = boto3.session.Session(profile_name=s.profile, region_name=s.region)
        return session.client("s3", endpoint_url=s.endpoint_url, config=config)
    except BotoCoreError as exc:
        raise ConfigError(f"cannot set up the S3 client for {url}: {exc}") from None



def map_error(exc: Exception, action: str, key: str | None, *, url: str, bucket: str, settings: S3Config
              ) -> StorageError:
    """Translate a botocore failure into our hierarchy; NotFound only for a missing object."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    where = f"{url}/{key}" if key else url
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = err.get("Message") or code
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code in ("404", "")):
            return NotFound(f"{key} not found in {url}")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {bucket} does not exist ({action} {where})",
                                hint="create the bucket or fix repo; check [s3] endpoint_url and region")
        if code in ("PreconditionFailed",) or status == 412:
            return AlreadyExists(f"object {key} already exists")
        if code in _DENIED_CODES or status == 403:
            return StorageError(
                f"access denied while {action} {where}: {code}: {message}",
                hint="check the credentials boto3 finds (AWS_PROFILE, env, instance role) and that the "
                     "IAM policy allows s3:GetObject, s3:PutObject, s3:ListBucket, s3:DeleteObject",
            )
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"S3 error while {action} {where}: {code}: {message}")
        return StorageError(f"S3 error while {action} {where}: {code}: {message}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"no usable AWS credentials for {url}: {exc}",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, [s3] profile, or an instance role for the "
                 "user running PostgreSQL",
        )
    endpoint = settings.endpoint_url or "the S3 endpoint"
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"no answer from {endpoint} within [s3] read_timeout = "
                              f"{settings.read_timeout:g}s while {action} {where}")
    if isinstance(exc, ConnectTimeoutError):
        return TransientError(f"cannot connect to {endpoint} within [s3] connect_timeout = "
                              f"{settings.connect_timeout:g}s while {action} {where}")
    if isinstance(exc, ConnectionError | HTTPClientError | OSError):
        return TransientError(f"network error while {action} {where} ({endpoint}): {exc}")
    return StorageError(f"S3 failure while {action} {where}: {exc}")


class Body(io.RawIOBase):
    """A GET response body as a raw stream whose network errors are our errors."""

    def __init__(self, body: Any, error: Callable[[Exception, str, str], StorageError], key: str) -> None:
        self._body = body
        self._error = error
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            # IncompleteReadError (a short body) lands here too: never a silent truncation.
            raise self._error(exc, "reading", self._key) from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()
