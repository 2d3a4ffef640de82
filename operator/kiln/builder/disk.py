"""Free space in the work directory."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.builder.progress import human
from kiln.errors import OutOfDisk


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write under ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def require(path: Path, needed: int, *, what: str) -> int:
    """Raise :class:`OutOfDisk` unless ``needed`` bytes are free under ``path``; returns the
    free bytes."""
    free = free_bytes(path)
    if free < needed:
        raise OutOfDisk(f"{what} needs {human(needed)} free in {path}, only {human(free)} is "
                        "available: give the build pod more ephemeral storage (or a larger "
                        "work volume)")
    return free
