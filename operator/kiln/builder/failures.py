"""Errors only the builder raises, on top of :mod:`kiln.errors`."""

from __future__ import annotations

from kiln.errors import KilnError


class InvalidTask(KilnError):
    """The task itself (``KILN_TASK`` / ``--task-file``) is missing or malformed."""

    reason = "InvalidTask"


class Unsupported(KilnError):
    """Well-formed input kiln cannot build: an architecture, a quantization, a toolchain."""

    reason = "Unsupported"


class OutOfDisk(KilnError):
    """The work directory has too little free space for the weights and the result."""

    reason = "OutOfDisk"
    retryable = True


class GPUUnavailable(KilnError):
    """This step needs a GPU and none (or not the target's) is visible."""

    reason = "GPUUnavailable"
    retryable = True


class ToolFailed(KilnError):
    """A TensorRT-LLM tool (conversion, quantization, trtllm-build) exited non-zero."""

    reason = "ToolFailed"
    retryable = True


class VerifyFailed(KilnError):
    """The built result is incomplete or inconsistent with the task."""

    reason = "VerifyFailed"
    retryable = True
