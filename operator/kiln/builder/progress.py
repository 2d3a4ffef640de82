"""Progress lines a person watching the pod log can follow, throttled.

``kiln-builder: phase=download bytes=1.2GiB/4.0GiB rate=310MiB/s``
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

PREFIX = "kiln-builder:"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human(n: float) -> str:
    """Bytes in binary units: ``512B``, ``1.5KiB``, ``4.0GiB``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def say(message: str, *, out: TextIO | None = None, **fields: object) -> None:
    """One log line: the prefix, ``key=value`` fields, then a free-text message."""
    parts = [PREFIX, *(f"{k}={v}" for k, v in fields.items())]
    if message:
        parts.append(message)
    print(" ".join(parts), file=out or sys.stdout, flush=True)


class Progress:
    """Counts bytes of one phase and prints at most one line every ``interval`` seconds.

    Thread-safe: downloads and uploads may report from several threads.
    """

    def __init__(self, phase: str, total: int | None = None, *, interval: float = 5.0,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.phase = phase
        self.total = total
        self.done = 0
        self.interval = interval
        self.out = out
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self._lock = threading.Lock()
        self.lines = 0

    def advance(self, n: int) -> None:
        """``n`` more bytes done."""
        with self._lock:
            self.done += n
            self._maybe_print()

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` bytes of ``total`` done so far."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            self._maybe_print()

    def _maybe_print(self) -> None:
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        amount = human(self.done) + (f"/{human(self.total)}" if self.total else "")
        say("", out=self.out, phase=self.phase, bytes=amount,
            rate=f"{human(self.done / elapsed)}/s")
        self.lines += 1

    def finish(self) -> float:
        """Print the final line; returns the phase's seconds."""
        with self._lock:
            now = self.clock()
            self._print(now)
            return now - self.started
