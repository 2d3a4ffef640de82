"""An EngineDeployment's children besides its Deployments (its Service, PodDisruptionBudget,
trust and LLM API ConfigMaps): what the watch keeps of each, and whether one differs from
what kiln renders.

Only kiln's part is kept and compared: its labels, its hash annotation, its controller
reference and the fields ``render`` writes. What others add (an extra label, a port, a data
key) is theirs: server-side apply would leave it, so it is no drift either; but a selector is
replaced whole on apply (the Service's is an atomic map, a LabelSelector an atomic struct), so
one with anything added or removed is drift. Only the children kiln names (``NAMES``) under
its controller reference are kept, and of a ConfigMap only the keys kiln renders: what a
tenant labels like kiln's costs the operator no memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kiln.domain.labels import ED_LABEL, HASH_ANNOTATION, SERVING_PRODUCT_LABEL, managed_by

FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "type"), ("spec", "selector"), ("spec", "ports")),
    "PodDisruptionBudget": (("spec", "maxUnavailable"), ("spec", "selector")),
    "ConfigMap": (("data",),),
}
"""What ``render`` writes of each kind besides metadata (a unit test holds them together)."""
OWN_LABELS = frozenset({*managed_by(""), ED_LABEL, SERVING_PRODUCT_LABEL})
ATOMIC = frozenset({"spec.selector"})
"""Fields replaced whole on apply: compared for equality."""
NAMES = {"Service": ("{}",), "PodDisruptionBudget": ("{}",),
         "ConfigMap": ("{}-kiln-trust", "{}-llm-api")}
"""The names kiln gives an EngineDeployment's children (``render``)."""
DATA_KEYS = frozenset({"trusted-keys.pem", "pytorch.yaml", "tensorrt.yaml"})
"""The ConfigMap keys kiln renders (``render``)."""


def kilns(kind: str, obj: dict[str, Any]) -> bool:
    """Whether ``obj`` is one of the children kiln renders for the EngineDeployment its label
    names: one of its names, under an EngineDeployment controller of that name."""
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(ED_LABEL, "")
    controllers = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    return (meta.get("name") in [n.format(owner) for n in NAMES[kind]]
            and any(r.get("kind") == "EngineDeployment" and r.get("name") == owner
                    for r in controllers))


@dataclass(frozen=True)
class ObservedChild:
    """A child as the watch last saw it: kiln's part only (``kilns_part``)."""

    kind: str
    name: str
    part: dict[str, Any]


def kilns_part(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The part of a child kiln renders: its own labels, the hash annotation, the controller
    reference, the kind's ``FIELDS`` (ConfigMap values as digests: small to keep)."""
    meta = obj.get("metadata") or {}
    part: dict[str, Any] = {
        "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in OWN_LABELS},
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                        if k == HASH_ANNOTATION},
        "ownerReferences": [r for r in meta.get("ownerReferences") or []
                            if r.get("controller")],
    }
    for path in FIELDS[kind]:
        value: Any = obj
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            part[".".join(path)] = value
    if "data" in part:
        part["data"] = {k: hashlib.sha256(str(v).encode()).hexdigest()[:20]
                        for k, v in part["data"].items() if k in DATA_KEYS}
    return part


def observe(kind: str, obj: dict[str, Any]) -> ObservedChild:
    return ObservedChild(kind, str(obj["metadata"]["name"]), kilns_part(kind, obj))


def drifted(rendered: dict[str, Any], seen: ObservedChild | None) -> bool:
    """Whether ``rendered`` must be applied: the child is missing, or something of kiln's
    part differs (edited by hand, or rendered anew: the hash annotation)."""
    if seen is None:
        return True
    want = kilns_part(str(rendered["kind"]), rendered)
    return (any(want.get(k) != seen.part.get(k) for k in ATOMIC if k in want)
            or not _within({k: v for k, v in want.items() if k not in ATOMIC}, seen.part))


def _within(want: Any, have: Any) -> bool:
    """``want`` is part of ``have``: every key of a map, an entry for each list item."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _within(v, have[k])
                                              for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and all(any(_within(w, h) for h in have) for w in want)
    return bool(want == have)
