"""What every weight source gives: an identity read without downloading, and a download."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all)."""


@dataclass(frozen=True)
class WeightsIdentity:
    """Names the exact weights: equal digests, equal weights."""

    digest: str
    """sha256 hex over the source's canonical listing (the engine key's weights input)."""
    kind: str
    """``s3``, ``hf`` or ``pvc``."""
    details: dict[str, Any] = field(default_factory=dict)
    """For people and logs: s3 ``objects``/``bytes``, ``newest`` (when the newest object was
    written, epoch seconds) and ``uploading`` (multipart uploads in progress); hf
    ``repo``/``revision``/``sha``; pvc ``path``/``revision``."""


def digest_of(kind: str, listing: Any) -> str:
    """sha256 of the canonical JSON of ``[kind, listing]``."""
    blob = json.dumps([kind, listing], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class WeightSource(Protocol):
    """A place weights come from."""

    uri: str

    def identity(self) -> WeightsIdentity:
        """The weights' identity, from metadata only (nothing is downloaded)."""
        ...

    def download(self, dest_dir: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        """Fetch the weights into ``dest_dir``; returns the identity of what was fetched and
        raises ``kiln.errors.WeightsChanged`` if the weights changed meanwhile."""
        ...


def content_digest(directory: Path) -> str:
    """sha256 over every file's relative path and sha256: the full content identity (what the
    builder records for a PVC source, whose identity is only path and revision)."""
    listing = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                digest.update(chunk)
        listing.append([path.relative_to(directory).as_posix(), digest.hexdigest()])
    return digest_of("content", listing)
