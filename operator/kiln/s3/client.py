"""S3 plumbing shared by the engine store and the S3 weight source: URIs, clients, errors."""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from kiln.errors import AccessDenied, InvalidInput, KilnError, NotFound, Unavailable, quoted

_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/((?:[^/\s]+/)*)$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "403", "AllAccessDisabled",
           "InvalidSecurity"}
_MISSING = {"NoSuchBucket", "NoSuchKey", "NoSuchUpload", "404", "NotFound"}
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
POOL_CONNECTIONS = 32
"""Enough for the store's part pool plus the files it reads at once."""
CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS = 5, 30, 2
"""Seconds to connect, seconds without a byte read, attempts per call."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` → (bucket, prefix); the prefix ends with ``/`` or is empty."""
    if not uri.endswith("/"):
        uri += "/"
    match = _URI.match(uri)
    if match is None:
        raise InvalidInput(f"{uri!r} is not an S3 URI such as s3://bucket/prefix/ (bucket: "
                           "3-63 lowercase letters, digits, dots or dashes)")
    return match.group(1), match.group(2)


def client(credentials: Mapping[str, str] | None = None,
           endpoint_url: str | None = None, *, ambient: bool = True) -> Any:
    """A boto3 S3 client; ``credentials`` may carry AWS_* keys (from a Secret).

    Without them boto3's own chain applies (environment, web identity, instance profile),
    unless ``ambient`` is false: then requests go unsigned (an endpoint a tenant chose never
    sees the operator's own key id);
    the endpoint is ``endpoint_url``, else ``AWS_ENDPOINT_URL`` from ``credentials``, else
    boto3's (which honours ``AWS_ENDPOINT_URL`` in the environment). Clients are shared (they
    are thread-safe) and made from one session: a client of its own session costs ~13 MiB.
    """
    creds = dict(credentials or {})
    unsigned = not ambient and not creds.get("AWS_ACCESS_KEY_ID")
    return _client(tuple(sorted(creds.items())), endpoint_url or creds.get("AWS_ENDPOINT_URL"),
                   os.environ.get("AWS_ENDPOINT_URL"), unsigned)


_session_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


@functools.lru_cache(maxsize=32)
def _client(creds: tuple[tuple[str, str], ...], endpoint_url: str | None,
            env_endpoint: str | None, unsigned: bool = False) -> Any:
    """One client per credentials and endpoint (``env_endpoint`` only keys the cache)."""
    given = dict(creds)
    # No SigV4 hash of request bodies (boto3 skips it over HTTPS already): every upload
    # carries a CRC32 checksum the server verifies, and engine files are sha256-checked end to
    # end; over plain HTTP (an in-cluster MinIO, moto) it saves one sha256 pass per byte.
    # Bounded: an endpoint that accepts and never answers costs a caller at most about
    # (connect or read timeout) x attempts, not minutes (the controllers back off after).
    config = Config(retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                    max_pool_connections=POOL_CONNECTIONS, connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT, s3={"payload_signing_enabled": False},
                    **({"signature_version": UNSIGNED} if unsigned else {}))
    with _session_lock:  # a boto3 session is not thread-safe
        return _session().client(
            "s3", endpoint_url=endpoint_url, config=config,
            aws_access_key_id=given.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=given.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=given.get("AWS_SESSION_TOKEN"),
            region_name=given.get("AWS_REGION") or given.get("AWS_DEFAULT_REGION"))


def error_code(error: ClientError) -> str:
    """The S3 error code of a ``ClientError`` (``NoSuchKey``, ``PreconditionFailed``, ...)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def translate(error: Exception, what: str) -> KilnError:
    """A boto error as one of kiln's, with a message that says what was attempted."""
    if isinstance(error, KilnError):
        return error
    if isinstance(error, ClientError):
        code = error_code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = quoted(code, 64)
        detail = quoted(error.response.get("Error", {}).get("Message") or code)
        if code in _MISSING:
            return NotFound(f"{what}: {detail} ({code})")
        if code in _DENIED:
            return AccessDenied(f"{what}: {detail} ({code}); check the credentials and the "
                                "bucket policy")
        if status >= 500 or code in _BUSY:
            return Unavailable(f"{what}: {detail} ({code})")
        return InvalidInput(f"{what}: {detail} ({code})")
    if isinstance(error, NoCredentialsError):
        return AccessDenied(f"{what}: no S3 credentials found (set credentialsSecret, or "
                            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(error, EndpointConnectionError | ReadTimeoutError | ConnectionError):
        return Unavailable(f"{what}: {quoted(error)}")
    return Unavailable(f"{what}: {type(error).__name__}: {quoted(error)}")
