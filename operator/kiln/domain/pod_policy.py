"""What EngineBuilds and EngineDeployments may change of their pods: security-context
overrides within the operator's Pod Security level, priority classes from its list.

Pod Security admission enforces only where a namespace is labelled for it; this holds in every
namespace kiln serves. The levels are Kubernetes' Pod Security Standards
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), restricted to the fields
an override can set: ``restricted`` (the default) admits non-root, no privilege escalation,
every capability dropped but ``NET_BIND_SERVICE``, seccomp ``RuntimeDefault`` or ``Localhost``;
``baseline`` admits root and escalation but only its capabilities and no ``Unconfined``
seccomp; ``privileged`` admits any override.
"""

from __future__ import annotations

from typing import Literal

from kiln.api.common import SecurityContext

Level = Literal["restricted", "baseline", "privileged"]
LEVELS: tuple[Level, ...] = ("restricted", "baseline", "privileged")

BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
"""Capabilities ``baseline`` lets a container add (the Pod Security Standards' list)."""
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
"""The one capability ``restricted`` lets a container add."""


def _caps(names: list[str]) -> set[str]:
    return {n.upper().removeprefix("CAP_") for n in names}


def security_problems(context: SecurityContext | None, level: Level,
                      field: str) -> list[str]:
    """Each override in ``context`` that ``level`` does not admit, its field under
    ``field`` (e.g. ``spec.job.securityContext``) named. Fields left unset keep kiln's
    restricted values, which every level admits."""
    if context is None or level == "privileged":
        return []
    found: list[str] = []
    caps = context.capabilities
    added = _caps(caps.add) if caps else set()
    allowed = RESTRICTED_CAPABILITIES if level == "restricted" else BASELINE_CAPABILITIES
    if added - allowed:
        found.append(f"{field}.capabilities.add: {', '.join(sorted(added - allowed))}")
    if context.seccomp_profile is not None and context.seccomp_profile.type == "Unconfined":
        found.append(f"{field}.seccompProfile.type: Unconfined")
    if level == "restricted":
        if context.run_as_non_root is False:
            found.append(f"{field}.runAsNonRoot: false")
        if context.run_as_user == 0:
            found.append(f"{field}.runAsUser: 0 (root)")
        if context.allow_privilege_escalation:
            found.append(f"{field}.allowPrivilegeEscalation: true")
        if caps and caps.drop and "ALL" not in _caps(caps.drop):
            found.append(f"{field}.capabilities.drop: {', '.join(caps.drop)} (not ALL)")
    return found


def priority_problem(name: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    """``name`` unless the operator's list has it (``*``: any)."""
    if name is None or name in allowed or "*" in allowed:
        return None
    return f"{field}: {name}"


def message(problems: list[str], level: Level, priority_classes: tuple[str, ...]) -> str:
    """The Stalled message: what is refused, and what the operator allows."""
    allowed = ", ".join(priority_classes) or "none"
    return (f"not allowed by the operator's pod policy: {'; '.join(problems)} (security "
            f"contexts: what Pod Security {level} admits, KILN_POD_SECURITY; priority classes: "
            f"{allowed}, KILN_ALLOWED_PRIORITY_CLASSES)")
