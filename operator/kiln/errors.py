"""The small error taxonomy every adapter raises.

Each error carries a ``reason`` (a CamelCase word for conditions, Events and the
builder's termination message) and whether retrying can help. Handlers map
``retryable`` errors onto ``kopf.TemporaryError`` and the rest onto
``kopf.PermanentError``; nothing below the handlers imports kopf.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of kiln's errors: a reason code, a message a person can act on."""

    reason = "Error"
    retryable = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidInput(KilnError):
    """The request cannot succeed as written: a malformed URI, a bad checkpoint."""

    reason = "InvalidInput"


class NotFound(KilnError):
    """A named thing (bucket, object, repository, revision, engine) does not exist."""

    reason = "NotFound"


class AccessDenied(KilnError):
    """Credentials are missing, wrong, or lack a permission."""

    reason = "AccessDenied"


class Unavailable(KilnError):
    """A dependency (object store, hub, API server) failed in a way a retry may fix."""

    reason = "Unavailable"
    retryable = True


class IntegrityError(KilnError):
    """Bytes read do not match the digest recorded for them."""

    reason = "IntegrityError"


class WeightsChanged(KilnError):
    """The weights changed between resolving their identity and reading them."""

    reason = "WeightsChanged"
    retryable = True
