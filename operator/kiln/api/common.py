"""Shared pieces of kiln's API: the model base, CEL rules, conditions, small value types."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION: Final = "kiln.dev/v1alpha1"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
            r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
DURATION = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}

ConditionStatus = Literal["True", "False", "Unknown"]


class KilnModel(BaseModel):
    """Base of every API model: camelCase JSON names, attribute docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a manifest carries: camelCase names, unset (None) fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(rule: str, message: str, field_path: str | None = None,
        reason: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def q(text: str) -> str:
    """``text`` as a CEL string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for a ``Field`` or a model's config."""
    return {"x-kubernetes-validations": list(entries)}


def parse_duration(text: str) -> timedelta:
    """A Go-style duration such as ``90s``, ``30m`` or ``1h30m``."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration such as 30m or 1h30m")
    seconds = sum(int(n) * _DURATION_UNIT[unit] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
"""The name of a namespaced object (DNS-1123 subdomain)."""

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]

LABEL_KEY_RULE = cel(
    f"self.all(k, k.matches({q(LABEL_KEY)}))",
    "keys must be label keys: an optional DNS-subdomain prefix and '/', then a name of at "
    "most 63 letters, digits, '-', '_' or '.'",
)


LabelMap = dict[str, LabelValue]
"""Labels to select nodes by (keys checked by ``LABEL_KEY_RULE``)."""


Quantity = int | Annotated[str, Field(max_length=64, pattern=QUANTITY)]
"""A resource quantity: an integer, or a string such as ``500m`` or ``64Gi``."""

GPU_RESOURCE = "nvidia.com/gpu"


class Resources(KilnModel):
    """Compute resources of a container, as in a Pod (``nvidia.com/gpu`` is set by kiln)."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel(f"!has(self.limits) || !('{GPU_RESOURCE}' in self.limits)",
            f"{GPU_RESOURCE} is set by kiln from tensor * pipeline parallelism; leave it out",
            ".limits"),
        cel(f"!has(self.requests) || !('{GPU_RESOURCE}' in self.requests)",
            f"{GPU_RESOURCE} is set by kiln from tensor * pipeline parallelism; leave it out",
            ".requests"),
    ))

    limits: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """Upper bounds, e.g. ``{memory: 200Gi, cpu: 16}``."""
    requests: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """What the scheduler reserves, e.g. ``{memory: 160Gi, cpu: 8}``."""


class Capabilities(KilnModel):
    """Linux capabilities of a container."""

    add: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    """Capabilities to add (kiln drops ``ALL`` by default)."""
    drop: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list,
                                                             max_length=32)
    """Capabilities to drop; empty: ``ALL``."""


class SeccompProfile(KilnModel):
    """The seccomp profile of a container."""

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"] = "RuntimeDefault"
    """The kind of profile."""
    localhost_profile: str | None = Field(default=None, max_length=256)
    """The node's profile file, for ``Localhost``."""


class SecurityContext(KilnModel):
    """Overrides of the restricted security context kiln gives its pods (non-root UID 10001,
    ``RuntimeDefault`` seccomp, no capabilities, no privilege escalation), for images that need
    more. Each field set here wins over kiln's, within what the operator's pod policy allows
    (``KILN_POD_SECURITY``, default: what Pod Security restricted admits; beyond it the object
    stalls with ``PodOverrideNotAllowed``); see docs/security.md."""

    run_as_user: int | None = Field(default=None, ge=0, le=2147483647)
    """UID of the containers (kiln: 10001)."""
    run_as_group: int | None = Field(default=None, ge=0, le=2147483647)
    """GID of the containers (kiln: 10001)."""
    run_as_non_root: bool | None = None
    """Whether the kubelet refuses to start a container as root (kiln: true)."""
    fs_group: int | None = Field(default=None, ge=0, le=2147483647)
    """The pod's ``fsGroup`` (owner group of its volumes; kiln: 10001)."""
    allow_privilege_escalation: bool | None = None
    """Whether a process may gain more privileges than its parent (kiln: false)."""
    read_only_root_filesystem: bool | None = None
    """Whether the container's root filesystem is read-only (kiln: unset)."""
    capabilities: Capabilities | None = None
    """Capabilities to add or drop (kiln: drop ALL)."""
    seccomp_profile: SeccompProfile | None = None
    """The seccomp profile (kiln: RuntimeDefault)."""


