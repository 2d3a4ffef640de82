"""Every right the operator uses on the Kubernetes API, where, and why.

The one list the chart's RBAC is checked against (``tests/chart``: the rendered rules are
exactly these, and ``kubectl auth can-i`` as its ServiceAccount), that ``docs/security.md``
lists, and that ``tests/unit/test_rights.py`` finds in the code (each API call the adapters
make, each resource Kopf watches): a right nobody uses, or a call no right covers, fails there.

Where a right holds (``scope``):

- ``watched``: read (list, watch) in every namespace the operator watches: across the cluster
  by default, in each of ``watchNamespaces`` otherwise;
- ``served``: in each namespace the operator serves only (Secrets and every write): the
  ``watchNamespaces``, or cluster-wide the ``servedNamespaces`` and any namespace an admin
  binds the ``<release>-serve`` ClusterRole in;
- ``cluster``: a cluster-scoped resource (``named`` only: when watching named namespaces);
- ``own``: the operator's own namespace (its Lease, its signing key's Secret).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["watched", "served", "cluster", "own"]
Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclass(frozen=True)
class Right:
    """``verbs`` on ``group``/``resource`` (``resource/subresource``) in ``scope``."""

    group: str
    resource: str
    verbs: tuple[Verb, ...]
    scope: Scope
    why: str
    by: str = "kiln"
    """Who makes the call: ``kiln`` (``kiln.kube``, the GC, the indexes' re-lists) or ``kopf``
    (the framework itself: not a call in kiln's code)."""
    names: tuple[str, ...] = ()
    """Only objects of these names (``resourceNames``); ``{release}`` is the chart's name."""
    named: bool = False
    """Only when the operator watches named namespaces (``kiln run --namespace``)."""


_CHILDREN = "kiln's serving children (labelled kiln.dev/engine-deployment), so that one " \
            "deleted or edited is repaired at once"

RIGHTS: tuple[Right, ...] = (
    # -- read where it watches ---------------------------------------------------------------
    Right("kiln.dev", "enginebuilds", ("list", "watch"), "watched",
          "kiln's objects, watched and indexed"),
    Right("kiln.dev", "enginedeployments", ("list", "watch"), "watched",
          "kiln's objects, watched and indexed"),
    Right("batch", "jobs", ("list", "watch"), "watched",
          "build Jobs (labelled kiln.dev/key), indexed by key"),
    Right("", "pods", ("list", "watch"), "watched",
          "build pods' termination messages (the builder's report) and serving pods' "
          "readiness and fetch reports"),
    Right("", "events", ("list", "watch"), "watched",
          "the Job controller's FailedCreate on build Jobs (quota, Pod Security, LimitRange, "
          "PriorityClass), which no other object records"),
    Right("apps", "deployments", ("list", "watch"), "watched", _CHILDREN),
    Right("", "services", ("list", "watch"), "watched", _CHILDREN),
    Right("policy", "poddisruptionbudgets", ("list", "watch"), "watched", _CHILDREN),
    Right("", "configmaps", ("list", "watch"), "watched",
          _CHILDREN + "; RBAC cannot hold a watch to its label selector, so cluster-wide "
          "this reads every ConfigMap"),
    Right("kueue.x-k8s.io", "workloads", ("list", "watch"), "watched",
          "Kueue's Workloads of queued build Jobs: why Kueue holds one (quota, priority, "
          "flavor); where Kueue is not installed, nothing is watched"),
    # -- Secrets and writes, where it serves --------------------------------------------------
    Right("kiln.dev", "enginebuilds/status", ("patch",), "served",
          "observedGeneration, conditions, engines: through the status subresource"),
    Right("kiln.dev", "enginedeployments/status", ("patch",), "served",
          "observedGeneration, conditions, products: through the status subresource"),
    Right("kiln.dev", "enginebuilds", ("patch",), "served",
          "Kopf takes off the finalizer an older kiln (one timer per object) left; kiln never "
          "writes a user's spec or metadata", by="kopf"),
    Right("kiln.dev", "enginedeployments", ("patch",), "served",
          "as for EngineBuilds", by="kopf"),
    Right("batch", "jobs", ("get", "create", "patch", "delete"), "served",
          "one build Job per engine key: read before it is joined, created, its owners "
          "replaced (patch), deleted when no EngineBuild wants it"),
    Right("", "secrets", ("get",), "served",
          "spec.model.credentialsSecret, to compute the weights identity and origin; one "
          "named Secret at a time: no list, no watch, never written"),
    Right("apps", "deployments", ("get", "create", "patch", "delete"), "served",
          "one serving Deployment per GPU product: read, created, server-side applied, "
          "deleted when its product goes"),
    Right("", "services", ("get", "create", "patch"), "served",
          "the EngineDeployment's Service: read, created, server-side applied (garbage "
          "collected with it)"),
    Right("policy", "poddisruptionbudgets", ("get", "create", "patch"), "served",
          "the serving pods' PodDisruptionBudget, as the Service"),
    Right("", "configmaps", ("get", "create", "patch"), "served",
          "the trusted public keys the serving pods verify engines with and trtllm-serve's "
          "LLM API options, one each per EngineDeployment, as the Service"),
    Right("", "events", ("create",), "served",
          "Events about the objects kiln handles (Kopf's and kiln's own)"),
    # -- cluster-scoped ------------------------------------------------------------------------
    Right("", "nodes", ("list", "watch"), "cluster",
          "the GPU pool index: which GPU products (GPU Feature Discovery labels) nodes have"),
    Right("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"), "cluster",
          "Kopf notices kiln's CRDs being installed or upgraded", by="kopf"),
    Right("", "namespaces", ("list", "watch"), "cluster",
          "Kopf follows the named namespaces it serves (cluster-wide it does not look at "
          "Namespaces)", by="kopf", named=True),
    # -- its own namespace -----------------------------------------------------------------------
    Right("coordination.k8s.io", "leases", ("get", "create", "update"), "own",
          "leader election: the operator's Lease (with leaderElection.enabled)"),
    Right("", "secrets", ("get",), "own",
          "the signing key, which the operator creates once itself (without "
          "signing.existingSecret)", names=("{release}-signing",)),
    Right("", "secrets", ("create",), "own",
          "creating the signing key's Secret (RBAC cannot limit create to a name)"),
)


def rights(scope: Scope) -> tuple[Right, ...]:
    return tuple(r for r in RIGHTS if r.scope == scope)


def markdown() -> str:
    """The table of ``docs/security.md`` (between its ``rights`` markers)."""
    rows = ["| API group | resource | verbs | where | why |", "| --- | --- | --- | --- | --- |"]
    for right in RIGHTS:
        notes = []
        if right.names:
            notes.append("only " + ", ".join(f"`{n.replace('{release}', '<release>')}`"
                                             for n in right.names))
        if right.named:
            notes.append("with `watchNamespaces` only")
        if right.by == "kopf":
            notes.append("a call of Kopf's")
        why = right.why + (f" ({'; '.join(notes)})" if notes else "")
        rows.append(f"| `{right.group or 'core'}` | `{right.resource}` | "
                    f"{', '.join(right.verbs)} | {right.scope} | {why} |")
    return "\n".join(rows) + "\n"
