"""S3 plumbing shared by the engine store and the S3 weight source: URIs, clients, errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from kiln.errors import AccessDenied, InvalidInput, KilnError, NotFound, Unavailable

_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/((?:[^/\s]+/)*)$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "403", "AllAccessDisabled"}
_MISSING = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` → (bucket, prefix); the prefix ends with ``/`` or is empty."""
    if not uri.endswith("/"):
        uri += "/"
    match = _URI.match(uri)
    if match is None:
        raise InvalidInput(f"{uri!r} is not an S3 URI such as s3://bucket/prefix/")
    return match.group(1), match.group(2)


def client(credentials: Mapping[str, str] | None = None,
           endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; ``credentials`` may carry AWS_* keys (from a Secret)."""
    creds = dict(credentials or {})
    session = boto3.session.Session(
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=creds.get("AWS_SESSION_TOKEN"),
        region_name=creds.get("AWS_REGION") or creds.get("AWS_DEFAULT_REGION"),
    )
    config = Config(retries={"max_attempts": 4, "mode": "standard"},
                    max_pool_connections=32, connect_timeout=10, read_timeout=120)
    return session.client("s3", endpoint_url=endpoint_url or creds.get("AWS_ENDPOINT_URL"),
                          config=config)


def translate(error: Exception, what: str) -> KilnError:
    """A boto error as one of kiln's, with a message that says what was attempted."""
    if isinstance(error, KilnError):
        return error
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = info.get("Message") or code
        if code in _MISSING:
            return NotFound(f"{what}: {detail} ({code})")
        if code in _DENIED:
            return AccessDenied(f"{what}: {detail} ({code}); check the credentials")
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return Unavailable(f"{what}: {detail} ({code})")
        return InvalidInput(f"{what}: {detail} ({code})")
    if isinstance(error, NoCredentialsError):
        return AccessDenied(f"{what}: no S3 credentials found")
    if isinstance(error, EndpointConnectionError | ReadTimeoutError | ConnectionError):
        return Unavailable(f"{what}: {error}")
    return Unavailable(f"{what}: {type(error).__name__}: {error}")
