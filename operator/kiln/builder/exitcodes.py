"""The builder's exit codes, and the Job ``podFailurePolicy`` built from them.

A code says whether running the same task again can help. Permanent codes fail the Job at
once (``FailJob``); the others count against ``backoffLimit`` (``Count``). A pod disrupted by
the cluster (preemption, node drain, eviction) is not the build's fault (``Ignore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kiln import errors
from kiln.builder import failures

OK = 0
INTERNAL = 1
"""An unexpected error (a bug or a crash): retried like a transient failure."""
INVALID_TASK = 2
INVALID_INPUT = 3
UNSUPPORTED = 4
NOT_FOUND = 5
ACCESS_DENIED = 6
WEIGHTS_CHANGED = 7
UNAVAILABLE = 10
OUT_OF_DISK = 11
GPU_UNAVAILABLE = 12
TOOL_FAILED = 13
VERIFY_FAILED = 14
INTEGRITY = 15

Action = Literal["FailJob", "Count", "Ignore"]


@dataclass(frozen=True)
class Code:
    code: int
    reason: str
    action: Action
    meaning: str


CODES: tuple[Code, ...] = (
    Code(INTERNAL, "InternalError", "Count", "unexpected error in the builder"),
    Code(INVALID_TASK, "InvalidTask", "FailJob", "the task is missing or malformed"),
    Code(INVALID_INPUT, "InvalidInput", "FailJob", "the checkpoint is malformed or incomplete"),
    Code(UNSUPPORTED, "Unsupported", "FailJob",
         "architecture, quantization or toolchain not supported"),
    Code(NOT_FOUND, "NotFound", "FailJob", "the source or a file in it does not exist"),
    Code(ACCESS_DENIED, "AccessDenied", "FailJob", "credentials missing or not permitted"),
    Code(WEIGHTS_CHANGED, "WeightsChanged", "FailJob",
         "the weights differ from the task's identity; the same task can never succeed, "
         "the operator builds the new identity under a new key"),
    Code(UNAVAILABLE, "Unavailable", "Count", "the store or the source failed transiently"),
    Code(OUT_OF_DISK, "OutOfDisk", "Count", "the work directory is too small"),
    Code(GPU_UNAVAILABLE, "GPUUnavailable", "Count", "no usable GPU is visible"),
    Code(TOOL_FAILED, "ToolFailed", "Count", "a TensorRT-LLM tool exited non-zero"),
    Code(VERIFY_FAILED, "VerifyFailed", "Count", "the result is incomplete or inconsistent"),
    Code(INTEGRITY, "IntegrityError", "Count", "bytes read do not match their digest"),
)
BY_REASON = {c.reason: c for c in CODES}
BY_CODE = {c.code: c for c in CODES}

_CLASSES: tuple[tuple[type[errors.KilnError], int], ...] = (
    (failures.InvalidTask, INVALID_TASK),
    (failures.Unsupported, UNSUPPORTED),
    (failures.OutOfDisk, OUT_OF_DISK),
    (failures.GPUUnavailable, GPU_UNAVAILABLE),
    (failures.ToolFailed, TOOL_FAILED),
    (failures.VerifyFailed, VERIFY_FAILED),
    (errors.WeightsChanged, WEIGHTS_CHANGED),
    (errors.IntegrityError, INTEGRITY),
    (errors.NotFound, NOT_FOUND),
    (errors.AccessDenied, ACCESS_DENIED),
    (errors.Unavailable, UNAVAILABLE),
    (errors.InvalidInput, INVALID_INPUT),
)


def exit_code(error: BaseException) -> int:
    """The exit code for an error the builder stops on."""
    for cls, code in _CLASSES:
        if isinstance(error, cls):
            return code
    if isinstance(error, errors.KilnError):
        known = BY_REASON.get(error.reason)
        if known is not None:
            return known.code
        return UNAVAILABLE if error.retryable else INVALID_INPUT
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return OUT_OF_DISK
    return INTERNAL


def permanent_codes() -> list[int]:
    """Exit codes after which a retry of the same task cannot help."""
    return sorted(c.code for c in CODES if c.action == "FailJob")


def pod_failure_policy(container: str = "builder") -> dict[str, Any]:
    """The build Job's ``spec.podFailurePolicy`` (the Job must use ``restartPolicy: Never``).

    Disrupted pods are ignored, permanent codes fail the Job, the rest count against
    ``backoffLimit``.
    """
    counted = sorted(c.code for c in CODES if c.action == "Count")
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {
            "containerName": container, "operator": "In", "values": permanent_codes()}},
        {"action": "Count", "onExitCodes": {
            "containerName": container, "operator": "In", "values": counted}},
    ]}
