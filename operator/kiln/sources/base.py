"""What every weight source gives: an identity, and a download."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class WeightsIdentity:
    """Names the exact weights: equal digests, equal bytes."""

    digest: str
    """sha256 hex over the source's canonical listing."""
    kind: str
    """``s3``, ``hf`` or ``pvc``."""
    details: dict[str, Any] = field(default_factory=dict)


def digest_of(kind: str, listing: Any) -> str:
    blob = json.dumps([kind, listing], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class WeightSource(Protocol):
    uri: str

    def identity(self) -> WeightsIdentity: ...

    def download(self, dest: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        """Fetch the weights into ``dest``; the identity of what was fetched."""
        ...


def content_digest(directory: Path) -> str:
    """sha256 over every file's relative path and sha256: the full content identity."""
    listing = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                digest.update(chunk)
        listing.append([path.relative_to(directory).as_posix(), digest.hexdigest()])
    return digest_of("content", listing)
