"""Weights on a PersistentVolumeClaim: identified by path and the spec's ``revision``
(a PVC has no versions); the builder records the full content digest."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln.errors import NotFound
from kiln.sources.base import Progress, WeightsIdentity, digest_of


class PvcSource:
    def __init__(self, uri: str, *, revision: str | None = None) -> None:
        from kiln.store import pvc_path  # the same mount convention as the store

        self.uri, self.revision = uri, revision or ""
        self.path = pvc_path(uri)

    def identity(self) -> WeightsIdentity:
        return WeightsIdentity(digest_of("pvc", [self.uri.rstrip("/"), self.revision]), "pvc",
                               {"path": self.uri, "revision": self.revision})

    def download(self, dest: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        if not self.path.is_dir():
            raise NotFound(f"{self.uri} is not mounted at {self.path}")
        shutil.copytree(self.path, dest, dirs_exist_ok=True)
        return self.identity()
