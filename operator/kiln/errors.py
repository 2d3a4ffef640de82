"""The small error taxonomy every part of kiln raises, the builder and the fetcher included.

Each error carries a ``reason`` (a CamelCase word for conditions, Events and termination
messages; the class name unless given) and whether retrying the same thing can help. The
exit code of each, for the programs in kiln's pods, is in :mod:`kiln.contract.exitcodes`.
"""

from __future__ import annotations

import re
from typing import Any

QUOTED = 240
"""Characters of a remote server's own words (an error body, a message) a status quotes."""
_MARKUP = re.compile(r"<[^>]{0,200}>")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def quoted(text: object, limit: int = QUOTED) -> str:
    """What a server a tenant may control said, fit for a status message: markup dropped,
    control characters and runs of space as one space, at most ``limit`` characters."""
    plain = _UNPRINTABLE.sub(" ", _MARKUP.sub(" ", str(text)))
    plain = " ".join(plain.split())
    return plain if len(plain) <= limit else plain[:limit - 3] + "..."


class KilnError(Exception):
    """Base of kiln's errors: a reason code, a message a person can act on."""

    reason = "Error"
    retryable = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            cls.reason = cls.__name__

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidInput(KilnError):
    """The request cannot succeed as written: a malformed URI, a bad checkpoint."""


class InvalidObject(InvalidInput):
    """An object the operator's model cannot read (a CRD out of step with the operator)."""


class NotFound(KilnError):
    """A named thing (bucket, object, repository, revision, engine) does not exist."""


class AccessDenied(KilnError):
    """Credentials are missing, wrong, or lack a permission."""


class Unavailable(KilnError):
    """A dependency (object store, hub, API server) failed in a way a retry may fix."""

    retryable = True


class NotLeader(Unavailable):
    """A write from a replica that does not hold the leader's lease (the standby, or a
    leader whose lease ran out): the leader does it."""


class IntegrityError(KilnError):
    """Bytes read do not match the digest recorded for them."""


class WeightsChanged(KilnError):
    """The weights changed between resolving their identity and reading them."""

    retryable = True


class InvalidTask(KilnError):
    """The build task (``KILN_TASK`` / ``--task-file``) or a command line is malformed."""


class Unsupported(KilnError):
    """Well-formed input kiln cannot build: an architecture, a quantization, a toolchain."""


class GPUMismatch(KilnError):
    """The engine was built for another compute capability than this node's GPU has."""


class VersionMismatch(KilnError):
    """The engine was built with another TensorRT-LLM or TensorRT than the server image has."""


class OutOfDisk(KilnError):
    """The work directory has too little free space for the weights and the result."""

    retryable = True


class GPUUnavailable(KilnError):
    """This step needs a GPU and none (or not the target's) is visible."""

    retryable = True


class ToolFailed(KilnError):
    """A TensorRT-LLM tool (conversion, quantization, trtllm-build) exited non-zero."""

    retryable = True


class VerifyFailed(KilnError):
    """The built result is incomplete or inconsistent with the task."""

    retryable = True


class Untrusted(KilnError):
    """An engine's manifest is unsigned, signed by no trusted key, or not what was signed."""


class TooLarge(Untrusted):
    """An object larger than kiln ever writes there (a manifest, an envelope, a report): it
    is not kiln's, and is refused from its size alone, before its bytes are read."""

    reason = "Untrusted"


class NameTaken(KilnError):
    """An object kiln would create exists and is not kiln's: kiln leaves it alone."""


class ImageNotAllowed(KilnError):
    """A builder image outside the operator's allowed list."""


class PodOverrideNotAllowed(KilnError):
    """A security-context override or priority class beyond the operator's pod policy."""
def heals(error: KilnError) -> bool:
    """Whether the controllers retry ``error`` with backoff (``Reconciling``, ``Retrying``)
    rather than stall on it (``Stalled``, looked at again each resync and at once on a
    change). Besides what a retry of the same thing may fix, denied or expired credentials
    heal without an edit: they rotate. A missing source or Secret stays a visible stall
    (``NotFound``, Degraded in Argo CD) until it appears; a spec or rendered object refused
    as invalid, or a toolchain refusal, waits for a change of the spec.
    """
    return error.retryable or isinstance(error, AccessDenied)
