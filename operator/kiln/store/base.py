"""The engine store's contract, and the parts both backends share."""

from __future__ import annotations

import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from kiln.errors import IntegrityError, InvalidInput, NotFound
from kiln.store.manifest import MANIFEST, FileEntry, Manifest

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all)."""
CHUNK = 8 * 1024 * 1024
KEY_CHARS = frozenset("0123456789abcdef")


def check_key(key: str) -> str:
    if len(key) != 64 or not set(key) <= KEY_CHARS:
        raise InvalidInput(f"{key!r} is not an engine key (64 lowercase hex characters)")
    return key


def engine_files(src: Path) -> list[Path]:
    """Regular files under ``src`` (sorted); the manifest itself is never one of them."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST)
    if not files:
        raise InvalidInput(f"{src} holds no files to store")
    return files


class _Counter:
    """Thread-safe progress accumulation."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        import threading

        self.total, self.done, self.progress = total, 0, progress
        self._lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            done = self.done
        if self.progress:
            self.progress(done, self.total)


class HashingReader:
    """A file object that hashes what is read through it (so uploads hash in one pass)."""

    def __init__(self, raw: BinaryIO, count: Callable[[int], None] | None = None) -> None:
        self.raw, self.count = raw, count
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        if self.count and data:
            self.count(len(data))
        return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class EngineStore(ABC):
    """Engines by key under ``<root>/engines/<key>/``; ``manifest.json`` commits one."""

    uri: str
    workers: int = 8

    # -- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _put_file(self, key: str, upload: str, rel: str, path: Path,
                  count: Callable[[int], None]) -> str:
        """Store one file of an upload, return its sha256 (computed while reading it)."""

    @abstractmethod
    def _get_file(self, key: str, upload: str, rel: str, dest: Path,
                  count: Callable[[int], None]) -> str:
        """Fetch one file, return the sha256 of the bytes written."""

    @abstractmethod
    def _commit(self, key: str, manifest: Manifest) -> bool:
        """Write the manifest unless one exists; False if another writer committed first."""

    @abstractmethod
    def read_manifest(self, key: str) -> Manifest | None:
        """The committed engine's manifest, or None: no manifest, no engine."""

    @abstractmethod
    def _keys(self) -> Iterator[str]:
        """Every key that has an engine directory, committed or not."""

    @abstractmethod
    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        """(upload id, age in seconds of its newest file) under an engine directory."""

    @abstractmethod
    def _remove(self, key: str, upload: str | None = None) -> None:
        """Remove one upload, or the whole engine directory."""

    @abstractmethod
    def get_blob(self, name: str) -> bytes | None:
        """A small object under ``<root>/cache/`` (e.g. a TensorRT timing cache)."""

    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None: ...

    # -- the contract --------------------------------------------------------------------------

    def engine_uri(self, key: str) -> str:
        return f"{self.uri}engines/{key}/"

    def has(self, key: str) -> bool:
        return self.read_manifest(check_key(key)) is not None

    def upload(self, key: str, src: Path, *, inputs: dict[str, Any] | None = None,
               versions: dict[str, str] | None = None, build_seconds: float | None = None,
               progress: Progress | None = None) -> Manifest:
        """Store ``src`` as engine ``key``: files in parallel, the manifest last.

        When another writer committed the same key first, its manifest is returned: the
        store keeps one whole engine.
        """
        check_key(key)
        existing = self.read_manifest(key)
        if existing is not None:
            return existing
        files = engine_files(src)
        sizes = [p.stat().st_size for p in files]
        counter = _Counter(sum(sizes), progress)
        rels = [p.relative_to(src).as_posix() for p in files]
        upload = uuid.uuid4().hex[:16]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            digests = list(pool.map(lambda a: self._put_file(key, upload, a[0], a[1], counter),
                                    zip(rels, files, strict=True)))
        manifest = Manifest(
            key=key, inputs=inputs or {}, versions=versions or {}, upload=upload,
            files=[FileEntry(path=r, size=s, sha256=d)
                   for r, s, d in zip(rels, sizes, digests, strict=True)],
            total_bytes=sum(sizes), build_seconds=build_seconds)
        if not self._commit(key, manifest):
            winner = self.read_manifest(key)
            if winner is not None:
                return winner
        return manifest

    def download(self, key: str, dest: Path, *, progress: Progress | None = None) -> Manifest:
        """Fetch engine ``key`` into ``dest``, checking every file's sha256."""
        manifest = self.read_manifest(check_key(key))
        if manifest is None:
            raise NotFound(f"engine {key} is not in {self.uri} (no manifest)")
        counter = _Counter(manifest.total_bytes, progress)
        dest.mkdir(parents=True, exist_ok=True)

        def fetch(entry: FileEntry) -> None:
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            actual = self._get_file(key, manifest.upload, entry.path, target, counter)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{entry.path} of engine {key[:12]} is corrupt: sha256 {actual}, "
                    f"manifest says {entry.sha256}")

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            list(pool.map(fetch, manifest.files))
        (dest / MANIFEST).write_bytes(manifest.to_json())
        return manifest

    def list_keys(self) -> list[str]:
        """Committed engines only."""
        return sorted(k for k in self._keys() if self.read_manifest(k) is not None)

    def delete(self, key: str) -> None:
        self._remove(check_key(key))

    def collect_garbage(self, older_than_seconds: float) -> list[str]:
        """Remove uploads no manifest commits, once older than the threshold (a younger
        one may still be in flight); returns ``<key>/<upload>`` of each removed."""
        removed = []
        for key in list(self._keys()):
            manifest = self.read_manifest(key)
            for upload, age in list(self._uploads(key)):
                if (manifest is None or upload != manifest.upload) and \
                        age >= older_than_seconds:
                    self._remove(key, upload)
                    removed.append(f"{key}/{upload}")
        return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
