"""One contract, two stores: S3 (moto's server over HTTP) and a filesystem path.

The S3 store runs with small parts and ranges (5 MiB, 1 MiB) so that multipart uploads and
ranged downloads happen on files of a few MiB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.contract.manifest import MANIFEST, MAX_MANIFEST
from kiln.errors import IntegrityError, NotFound, TooLarge
from kiln.s3.transfer import MIB, Transfers
from kiln.store import EngineStore, open_store
from kiln.store.fs import FileStore
from kiln.store.s3 import S3Store
from store.conftest import CuttingProxy

KEY = "1" * 64
OTHER = "2" * 64
SMALL = {"part_bytes": 5 * MIB, "range_bytes": MIB}


def small_transfers(store: EngineStore) -> EngineStore:
    if isinstance(store, S3Store):
        store._transfers = Transfers(store.client, concurrency=4, **SMALL)
    return store


@pytest.fixture(params=["s3", "fs"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "s3":
        yield f"s3://{request.getfixturevalue('bucket')}/team/"
    else:
        root = tmp_path / "store"
        root.mkdir()
        yield f"file://{root}"


@pytest.fixture
def open_it(store_uri: str, request: pytest.FixtureRequest) -> Any:
    """Opens another client of the same store (as another process would)."""
    def opener() -> EngineStore:
        endpoint = request.getfixturevalue("s3_endpoint") if store_uri.startswith("s3") else None
        return small_transfers(open_store(store_uri, endpoint_url=endpoint))
    return opener


@pytest.fixture
def store(open_it: Any) -> Iterator[EngineStore]:
    with open_it() as store:
        yield store


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    src = tmp_path / "engine"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"tp": 2}')
    (src / "rank0.engine").write_bytes(os.urandom(3 * MIB + 7))  # ranged download
    (src / "rank1.engine").write_bytes(os.urandom(1024))
    (src / "rank2.engine").write_bytes(os.urandom(11 * MIB + 3))  # multipart upload
    (src / "sub" / "tokenizer.json").write_text("{}")
    (src / "empty").write_bytes(b"")
    return src


def stored_files(store: EngineStore, key: str) -> list[str]:
    """Every object/file under the engine's directory, as the backend sees it."""
    if isinstance(store, S3Store):
        listed = store.client.list_objects_v2(Bucket=store.bucket,
                                              Prefix=f"{store.prefix}engines/{key}/")
        return [o["Key"] for o in listed.get("Contents", [])]
    assert isinstance(store, FileStore)
    return [str(p) for p in (store.root / "engines" / key).rglob("*") if p.is_file()]


