"""The exit codes of kiln's programs in pods (``kiln-builder``, ``kiln fetch-engine``): one
table, and the build Job's ``podFailurePolicy`` made from it.

A code says whether running the same task again can help. Permanent codes fail the Job at
once (``FailJob``); the others count against ``backoffLimit`` (``Count``). A pod disrupted by
the cluster (preemption, node drain, eviction) is not the build's fault (``Ignore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kiln import errors

OK = 0
INTERNAL = 1
"""An unexpected error (a bug or a crash): retried like a transient failure."""
INVALID_TASK = 2
INVALID_INPUT = 3
UNSUPPORTED = 4
NOT_FOUND = 5
ACCESS_DENIED = 6
WEIGHTS_CHANGED = 7
GPU_MISMATCH = 8
VERSION_MISMATCH = 9
UNAVAILABLE = 10
OUT_OF_DISK = 11
GPU_UNAVAILABLE = 12
TOOL_FAILED = 13
VERIFY_FAILED = 14
INTEGRITY = 15
UNTRUSTED = 16

Action = Literal["FailJob", "Count", "Ignore"]


@dataclass(frozen=True)
class Code:
    code: int
    error: type[errors.KilnError] | None
    """The error this code is the exit of (None: an unexpected exception)."""
    action: Action
    meaning: str

    @property
    def reason(self) -> str:
        return self.error.reason if self.error else "InternalError"

    @property
    def retryable(self) -> bool:
        """Whether running the same task again can help."""
        return self.action != "FailJob"


CODES: tuple[Code, ...] = (
    Code(INTERNAL, None, "Count", "unexpected error in the program"),
    Code(INVALID_TASK, errors.InvalidTask, "FailJob", "the task or command line is malformed"),
    Code(INVALID_INPUT, errors.InvalidInput, "FailJob",
         "the checkpoint or a Secret's value is malformed"),
    Code(UNSUPPORTED, errors.Unsupported, "FailJob",
         "architecture, quantization or toolchain not supported"),
    Code(NOT_FOUND, errors.NotFound, "FailJob", "the source, engine or a file does not exist"),
    Code(ACCESS_DENIED, errors.AccessDenied, "FailJob", "credentials missing or not permitted"),
    Code(WEIGHTS_CHANGED, errors.WeightsChanged, "FailJob",
         "the weights differ from the task's identity; the same task can never succeed, "
         "the operator builds the new identity under a new key"),
    Code(GPU_MISMATCH, errors.GPUMismatch, "FailJob",
         "the engine was built for another compute capability than this node's GPU"),
    Code(VERSION_MISMATCH, errors.VersionMismatch, "FailJob",
         "the engine was built with another TensorRT-LLM or TensorRT than the server image "
         "has (the serving container's version guard)"),
    Code(UNAVAILABLE, errors.Unavailable, "Count", "the store or the source failed transiently"),
    Code(OUT_OF_DISK, errors.OutOfDisk, "Count", "the work directory is too small"),
    Code(GPU_UNAVAILABLE, errors.GPUUnavailable, "Count", "no usable GPU is visible"),
    Code(TOOL_FAILED, errors.ToolFailed, "Count", "a TensorRT-LLM tool exited non-zero"),
    Code(VERIFY_FAILED, errors.VerifyFailed, "Count", "the result is incomplete or inconsistent"),
    Code(INTEGRITY, errors.IntegrityError, "Count", "bytes read do not match their digest"),
    Code(UNTRUSTED, errors.Untrusted, "FailJob",
         "the engine is unsigned, signed by no trusted key, or not what was signed"),
)
BY_CODE = {c.code: c for c in CODES}
BY_REASON = {c.reason: c for c in CODES}


def exit_code(error: BaseException) -> int:
    """The exit code for an error a program stops on: by its class, else by its reason."""
    for known in CODES:
        if known.error is not None and isinstance(error, known.error):
            return known.code
    if isinstance(error, errors.KilnError):
        by_reason = BY_REASON.get(error.reason)
        if by_reason is not None:
            return by_reason.code
        return UNAVAILABLE if error.retryable else INVALID_INPUT
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return OUT_OF_DISK
    return INTERNAL


def pod_failure_policy(container: str) -> dict[str, Any]:
    """A Job's ``spec.podFailurePolicy`` for ``container`` (``restartPolicy: Never``):
    disrupted pods are ignored, permanent codes fail the Job, the rest count against
    ``backoffLimit``."""
    def codes(action: Action) -> list[int]:
        return sorted(c.code for c in CODES if c.action == action)

    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {
            "containerName": container, "operator": "In", "values": codes("FailJob")}},
        {"action": "Count", "onExitCodes": {
            "containerName": container, "operator": "In", "values": codes("Count")}},
    ]}
