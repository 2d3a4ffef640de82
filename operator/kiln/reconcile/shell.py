"""The one loop both reconcilers run in, after controller-runtime's ``reconcileHandler``: a
pass returns its result or raises; the shell alone maps what it raised to an outcome, writes
``Retrying``/``Stalled`` status, counts ``kiln_reconcile_total{kind,result}`` and owns the
per-object lock and backoff.

- transient (a ``KilnError`` that heals, an API server or store that does not answer):
  ``Retrying <reason>`` with the attempt and the next try, backed off per object;
- invalid input (a ``KilnError`` that does not heal, an object the operator's model rejects):
  ``Stalled`` with the message (a rejection logged once per generation);
- unexpected (any other exception): ``InternalError``, the traceback logged once per object
  and type, backed off like a transient error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import pydantic
import urllib3

from kiln import metrics
from kiln.domain.status import Event, stalled_conditions
from kiln.errors import InvalidObject, KilnError, Unavailable, heals
from kiln.reconcile.backoff import Backoff, retrying
from kiln.reconcile.unexpected import Unexpected
from kiln.reconcile.written import WrittenStatus

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)
Result = Literal["done", "retry", "stalled", "unexpected", "backing_off"]
StatusAndEvents = tuple[dict[str, Any], list[Event]]
EventSink = Callable[[dict[str, Any], Event], None]


def parse(model: type[M], body: Mapping[str, Any]) -> M:
    """``body`` as ``model``, or ``InvalidObject`` naming the fields the model refuses."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        if all(e["loc"][:1] == ("status",) for e in error.errors()):
            # A status another version wrote: read without it; the pass writes it anew.
            return model.model_validate({k: v for k, v in body.items() if k != "status"})
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                           for e in error.errors()[:5])
        raise InvalidObject(f"the operator cannot read this {model.__name__}: {fields}") from error


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a pass came to: its ``value`` when it was done, else the ``error`` it met."""

    result: Result
    value: T | None = None
    error: KilnError | None = None


@dataclass(frozen=True)
class Pass(Generic[T]):
    """One pass of a controller over one object (the body as the shell hands it over)."""

    run: Callable[[dict[str, Any]], T]
    inputs: Callable[[dict[str, Any]], Hashable]
    """What a failed pass depended on besides the spec: a change retries at once."""
    retrying: Callable[[dict[str, Any], KilnError, str], StatusAndEvents]
    """The status (and Events) of an object whose pass failed in a way that may heal."""
    stalled: Callable[[dict[str, Any], KilnError], StatusAndEvents]
    """The status (and Events) of an object whose input is invalid (it parses)."""


_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
"""Per-object locks, process-wide: a pass of the last leadership term that still runs and
one of the new term never overlap (the shells are made anew each term)."""
_LOCKS_GUARD = threading.Lock()


class Shell:
    """Backoff, error policy and status writes of one kind, for one leadership term."""

    def __init__(self, kind: str, written: WrittenStatus, emit: EventSink,
                 log: logging.Logger) -> None:
        self.kind, self.written, self.emit, self.log = kind, written, emit, log
        self.backoff = Backoff()
        self._unexpected = Unexpected(kind, log)
        self._guard = threading.Lock()
        self._rejected: dict[tuple[str, str], tuple[str, Any]] = {}
        """Objects the model rejected: (uid, generation) said in the log already."""

    def lock(self, ref: tuple[str, str]) -> threading.Lock:
        with _LOCKS_GUARD:
            return _LOCKS.setdefault((self.kind, *ref), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept of a deleted object."""
        ref = (namespace, name)
        with _LOCKS_GUARD:
            _LOCKS.pop((self.kind, *ref), None)
        with self._guard:
            self._rejected.pop(ref, None)
        self.backoff.succeeded(ref)
        self.written.forget(namespace, name)

    def next_try(self, namespace: str, name: str) -> float | None:
        """Seconds until a backing-off object is due again, or None."""
        return self.backoff.next_try((namespace, name))

    def run(self, body: Mapping[str, Any], step: Pass[T]) -> Outcome[T]:
        """One pass over ``body`` (as the index has it) under the object's lock."""
        meta = body["metadata"]
        ref = (str(meta["namespace"]), str(meta["name"]))
        with self.lock(ref):
            outcome = self._run(ref, self.written.overlay(dict(body)), step)
        metrics.record_reconcile(self.kind, outcome.result)
        return outcome

    def _run(self, ref: tuple[str, str], body: dict[str, Any], step: Pass[T]) -> Outcome[T]:
        meta = body["metadata"]
        generation = meta.get("generation")
        last = self.backoff.last(ref)
        if last is not None and last.spec == generation:  # a new spec is tried at once
            try:
                inputs = step.inputs(body)
            except Exception:  # an input that cannot be read is as it was
                inputs = last.inputs
            if self.backoff.waiting(ref, inputs) is not None:
                return Outcome("backing_off")
        try:
            value = step.run(body)
        except InvalidObject as error:
            self.backoff.succeeded(ref)
            if self._rejected.get(ref) != (meta.get("uid"), generation):
                self._rejected[ref] = (meta.get("uid"), generation)
                self.log.warning("%s %s/%s stalled: %s", self.kind, *ref, error.message)
            self._write(body, *_rejected_status(body, error))  # no request when it holds
            return Outcome("stalled", error=error)
        except KilnError as error:
            if heals(error):
                self._retry(ref, body, step, error)
                return Outcome("retry", error=error)
            self.backoff.succeeded(ref)
            self._write(body, *step.stalled(body, error))
            return Outcome("stalled", error=error)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # The API server (or the store) did not answer in time or at all.
            unreachable = Unavailable(f"{type(error).__name__}: {error}", reason="Unreachable")
            self._retry(ref, body, step, unreachable)
            return Outcome("retry", error=unreachable)
        except Exception as error:  # a bug or an unforeseen failure: never fatal, never a loop
            self._unexpected.record(*ref, error)
            failure = KilnError(f"{type(error).__name__}: {error}", reason="InternalError")
            self._retry(ref, body, step, failure)
            return Outcome("unexpected", error=failure)
        self.backoff.succeeded(ref)
        return Outcome("done", value=value)

    def _retry(self, ref: tuple[str, str], body: dict[str, Any], step: Pass[T],
               error: KilnError) -> None:
        try:
            inputs = step.inputs(body)
        except Exception:  # unreadable inputs: a change of the spec still retries at once
            inputs = None
        attempt = self.backoff.failed(ref, inputs, spec=body["metadata"].get("generation"))
        message = retrying(error.reason, error.message, attempt)
        self.log.warning("reconcile of %s %s/%s: %s", self.kind, *ref, message)
        self._write(body, *step.retrying(body, error, message))
        self.backoff.wait_from_now(ref)  # a slow write does not eat the delay

    def _write(self, body: dict[str, Any], status: dict[str, Any],
               events: list[Event]) -> None:
        """Write a failure's status and Events; the API server may be what fails."""
        try:
            if self.written.write(body, status):
                for event in events:
                    self.emit(body, event)
        except Exception as failure:
            meta = body["metadata"]
            self.log.warning("could not write the status of %s %s/%s: %s", self.kind,
                             meta["namespace"], meta["name"], failure)


def _rejected_status(body: dict[str, Any], error: KilnError) -> StatusAndEvents:
    """The status of an object the model rejects: only its conditions (and
    ``observedGeneration``) change; the rest stays as the cluster has it."""
    found = body.get("status")
    current: dict[str, Any] = found if isinstance(found, dict) else {}
    generation = int(body["metadata"].get("generation") or 0)
    conditions = stalled_conditions(current.get("conditions"), generation, error.reason,
                                    f"{error.reason}: {error.message}")
    status = {**current, "observedGeneration": generation, "conditions": conditions}
    return status, [Event("Warning", error.reason, error.message)]
