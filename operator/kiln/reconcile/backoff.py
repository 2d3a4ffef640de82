"""Per-object exponential backoff for failures that may heal: the attempt count and the next
try, and what the object's inputs were when it failed (a change of them retries at once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

BASE_SECONDS = 2.0
CAP_SECONDS = 600.0


@dataclass(frozen=True)
class Attempt:
    """The ``attempt``-th failure in a row; the next try ``delay`` seconds after ``at``."""

    attempt: int
    delay: float
    at: float
    inputs: Hashable
    spec: Hashable = None
    """The spec (generation) it failed with: a new one starts the count over."""

    @property
    def due(self) -> float:
        return self.at + self.delay


class Backoff:
    """Failures in a row per object: the delay doubles from ``base`` up to ``cap``."""

    def __init__(self, base: float = BASE_SECONDS, cap: float = CAP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.cap, self.clock = base, cap, clock
        self._failed: dict[Hashable, Attempt] = {}
        self._guard = threading.Lock()

    def failed(self, ref: Hashable, inputs: Hashable, spec: Hashable = None) -> Attempt:
        """Count a failure of ``ref`` (inputs as they were) and say when to try again. A
        failure with another ``spec`` (an edit that fails differently) starts the count over;
        other inputs that move (a Secret, an EngineBuild's status) retry at once, but keep
        counting, so an input that flaps does not keep the delay at its first step."""
        with self._guard:
            before = self._failed.get(ref)
            attempt = before.attempt + 1 if before is not None and before.spec == spec else 1
            delay = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))  # no overflow
            found = Attempt(attempt, delay, self.clock(), inputs, spec)
            self._failed[ref] = found
            return found

    def waiting(self, ref: Hashable, inputs: Hashable) -> Attempt | None:
        """The failure ``ref`` still waits out, or None: none, it is due, or its inputs
        changed since (a spec edit, a Secret update)."""
        with self._guard:
            found = self._failed.get(ref)
        if found is None or found.inputs != inputs or self.clock() >= found.due:
            return None
        return found

    def succeeded(self, ref: Hashable) -> None:
        with self._guard:
            self._failed.pop(ref, None)

    def wait_from_now(self, ref: Hashable) -> None:
        """Count the current delay from now (after the status write that said it)."""
        with self._guard:
            found = self._failed.get(ref)
            if found is not None:
                self._failed[ref] = Attempt(found.attempt, found.delay, self.clock(),
                                            found.inputs, found.spec)

    def next_try(self, ref: Hashable) -> float | None:
        """Seconds until ``ref`` is due again, or None if it is not backing off or its due
        time has passed."""
        last = self.last(ref)
        if last is None:
            return None
        left = last.due - self.clock()
        return left if left > 0 else None

    def last(self, ref: Hashable) -> Attempt | None:
        with self._guard:
            return self._failed.get(ref)


def retrying(reason: str, message: str, attempt: Attempt) -> str:
    """``Retrying <reason>: <message> (attempt N, next in Ts)``."""
    return (f"Retrying {reason}: {message} (attempt {attempt.attempt}, "
            f"next in {attempt.delay:.0f}s)")
