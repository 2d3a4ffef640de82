"""The operator's pod policy (``kiln.domain.pod_policy``): overrides within a Pod Security
level, priority classes from a list; each refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.api.common import SecurityContext
from kiln.config import OperatorConfig
from kiln.domain import pod_policy
from kiln.domain.podspec import container_security, pod_security

FIELD = "spec.job.securityContext"


def problems(override: dict[str, Any], level: pod_policy.Level = "restricted") -> list[str]:
    return pod_policy.security_problems(SecurityContext.model_validate(override), level, FIELD)


@pytest.mark.parametrize(("override", "field"), [
    ({"runAsUser": 0}, "runAsUser"),
    ({"runAsNonRoot": False}, "runAsNonRoot"),
    ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
    ({"capabilities": {"add": ["SYS_ADMIN"]}}, "capabilities.add"),
    ({"capabilities": {"add": ["CAP_NET_RAW"]}}, "capabilities.add"),
    ({"capabilities": {"drop": ["NET_RAW"]}}, "capabilities.drop"),
    ({"seccompProfile": {"type": "Unconfined"}}, "seccompProfile.type"),
])
def test_restricted_refuses_each_field_it_does_not_admit(override: dict[str, Any],
                                                         field: str) -> None:
    (found,) = problems(override)
    assert found.startswith(f"{FIELD}.{field}: "), found


@pytest.mark.parametrize("override", [
    {}, {"runAsUser": 1000, "runAsGroup": 0, "fsGroup": 0, "runAsNonRoot": True},
    {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
    {"capabilities": {"drop": []}},  # empty: kiln drops ALL
    {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/trt.json"}},
    {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
])
def test_restricted_admits_what_pod_security_restricted_admits(
        override: dict[str, Any]) -> None:
    assert problems(override) == []
    # and what kiln renders from it is restricted as the apiserver sees it
    context = {**pod_security(override), **container_security(override)}
    assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
    assert "ALL" in context["capabilities"]["drop"]


def test_baseline_admits_root_but_not_every_capability_nor_unconfined() -> None:
    assert problems({"runAsUser": 0, "runAsNonRoot": False,
                     "allowPrivilegeEscalation": True,
                     "capabilities": {"add": ["CHOWN", "SETUID"], "drop": []}},
                    "baseline") == []
    assert problems({"capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"]},
                     "seccompProfile": {"type": "Unconfined"}}, "baseline") == [
        f"{FIELD}.capabilities.add: NET_ADMIN, SYS_ADMIN",
        f"{FIELD}.seccompProfile.type: Unconfined"]
    assert problems({"runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]},
                     "seccompProfile": {"type": "Unconfined"}}, "privileged") == []


def test_priority_classes_come_from_the_list() -> None:
    field = "spec.job.priorityClassName"
    assert pod_policy.priority_problem(None, (), field) is None
    assert pod_policy.priority_problem("batch-low", ("batch-low",), field) is None
    assert pod_policy.priority_problem("anything", ("*",), field) is None
    assert pod_policy.priority_problem("system-node-critical", ("batch-low",), field) == (
        f"{field}: system-node-critical")


def test_the_settings_default_to_restricted_and_no_priority_class() -> None:
    config = OperatorConfig.from_env({})
    assert config.pod_security == "restricted" and config.allowed_priority_classes == ()
    config = OperatorConfig.from_env({"KILN_POD_SECURITY": "baseline",
                                      "KILN_ALLOWED_PRIORITY_CLASSES": "a,b"})
    assert config.pod_security == "baseline" and config.allowed_priority_classes == ("a", "b")
    with pytest.raises(ValueError, match="KILN_POD_SECURITY"):
        OperatorConfig.from_env({"KILN_POD_SECURITY": "lax"})


def test_the_message_says_what_the_operator_allows() -> None:
    text = pod_policy.message([f"{FIELD}.runAsUser: 0 (root)"], "restricted", ())
    assert "spec.job.securityContext.runAsUser: 0 (root)" in text
    assert "Pod Security restricted" in text and "KILN_POD_SECURITY" in text
    assert "priority classes: none" in text