class Condition(KilnModel):
    """A kstatus condition: ``Ready``, ``Reconciling`` or ``Stalled``."""

    type: str = Field(min_length=1, max_length=316)
    """The condition's name: ``Ready``, ``Reconciling`` or ``Stalled``."""
    status: ConditionStatus
    """``True``, ``False`` or ``Unknown``."""
    reason: str | None = Field(default=None, max_length=1024)
    """A CamelCase word saying why the condition has this status."""
    message: str | None = Field(default=None, max_length=32768)
    """What happened, for a person."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this condition was computed for."""
    last_transition_time: datetime | None = None
    """When ``status`` last changed."""


CONDITIONS_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""Schema extras making ``conditions`` a list-map keyed by ``type`` (server-side apply)."""


S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^/\s]+/)*$"
HF_URI = (r"^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*"
          r"(@[A-Za-z0-9][-A-Za-z0-9_./]*)?$")
PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^/\s]+)*/?$"
DOT_DOT = r"(^|/)\.\.(/|$)"
_URI_FORMS = {
    "s3": (S3_URI, "s3://bucket/prefix/ (a bucket name of 3-63 lowercase letters, digits, "
                   "'.' or '-', then a prefix ending in '/')"),
    "hf": (HF_URI, "hf://org/name or hf://org/name@revision"),
    "pvc": (PVC_URI, "pvc://claim/path (claim a PersistentVolumeClaim name)"),
}


def uri_rules(schemes: tuple[str, ...]) -> list[dict[str, str]]:
    """CEL rules on a URI string: a known scheme, each scheme's form, no ``..`` segments."""
    prefixes = [f"{s}://" for s in schemes]
    entries = [cel(" || ".join(f"self.startsWith({q(p)})" for p in prefixes),
                   "must start with " + ", ".join(prefixes[:-1]) + f" or {prefixes[-1]}")]
    for scheme in schemes:
        pattern, form = _URI_FORMS[scheme]
        entries.append(cel(f"!self.startsWith({q(scheme + '://')}) || self.matches({q(pattern)})",
                           f"must look like {form}"))
    entries.append(cel(f"!self.matches({q(DOT_DOT)})", "must not contain '..' path segments"))
    return entries


def check_uri(value: str, schemes: tuple[str, ...]) -> str:
    """The Python twin of ``uri_rules``: ``value`` or a ValueError saying what is wrong."""
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise ValueError(f"{value!r} must start with one of " +
                         ", ".join(f"{s}://" for s in schemes))
    pattern, form = _URI_FORMS[scheme]
    if not re.search(pattern, value):
        raise ValueError(f"{value!r} must look like {form}")
    if re.search(DOT_DOT, value):
        raise ValueError(f"{value!r} must not contain '..' path segments")
    return value


def uri_field(*schemes: str) -> Any:
    """``Field`` for a URI with one of ``schemes`` (CEL rules in the schema)."""
    return Field(min_length=1, max_length=1024, json_schema_extra=rules(*uri_rules(schemes)))


def uri_check(*schemes: str) -> AfterValidator:
    """A pydantic validator for a URI with one of ``schemes``."""
    return AfterValidator(lambda value: check_uri(value, schemes))


SourceUri = Annotated[str, uri_field("s3", "hf", "pvc"), uri_check("s3", "hf", "pvc")]
"""Where weights come from: ``s3://bucket/prefix/``, ``hf://org/name@rev``, ``pvc://claim/path``."""
StoreUri = Annotated[str, uri_field("s3", "pvc"), uri_check("s3", "pvc")]
"""Where engines are kept: ``s3://bucket/prefix/`` or ``pvc://claim/path``."""

MIN_DURATION = timedelta(minutes=1)


def _check_duration(text: str) -> str:
    if parse_duration(text) < MIN_DURATION:
        raise ValueError(f"{text!r} is shorter than 1m")
    return text


DURATION_RULES = rules(
    cel(f"self.matches({q(DURATION)})",
        "must be a duration such as 30m or 1h30m (units h, m, s, ms)"),
    cel(f"!self.matches({q(DURATION)}) || duration(self) >= duration('1m')",
        "must be at least 1m"),
)

Duration = Annotated[str, Field(max_length=32, json_schema_extra=DURATION_RULES),
                     AfterValidator(_check_duration)]
"""A Go-style duration of at least a minute, e.g. ``30m`` or ``1h30m``."""


def _check_grace(text: str) -> str:
    parse_duration(text)
    return text


Grace = Annotated[str, Field(max_length=32, json_schema_extra=rules(cel(
    f"self.matches({q(DURATION)})", "must be a duration such as 0s, 90s or 10m (units h, m, s, "
    "ms)"))), AfterValidator(_check_grace)]
"""A Go-style duration, zero allowed: how long kiln waits before acting, e.g. ``10m``."""