def test_upload_then_download_round_trips_with_checksums(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    assert not store.has(KEY)
    assert store.read_manifest(KEY) is None
    manifest = store.upload(KEY, engine, inputs={"a": 1}, versions={"tensorrt_llm": "1.2.1"},
                            build_seconds=3.0, progress=lambda d, t: seen.append((d, t)))
    assert store.has(KEY)
    assert store.read_manifest(KEY) == manifest
    assert manifest.key == KEY
    assert manifest.inputs == {"a": 1}
    assert manifest.versions == {"tensorrt_llm": "1.2.1"}
    assert manifest.build_seconds == 3.0
    assert sorted(f.path for f in manifest.files) == [
        "config.json", "empty", "rank0.engine", "rank1.engine", "rank2.engine",
        "sub/tokenizer.json"]
    total = sum(p.stat().st_size for p in engine.rglob("*") if p.is_file())
    assert manifest.total_bytes == total
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    out = tmp_path / "out"
    down: list[tuple[int, int]] = []
    assert store.download(KEY, out, progress=lambda d, t: down.append((d, t))) == manifest
    assert down[-1] == (total, total)
    for entry in manifest.files:
        assert (out / entry.path).read_bytes() == (engine / entry.path).read_bytes()
    assert (out / MANIFEST).is_file()
    assert store.list_keys() == [KEY]
    assert store.engine_uri(KEY) == f"{store.uri}engines/{KEY}/"


def test_manifest_json_is_camel_case_and_complete(store: EngineStore, engine: Path,
                                                  tmp_path: Path) -> None:
    import json

    store.upload(KEY, engine, inputs={"schema": 1}, versions={"tensorrt": "10.11"},
                 build_seconds=1.5)
    store.download(KEY, tmp_path / "out")
    data = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert {"schemaVersion", "key", "inputs", "versions", "files", "totalBytes",
            "buildSeconds", "createdAt"} <= set(data)
    assert data["schemaVersion"] == 1
    assert set(data["files"][0]) == {"path", "size", "sha256"}


def test_second_writer_of_a_key_gets_the_first_engine(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    first = store.upload(KEY, engine)
    (engine / "rank1.engine").write_bytes(b"different bytes")
    second = store.upload(KEY, engine)
    assert second == first
    store.download(KEY, tmp_path / "out")  # still whole and consistent


def test_writers_racing_for_a_key_leave_one_whole_engine(
        store: EngineStore, open_it: Any, engine: Path, tmp_path: Path) -> None:
    """Writer A is overtaken mid-upload by writer B: B's commit wins, A gets B's manifest,
    the store holds B's files, and A's files are garbage."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "rank0.engine").write_bytes(b"B" * 5000)
    b_manifest: list[Any] = []

    def overtaken(done: int, total: int) -> None:
        if not b_manifest:
            with open_it() as b:
                b_manifest.append(b.upload(KEY, other))

    a = store.upload(KEY, engine, progress=overtaken)
    assert a == b_manifest[0]
    assert [f.path for f in a.files] == ["rank0.engine"]
    assert store.collect_garbage(older_than_seconds=0) != []  # A's files
    store.download(KEY, tmp_path / "out")
    assert (tmp_path / "out" / "rank0.engine").read_bytes() == b"B" * 5000
    assert store.collect_garbage(older_than_seconds=0) == []  # the engine is not garbage
    assert store.has(KEY)


def store_put_raw(store: EngineStore, key: str, upload: str, rel: str, data: bytes) -> None:
    """Overwrite one stored file behind the store's back."""
    if isinstance(store, S3Store):
        store.client.put_object(Bucket=store.bucket,
                                Key=f"{store.prefix}engines/{key}/{upload}/{rel}", Body=data)
    else:
        assert isinstance(store, FileStore)
        (store.root / "engines" / key / upload / rel).write_bytes(data)


@pytest.mark.parametrize(("name", "change"), [
    ("rank1.engine", lambda data: b"flipped" + data[7:]),  # one GET
    ("rank0.engine", lambda data: data[:-1] + bytes([data[-1] ^ 1])),  # ranged, same size
    ("rank2.engine", lambda data: data[: 2 * MIB]),  # ranged, shorter than the manifest says
])
def test_corrupt_file_fails_naming_file_and_both_digests(
        store: EngineStore, engine: Path, tmp_path: Path, name: str, change: Any) -> None:
    import hashlib

    manifest = store.upload(KEY, engine)
    entry = next(f for f in manifest.files if f.path == name)
    corrupt = change((engine / name).read_bytes())
    store_put_raw(store, KEY, manifest.upload, name, corrupt)
    with pytest.raises(IntegrityError) as caught:
        store.download(KEY, tmp_path / "out")
    message = str(caught.value)
    assert name in message
    assert entry.sha256 in message
    assert hashlib.sha256(corrupt).hexdigest() in message
    assert not (tmp_path / "out" / name).exists()  # a corrupt file is not left behind
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_upload_failing_half_way_is_invisible_and_collected(
        store: EngineStore, engine: Path) -> None:
    def fail_half_way(done: int, total: int) -> None:
        if done > total // 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        store.upload(KEY, engine, progress=fail_half_way)
    assert not store.has(KEY)
    assert store.read_manifest(KEY) is None
    assert store.list_keys() == []
    assert store.collect_garbage(older_than_seconds=3600) == []  # too young: maybe in flight
    removed = store.collect_garbage(older_than_seconds=0)
    assert removed
    assert all(r.startswith(KEY + "/") for r in removed)
    assert stored_files(store, KEY) == []
    store.upload(KEY, engine)
    assert store.has(KEY)


def test_upload_killed_by_sigkill_leaves_nothing_readable(
        store: EngineStore, store_uri: str, s3_endpoint: str, engine: Path) -> None:
    """A real process, killed mid-upload (S3: with a multipart upload in flight)."""
    (engine / "rank3.engine").write_bytes(os.urandom(40 * MIB))
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from kiln.store import open_store
        from kiln.store.s3 import S3Store
        from kiln.s3.transfer import Transfers
        store = open_store({store_uri!r}, endpoint_url={s3_endpoint!r})
        if isinstance(store, S3Store):
            store._transfers = Transfers(store.client, concurrency=2, part_bytes=5 << 20)
            store.workers = 1
        def progress(done, total):
            if done > total // 3:
                os.kill(os.getpid(), signal.SIGKILL)
        store.upload({KEY!r}, Path({str(engine)!r}), progress=progress)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert stored_files(store, KEY) or isinstance(store, S3Store)  # something was written
    assert not store.has(KEY)
    assert store.read_manifest(KEY) is None
    assert store.list_keys() == []
    if isinstance(store, S3Store):
        pending = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert pending.get("Uploads"), "killed with a multipart upload in flight"
    assert store.collect_garbage(older_than_seconds=0)
    assert stored_files(store, KEY) == []
    if isinstance(store, S3Store):
        assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_delete_and_blobs(store: EngineStore, engine: Path) -> None:
    store.upload(KEY, engine)
    store.upload(OTHER, engine)
    store.delete(KEY)
    assert store.list_keys() == [OTHER]
    assert not store.has(KEY)
    assert stored_files(store, KEY) == []
    store.delete(KEY)  # deleting what is gone is fine
    assert store.get_blob("timing/H100/10.11.cache") is None
    store.put_blob("timing/H100/10.11.cache", b"\x00cache")
    assert store.get_blob("timing/H100/10.11.cache") == b"\x00cache"
    store.put_blob("timing/H100/10.11.cache", b"v2")
    assert store.get_blob("timing/H100/10.11.cache") == b"v2"
    assert store.list_keys() == [OTHER]  # blobs are not engines


def test_missing_engine_download_is_not_found(store: EngineStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no manifest"):
        store.download(KEY, tmp_path / "out")


def test_missing_store_directory_is_not_found() -> None:
    with pytest.raises(NotFound, match="is the volume mounted"):
        open_store("file:///nonexistent/kiln/store")


def test_pvc_store_lives_under_the_mount_root(tmp_path: Path, engine: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_PVC_ROOT", str(tmp_path / "mnt"))
    (tmp_path / "mnt" / "engines-pvc" / "team").mkdir(parents=True)
    store = open_store("pvc://engines-pvc/team")
    assert store.uri == "pvc://engines-pvc/team/"
    store.upload(KEY, engine)
    assert (tmp_path / "mnt" / "engines-pvc" / "team" / "engines" / KEY / MANIFEST).is_file()


def test_download_resumes_after_broken_connections(
        bucket: str, s3_endpoint: str, engine: Path, tmp_path: Path) -> None:
    with small_transfers(open_store(f"s3://{bucket}/team/", endpoint_url=s3_endpoint)) as s:
        manifest = s.upload(KEY, engine)
    broken: set[tuple[str, str | None]] = set()

    def once_per_request(path: str, byte_range: str | None) -> bool:
        """Break each first request (whole object, or a range at a MiB boundary) once; the
        resumed ones (from wherever the break was) go through."""
        start = int(byte_range.removeprefix("bytes=").split("-")[0]) if byte_range else 0
        if (path, byte_range) in broken or start % MIB:
            return False
        broken.add((path, byte_range))
        return True

    with CuttingProxy(s3_endpoint, once_per_request) as proxy:
        through = small_transfers(open_store(f"s3://{bucket}/team/", endpoint_url=proxy.url))
        with through:
            assert through.download(KEY, tmp_path / "out") == manifest
    assert proxy.cuts >= 5  # every file, and every range of the ranged ones
    for entry in manifest.files:
        assert (tmp_path / "out" / entry.path).read_bytes() == (engine / entry.path).read_bytes()


def test_delete_leaves_a_concurrent_rebuild_whole(store: EngineStore, engine: Path,
                                                   tmp_path: Path) -> None:
    """GC deletes an engine while its key is being rebuilt: the rebuild's files (and, on
    S3, its unfinished multipart upload) stay, and its manifest then commits a whole engine."""
    old = store.upload(KEY, engine)
    (engine / "rank1.engine").write_bytes(os.urandom(1024))
    rebuild = "rebuild0000000000"
    if isinstance(store, FileStore):
        (store.root / "engines" / KEY / rebuild).mkdir()
    store_put_raw(store, KEY, rebuild, "config.json", (engine / "config.json").read_bytes())
    multipart = None
    if isinstance(store, S3Store):
        name = f"{store.prefix}engines/{KEY}/{rebuild}/rank2.engine"
        multipart = store.client.create_multipart_upload(Bucket=store.bucket,
                                                         Key=name)["UploadId"]
    assert store.delete(KEY)
    left = stored_files(store, KEY)
    assert left and all(f"/{rebuild}/" in name for name in left), left
    assert not any(f"/{old.upload}/" in name for name in left)
    if isinstance(store, S3Store):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        assert multipart in [u["UploadId"] for u in uploads]
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=name, UploadId=multipart)
    new = store.upload(KEY, engine, upload_id=rebuild)  # the rebuild commits
    store.download(KEY, tmp_path / "out")
    assert new.upload == rebuild
    assert store.collect_garbage(older_than_seconds=0) == []
    assert store.delete(KEY) and not store.has(KEY) and stored_files(store, KEY) == []
    assert not store.delete(KEY)


def test_delete_keeps_a_manifest_replaced_after_it_was_read(
        store: EngineStore, engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest deleted is the one read just before; one committed in between stays (on
    S3, the delete is conditional on the manifest's ETag)."""
    if not isinstance(store, S3Store):
        pytest.skip("a filesystem's rename takes exactly the manifest it removes")
    store.upload(KEY, engine)
    other = store.upload(OTHER, engine)
    get = store.client.get_object

    def replaced_after_read(**kwargs: Any) -> Any:
        found = get(**kwargs)
        if kwargs["Key"].endswith(f"{KEY}/{MANIFEST}"):
            store.client.put_object(Bucket=store.bucket, Key=kwargs["Key"],
                                    Body=other.model_copy(update={"key": KEY}).to_json())
        return found

    monkeypatch.setattr(store.client, "get_object", replaced_after_read)
    assert not store.delete(KEY)
    monkeypatch.undo()
    assert store.has(KEY)


def test_the_used_marker_says_how_often_its_writer_marks(store: EngineStore,
                                                         engine: Path) -> None:
    store.upload(KEY, engine)
    assert store.last_used(KEY) is None
    assert store.mark_used(KEY, "cluster-a", every=600.0)
    found = store.last_used(KEY)
    assert found is not None and found[0] < 60 and found[1] == 600.0
    assert not store.mark_used(KEY, "cluster-a", unless_within=60, every=600.0)
    assert store.mark_used(KEY, "old-operator")
    assert (found := store.last_used(KEY)) is not None and found[1] is None


def test_a_damaged_engine_set_aside_keeps_every_byte_and_is_gone_from_engines(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    import hashlib

    manifest = store.upload(KEY, engine)
    store.write_envelope(KEY, b'{"signed": true}')
    before = store.read_manifest_bytes(KEY) or b""
    assert store.file_sizes(KEY, manifest.upload) == {f.path: f.size for f in manifest.files}
    corrupt = b"x" + (engine / "rank2.engine").read_bytes()[1:]
    store_put_raw(store, KEY, manifest.upload, "rank2.engine", corrupt)
    assert store.file_sha256(KEY, manifest.upload, "rank2.engine") == hashlib.sha256(
        corrupt).hexdigest()
    assert store.file_sha256(KEY, manifest.upload, "nothing") is None
    store.upload(OTHER, engine)

    where = store.set_aside(KEY, before, {"found": "rank2.engine: its sha256 is ..."})
    assert where == f"{store.uri}damaged/{KEY}/{manifest.upload}/"
    assert not store.has(KEY) and store.read_envelope(KEY) is None
    assert stored_files(store, KEY) == []
    assert store.list_keys() == [OTHER]  # nothing else moved, and it is no engine
    assert store.collect_garbage(0) == []  # nor garbage: kept until someone deletes it
    got = tmp_path / "aside"
    if isinstance(store, S3Store):
        prefix = f"{store.prefix}damaged/{KEY}/{manifest.upload}/"
        for obj in store.client.list_objects_v2(Bucket=store.bucket,
                                                Prefix=prefix)["Contents"]:
            target = got / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.client.get_object(Bucket=store.bucket,
                                                       Key=obj["Key"])["Body"].read())
    else:
        assert isinstance(store, FileStore)
        got = store.root / "damaged" / KEY / manifest.upload
    assert (got / "manifest.json").read_bytes() == before
    assert (got / "provenance.dsse.json").read_bytes() == b'{"signed": true}'
    assert "rank2.engine" in (got / "finding.json").read_text()
    assert (got / "files" / "rank2.engine").read_bytes() == corrupt
    for entry in manifest.files:
        if entry.path != "rank2.engine":
            assert (got / "files" / entry.path).read_bytes() == (engine / entry.path).read_bytes()


def test_a_manifest_too_large_to_be_kilns_is_refused_unread_and_replaced(
        store: EngineStore, engine: Path) -> None:
    store.upload(KEY, engine)
    store._put_object(KEY, MANIFEST, b"{" + b" " * (MAX_MANIFEST + 1) + b"}")
    with pytest.raises(TooLarge, match=f"{MAX_MANIFEST + 3} bytes"):
        store.read_manifest_bytes(KEY)
    assert store.read_manifest(KEY) is None and not store.has(KEY)
    replaced = store.upload(KEY, engine)  # counts as absent: a build's upload replaces it
    assert store.read_manifest(KEY) == replaced
    store.put_blob("gc-report.json", b"x" * 100)
    with pytest.raises(TooLarge):
        store.get_blob("gc-report.json", 99)
    assert store.get_blob("gc-report.json", 100) == b"x" * 100


def test_a_download_writes_nothing_outside_its_destination(
        store: EngineStore, engine: Path, tmp_path: Path) -> None:
    manifest = store.upload(KEY, engine)
    dest = tmp_path / "out" / "engine"
    dest.mkdir(parents=True)
    (dest / "sub").symlink_to(tmp_path)  # a link on the way out
    with pytest.raises(IntegrityError, match=r"sub/tokenizer\.json"):
        store.download(KEY, dest, manifest=manifest)
    assert not (tmp_path / "tokenizer.json").exists()
