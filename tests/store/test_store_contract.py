"""One contract, two stores: S3 (moto's server over HTTP) and a filesystem path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import AccessDenied, IntegrityError, InvalidInput, NotFound, Unavailable
from kiln.store import EngineStore, open_store
from kiln.store.manifest import MANIFEST

KEY = "1" * 64
OTHER = "2" * 64


@pytest.fixture(params=["s3", "fs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineStore]:
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        yield open_store(f"s3://{bucket}/team/", endpoint_url=endpoint)
    else:
        root = tmp_path / "store"
        root.mkdir()
        yield open_store(f"file://{root}")


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    src = tmp_path / "engine"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"tp": 2}')
    (src / "rank0.engine").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (src / "rank1.engine").write_bytes(os.urandom(1024))
    (src / "sub" / "tokenizer.json").write_text("{}")
    return src


def test_upload_then_download_round_trips_with_checksums(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    assert not store.has(KEY)
    manifest = store.upload(KEY, engine, inputs={"a": 1}, versions={"tensorrt_llm": "1.2.1"},
                            build_seconds=3.0, progress=lambda d, t: seen.append((d, t)))
    assert store.has(KEY)
    assert store.read_manifest(KEY) == manifest
    assert sorted(f.path for f in manifest.files) == [
        "config.json", "rank0.engine", "rank1.engine", "sub/tokenizer.json"]
    assert manifest.total_bytes == sum(p.stat().st_size for p in engine.rglob("*")
                                       if p.is_file())
    assert seen[-1] == (manifest.total_bytes, manifest.total_bytes)
    out = tmp_path / "out"
    store.download(KEY, out)
    for entry in manifest.files:
        assert (out / entry.path).read_bytes() == (engine / entry.path).read_bytes()
    assert (out / MANIFEST).is_file()
    assert store.list_keys() == [KEY]
    assert store.engine_uri(KEY).endswith(f"engines/{KEY}/")


def test_second_writer_of_a_key_gets_the_first_engine(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    first = store.upload(KEY, engine)
    (engine / "rank0.engine").write_bytes(b"different bytes")
    second = store.upload(KEY, engine)
    assert second == first
    store.download(KEY, tmp_path / "out")  # still whole and consistent


def test_corrupt_file_fails_naming_file_and_both_digests(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    manifest = store.upload(KEY, engine)
    entry = next(f for f in manifest.files if f.path == "rank1.engine")
    store_put_raw(store, KEY, manifest.upload, "rank1.engine", b"flipped")
    with pytest.raises(IntegrityError) as caught:
        store.download(KEY, tmp_path / "out")
    message = str(caught.value)
    assert "rank1.engine" in message
    assert entry.sha256 in message
    assert "sha256 " in message


def store_put_raw(store: EngineStore, key: str, upload: str, rel: str, data: bytes) -> None:
    """Overwrite one stored file behind the store's back."""
    from kiln.store.fs import FileStore
    from kiln.store.s3 import S3Store

    if isinstance(store, S3Store):
        store.client.put_object(Bucket=store.bucket,
                                Key=f"{store.prefix}engines/{key}/{upload}/{rel}", Body=data)
    else:
        assert isinstance(store, FileStore)
        (store.root / "engines" / key / upload / rel).write_bytes(data)


def test_uncommitted_upload_is_invisible_and_collected(
        store: EngineStore, engine: Path) -> None:
    def fail_half_way(done: int, total: int) -> None:
        if done > total // 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.upload(KEY, engine, progress=fail_half_way)
    assert not store.has(KEY)
    assert store.read_manifest(KEY) is None
    assert store.list_keys() == []
    assert store.collect_garbage(older_than_seconds=3600) == []  # too young: maybe in flight
    removed = store.collect_garbage(older_than_seconds=0)
    assert removed
    assert all(r.startswith(KEY + "/") for r in removed)
    store.upload(KEY, engine)
    assert store.has(KEY)


def test_delete_and_blobs(store: EngineStore, engine: Path) -> None:
    store.upload(KEY, engine)
    store.upload(OTHER, engine)
    store.delete(KEY)
    assert store.list_keys() == [OTHER]
    assert store.get_blob("timing/H100/10.11.cache") is None
    store.put_blob("timing/H100/10.11.cache", b"\x00cache")
    assert store.get_blob("timing/H100/10.11.cache") == b"\x00cache"


def test_not_a_key_is_refused(store: EngineStore) -> None:
    with pytest.raises(InvalidInput, match="not an engine key"):
        store.has("../../etc")


def test_missing_engine_download_is_not_found(store: EngineStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no manifest"):
        store.download(KEY, tmp_path / "out")


def test_upload_killed_by_sigkill_leaves_nothing_readable(
        bucket: str, s3_endpoint: str, engine: Path, tmp_path: Path) -> None:
    big = engine / "rank2.engine"
    big.write_bytes(os.urandom(200 * 1024 * 1024))
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from kiln.store import open_store
        store = open_store("s3://{bucket}/team/", endpoint_url="{s3_endpoint}")
        def progress(done, total):
            if done > total // 3:
                os.kill(os.getpid(), signal.SIGKILL)
        store.upload("{KEY}", Path("{engine}"), progress=progress)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL
    store = open_store(f"s3://{bucket}/team/", endpoint_url=s3_endpoint)
    assert not store.has(KEY)
    assert store.list_keys() == []
    assert store.collect_garbage(older_than_seconds=0)


def test_clear_typed_errors(s3_endpoint: str, bucket: str) -> None:
    with pytest.raises(NotFound, match="NoSuchBucket"):
        open_store("s3://no-such-bucket-here/", endpoint_url=s3_endpoint).list_keys()
    with pytest.raises(InvalidInput, match="not an S3 URI"):
        open_store("s3://B/", endpoint_url=s3_endpoint)
    with pytest.raises(InvalidInput, match="not a store URI"):
        open_store("gs://bucket/")
    with pytest.raises(NotFound, match="does not exist"):
        open_store("file:///nonexistent/kiln/store")


def test_store_outage_is_unavailable_and_retryable() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store("s3://engines/", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(Unavailable) as caught:
        store.read_manifest(KEY)
    assert caught.value.retryable
    assert "s3://engines/" in str(caught.value)


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId",
                                  "SignatureDoesNotMatch"])
def test_credential_errors_are_access_denied(code: str) -> None:
    """moto's server accepts any key, so the mapping is checked on botocore's own error."""
    from botocore.exceptions import ClientError

    from kiln.store.s3client import translate

    error = ClientError({"Error": {"Code": code, "Message": "no"},
                         "ResponseMetadata": {"HTTPStatusCode": 403}}, "ListObjectsV2")
    translated = translate(error, "list s3://engines/")
    assert isinstance(translated, AccessDenied)
    assert "check the credentials" in str(translated)
    assert not translated.retryable
