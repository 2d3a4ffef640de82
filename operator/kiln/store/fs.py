"""The engine store on a filesystem path (a mounted PVC, or a local directory)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.errors import NotFound
from kiln.store.base import CHUNK, EngineStore
from kiln.store.manifest import MANIFEST, Manifest


class FileStore(EngineStore):
    """``<root>/engines/<key>/<upload>/<files>`` and ``<root>/engines/<key>/manifest.json``."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        if not root.is_dir():
            raise NotFound(f"engine store directory {root} does not exist (is the volume "
                           "mounted?)")
        self.root = root
        self.uri = uri or f"file://{root}/"

    def _dir(self, key: str) -> Path:
        return self.root / "engines" / key

    def _put_file(self, key: str, upload: str, rel: str, path: Path,
                  count: Callable[[int], None]) -> str:
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

    def _get_file(self, key: str, upload: str, rel: str, dest: Path,
                  count: Callable[[int], None]) -> str:
        digest = hashlib.sha256()
        with (self._dir(key) / upload / rel).open("rb") as src, dest.open("wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                count(len(chunk))
        return digest.hexdigest()

    def _commit(self, key: str, manifest: Manifest) -> bool:
        staged = self._dir(key) / f".{MANIFEST}.{manifest.upload}"
        staged.write_bytes(manifest.to_json())
        try:
            os.link(staged, self._dir(key) / MANIFEST)  # atomic, fails if one exists
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            data = (self._dir(key) / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None
        return Manifest.model_validate_json(data)

    def _keys(self) -> Iterator[str]:
        engines = self.root / "engines"
        if engines.is_dir():
            yield from sorted(p.name for p in engines.iterdir() if p.is_dir())

    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        now = time.time()
        for upload in self._dir(key).iterdir():
            if upload.is_dir():
                times = [p.stat().st_mtime for p in upload.rglob("*")] or [
                    upload.stat().st_mtime]
                yield upload.name, now - max(times)

    def _remove(self, key: str, upload: str | None = None) -> None:
        target = self._dir(key) if upload is None else self._dir(key) / upload
        if upload is None:
            (target / MANIFEST).unlink(missing_ok=True)  # uncommit first
        shutil.rmtree(target, ignore_errors=True)

    def _blob(self, name: str) -> Path:
        return self.root / "cache" / name

    def get_blob(self, name: str) -> bytes | None:
        try:
            return self._blob(name).read_bytes()
        except FileNotFoundError:
            return None

    def put_blob(self, name: str, data: bytes) -> None:
        path = self._blob(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(path.name + f".{os.getpid()}.tmp")
        staged.write_bytes(data)
        staged.replace(path)
