"""Typed, actionable errors: wrong credentials against an S3 endpoint that checks them, a
missing bucket, malformed URIs, an endpoint that is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.errors import AccessDenied, InvalidInput, KilnError, NotFound, Unavailable
from kiln.sources import open_source
from kiln.store import open_store
from store.conftest import AuthS3, free_port

KEY = "3" * 64


def wrong_secret(keys: dict[str, str]) -> dict[str, str]:
    return keys | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}


def unknown_key(keys: dict[str, str]) -> dict[str, str]:
    return keys | {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000"}


@pytest.mark.parametrize(("creds", "code"), [
    (unknown_key, "InvalidAccessKeyId"), (wrong_secret, "SignatureDoesNotMatch"),
    (None, "AccessDenied")])
def test_wrong_credentials_are_access_denied(auth_s3: AuthS3, creds: object, code: str,
                                             tmp_path: Path) -> None:
    keys = auth_s3.powerless if creds is None else creds(auth_s3.good)  # type: ignore[operator]
    store = open_store(f"s3://{auth_s3.bucket}/engines/", credentials=keys,
                       endpoint_url=auth_s3.endpoint)
    with pytest.raises(AccessDenied) as caught:
        store.has(KEY)
    message = str(caught.value)
    assert code in message
    assert f"s3://{auth_s3.bucket}/engines/" in message
    assert "check the credentials" in message
    assert not caught.value.retryable

    source = open_source(f"s3://{auth_s3.bucket}/weights/", credentials=keys,
                         endpoint_url=auth_s3.endpoint)
    with pytest.raises(AccessDenied, match=code) as caught:
        source.identity()
    assert f"s3://{auth_s3.bucket}/weights/" in str(caught.value)


def test_right_credentials_work(auth_s3: AuthS3, tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "rank0.engine").write_bytes(b"x" * 100)
    store = open_store(f"s3://{auth_s3.bucket}/engines/", credentials=auth_s3.good,
                       endpoint_url=auth_s3.endpoint)
    store.upload(KEY, tmp_path / "engine")
    assert store.list_keys() == [KEY]
    source = open_source(f"s3://{auth_s3.bucket}/weights/", credentials=auth_s3.good,
                         endpoint_url=auth_s3.endpoint)
    details = source.identity().details
    assert (details["objects"], details["bytes"], details["uploading"]) == (1, 2, 0)


def test_missing_bucket_is_not_found(auth_s3: AuthS3) -> None:
    store = open_store("s3://no-such-bucket/engines/", credentials=auth_s3.good,
                       endpoint_url=auth_s3.endpoint)
    with pytest.raises(NotFound, match=r"s3://no-such-bucket/engines/.*NoSuchBucket"):
        store.list_keys()
    with pytest.raises(NotFound, match=r"s3://no-such-bucket/engines/.*NoSuchBucket"):
        store.has(KEY)
    source = open_source("s3://no-such-bucket/w/", credentials=auth_s3.good,
                         endpoint_url=auth_s3.endpoint)
    with pytest.raises(NotFound, match=r"s3://no-such-bucket/w/.*NoSuchBucket"):
        source.identity()


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://", "not an S3 URI"), ("s3://B/", "not an S3 URI"), ("s3://a/", "not an S3 URI"),
    ("s3://bucket//x/", "not an S3 URI"), ("gs://bucket/", "not a store URI"),
    ("pvc://", "not a PVC URI"), ("pvc://claim/../etc", "not a PVC URI"),
    ("file://relative/path", "not a store URI"), ("", "not a store URI")])
def test_malformed_store_uris(uri: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        open_store(uri)
    assert repr(uri) in str(caught.value)


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://Bad_Bucket/w/", "not an S3 URI"), ("hf://only-org", "not a Hugging Face URI"),
    ("hf://org/name@", "not a Hugging Face URI"), ("pvc://", "not a PVC URI"),
    ("ftp://host/w/", "not a weights URI"), ("/abs/path", "not a weights URI")])
def test_malformed_source_uris(uri: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        open_source(uri)
    assert repr(uri) in str(caught.value)


def test_not_a_key_and_bad_blob_names(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    for bad in ("", "abc", "G" * 64, "../" + "1" * 61):
        with pytest.raises(InvalidInput, match="not an engine key"):
            store.has(bad)
    for name in ("", "../x", "a//b", "/abs"):
        with pytest.raises(InvalidInput, match="not a blob name"):
            store.put_blob(name, b"x")


def test_endpoint_down_is_unavailable_and_retryable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    creds = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1"}
    calls: list[tuple[str, object]] = [
        ("s3://engines/", lambda: open_store("s3://engines/", credentials=creds,
                                             endpoint_url=endpoint).has(KEY)),
        ("s3://weights/m/", lambda: open_source("s3://weights/m/", credentials=creds,
                                                endpoint_url=endpoint).identity())]
    for uri, call in calls:
        with pytest.raises(Unavailable) as caught:
            call()  # type: ignore[operator]
        assert caught.value.retryable
        assert uri in str(caught.value)
        assert isinstance(caught.value, KilnError)


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                  "ExpiredToken"])
def test_credential_error_codes_map_to_access_denied(code: str) -> None:
    """Codes some S3 implementations send that moto's server does not (ExpiredToken)."""
    from botocore.exceptions import ClientError

    from kiln.s3.client import translate

    response: Any = {"Error": {"Code": code, "Message": "no"},
                     "ResponseMetadata": {"HTTPStatusCode": 403}}
    error = ClientError(response, "ListObjectsV2")
    translated = translate(error, "list s3://engines/")
    assert isinstance(translated, AccessDenied)
    assert "check the credentials" in str(translated)
    assert not translated.retryable


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("SlowDown", 503, Unavailable), ("InternalError", 500, Unavailable),
    ("NoSuchBucket", 404, NotFound), ("InvalidBucketName", 400, InvalidInput)])
def test_other_error_codes(code: str, status: int, kind: type[KilnError]) -> None:
    from botocore.exceptions import ClientError

    from kiln.s3.client import translate

    response: Any = {"Error": {"Code": code, "Message": "m"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, "GetObject")
    assert type(translate(error, "get")) is kind
