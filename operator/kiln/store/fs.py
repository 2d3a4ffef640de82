"""The engine store on a filesystem path (a mounted PVC, or a local directory)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from kiln.contract import layout
from kiln.contract.key import short_key
from kiln.contract.manifest import MANIFEST, MAX_MANIFEST, USED, FileEntry, Manifest
from kiln.errors import InvalidInput, NotFound, TooLarge
from kiln.store.base import CHUNK, Count, EngineStore


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(EngineStore):
    """``<root>/engines/<key>/<upload>/<files>`` and ``<root>/engines/<key>/manifest.json``.

    The manifest is committed with ``os.link`` of a fully written (and fsynced) file: atomic,
    and it fails when a manifest exists, so the first writer wins.
    """

    def __init__(self, root: Path, uri: str | None = None) -> None:
        if not root.is_dir():
            raise NotFound(f"engine store directory {root} does not exist (is the volume "
                           "mounted?)")
        self.root = root
        self.uri = uri or f"file://{root}/"

    def _dir(self, key: str) -> Path:
        return self.root / layout.ENGINES / key

    def _aside(self, key: str, upload: str) -> Path:
        return self.root / layout.DAMAGED / key / upload

    def _put_file(self, key: str, upload: str, rel: str, path: Path, count: Count) -> str:
        target = self._dir(key) / upload / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with path.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                count(len(chunk))
            dst.flush()
            os.fsync(dst.fileno())
        return digest.hexdigest()

    def _get_file(self, key: str, upload: str, entry: FileEntry, dest: Path,
                  count: Count) -> str:
        digest = hashlib.sha256()
        try:
            src = (self._dir(key) / upload / entry.path).open("rb")
        except FileNotFoundError as error:
            raise NotFound(f"{entry.path} of engine {short_key(key)} is missing from {self.uri}"
                           ) from error
        with src, dest.open("wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                count(len(chunk))
        return digest.hexdigest()

    def _commit(self, key: str, manifest: Manifest) -> bool:
        directory = self._dir(key)
        for upload_dir in {p.parent for p in (directory / manifest.upload).rglob("*")}:
            _fsync_dir(upload_dir)  # the files' names are durable before the commit is
        staged = directory / f".{MANIFEST}.{manifest.upload}"
        with staged.open("wb") as out:
            out.write(manifest.to_json())
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(staged, directory / MANIFEST)  # atomic; fails if a manifest exists
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
        _fsync_dir(directory)
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            data = _read(self._dir(key) / MANIFEST, MAX_MANIFEST)
        except TooLarge as error:
            self._too_large(key, error)
            return None
        return self._parse_manifest(key, data)

    def _get_object(self, key: str, name: str, limit: int) -> bytes | None:
        return _read(self._dir(key) / name, limit)

    def _put_object(self, key: str, name: str, data: bytes) -> None:
        path = self._dir(key) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{name}.{os.getpid()}.{time.monotonic_ns()}")
        staged.write_bytes(data)
        staged.replace(path)  # atomic: readers see the old object or the new one

    def _keys(self) -> Iterator[str]:
        engines = self.root / layout.ENGINES
        if engines.is_dir():
            yield from sorted(p.name for p in engines.iterdir() if p.is_dir())

    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        now = time.time()
        for upload in self._dir(key).iterdir():
            if upload.is_dir():
                times = [p.stat().st_mtime for p in upload.rglob("*")]
                yield upload.name, now - max([upload.stat().st_mtime, *times])

    def _uncommit(self, key: str, expected: bytes | None = None) -> Manifest | None:
        # A rename is atomic: what is taken away is exactly the manifest then committed, and
        # its upload is the one removed after.
        committed = self._dir(key) / MANIFEST
        taken = self._dir(key) / f".{MANIFEST}.deleting.{os.getpid()}.{time.monotonic_ns()}"
        try:
            os.rename(committed, taken)
        except FileNotFoundError:
            return None
        try:
            data = taken.read_bytes()
            if expected is not None and data != expected:
                with contextlib.suppress(FileExistsError):  # not that one: committed again
                    os.link(taken, committed)
                return None
            return Manifest.model_validate_json(data)
        finally:
            taken.unlink(missing_ok=True)
            _fsync_dir(self._dir(key))

    def _files(self, key: str, upload: str) -> dict[str, int]:
        base = self._dir(key) / upload
        return {p.relative_to(base).as_posix(): p.stat().st_size
                for p in base.rglob("*") if p.is_file()}

    def _file_sha256(self, key: str, upload: str, path: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with (self._dir(key) / upload / path).open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    def _put_aside(self, key: str, upload: str, name: str, data: bytes) -> None:
        path = self._aside(key, upload) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{name}.{os.getpid()}.{time.monotonic_ns()}")
        staged.write_bytes(data)
        staged.replace(path)

    def _move_aside(self, key: str, upload: str) -> None:
        source, aside = self._dir(key) / upload, self._aside(key, upload) / layout.FILES
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            target = aside / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)  # a rename: there before it is gone from here
        shutil.rmtree(source, ignore_errors=True)

    def _drop(self, key: str, name: str) -> None:
        (self._dir(key) / name).unlink(missing_ok=True)

    def _remove(self, key: str, upload: str) -> None:
        if not upload or "/" in upload or upload in (".", ".."):
            raise InvalidInput(f"{upload!r} is not an upload id")
        (self._dir(key) / f".{MANIFEST}.{upload}").unlink(missing_ok=True)
        shutil.rmtree(self._dir(key) / upload, ignore_errors=True)

    def _write_used(self, key: str, data: bytes) -> None:
        self._dir(key).mkdir(parents=True, exist_ok=True)
        staged = self._dir(key) / f".{USED}.{os.getpid()}.{time.monotonic_ns()}"
        staged.write_bytes(data)
        staged.replace(self._dir(key) / USED)

    def _used_age(self, key: str) -> float | None:
        try:
            return time.time() - (self._dir(key) / USED).stat().st_mtime
        except FileNotFoundError:
            return None

    def _used(self, key: str) -> tuple[float, bytes] | None:
        path = self._dir(key) / USED
        try:
            data = path.read_bytes()
            return time.time() - path.stat().st_mtime, data
        except FileNotFoundError:
            return None

    def _prune(self, key: str) -> None:
        (self._dir(key) / USED).unlink(missing_ok=True)
        for staged in self._dir(key).glob(f".{MANIFEST}.*"):
            staged.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._dir(key).rmdir()  # only if empty: a writer may be starting in it

    def _blob(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"{name!r} is not a blob name (relative, no '..')")
        return self.root / "cache" / name

    def get_blob(self, name: str, limit: int | None = None) -> bytes | None:
        return _read(self._blob(name), limit)

    def put_blob(self, name: str, data: bytes) -> None:
        path = self._blob(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        staged.write_bytes(data)
        staged.replace(path)  # atomic: readers see the old blob or the new one


def _read(path: Path, limit: int | None) -> bytes | None:
    """The file's bytes, or None when it does not exist; ``TooLarge`` (unread) above
    ``limit``."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if limit is not None and size > limit:
                raise TooLarge(f"{path} is {size} bytes, more than kiln ever writes there "
                               f"({limit}): not read")
            data = file.read() if limit is None else file.read(limit + 1)
    except FileNotFoundError:
        return None
    if limit is not None and len(data) > limit:
        raise TooLarge(f"{path} is more than {limit} bytes: not read further")
    return data
