"""Weights on a PersistentVolumeClaim: identified by path and the spec's ``revision`` (a PVC has
no versions to read, so the user changes ``revision`` when the files change); the builder
records the full ``content_digest`` of what it read."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln.contract.pvc import pvc_path
from kiln.errors import NotFound
from kiln.sources.base import Progress, WeightsIdentity, digest_of


class PvcSource:
    """``pvc://claim/path``, mounted at ``$KILN_PVC_ROOT/claim/path`` (see ``pvc_path``)."""

    def __init__(self, uri: str, *, revision: str | None = None) -> None:
        self.uri, self.revision = uri, revision or ""
        self.path = pvc_path(uri)

    def identity(self) -> WeightsIdentity:
        """sha256 over (path, revision); the volume need not be mounted."""
        return WeightsIdentity(digest_of("pvc", [self.uri.rstrip("/"), self.revision]), "pvc",
                               {"path": self.uri, "revision": self.revision})

    def download(self, dest_dir: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        """Copy the files from the mounted volume."""
        if not self.path.is_dir():
            raise NotFound(f"{self.uri} is not mounted at {self.path} (or is not a directory)")
        shutil.copytree(self.path, dest_dir, dirs_exist_ok=True)
        if progress:
            size = sum(p.stat().st_size for p in dest_dir.rglob("*") if p.is_file())
            progress(size, size)
        return self.identity()
