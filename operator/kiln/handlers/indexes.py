"""Every Kopf index kiln keeps, and typed views over them for the reconcilers.

Kopf passes its indexes to handlers as keyword arguments; :class:`Indexes` is the one place
that names them, so the controllers read EngineBuilds, Jobs, EngineDeployments, serving
Deployments and their other children, and GPU nodes through one object, never through Kopf's
kwargs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.domain.labels import ED_LABEL, KEY_LABEL
from kiln.domain.pods import ObservedPod, observe_pod
from kiln.domain.pool import GpuNode, gpu_node
from kiln.engine_build.jobs import ObservedJob, job_name, observe
from kiln.engine_build.pending import CreateFailure
from kiln.engine_build.queued import GROUP as KUEUE_GROUP
from kiln.engine_build.queued import PLURAL as WORKLOADS
from kiln.engine_build.queued import VERSION as KUEUE_VERSION
from kiln.engine_build.queued import ObservedWorkload, job_of, observe_workload
from kiln.engine_deployment.children import ObservedChild, kilns
from kiln.engine_deployment.children import observe as observe_child
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.deployments import observe as observe_deployment


def lean(body: kopf.Body) -> dict[str, Any]:
    """An object as the indexes keep it: without ``metadata.managedFields`` (often half its
    size, and never read)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


@kopf.index("batch", "v1", "jobs", labels={KEY_LABEL: kopf.PRESENT})
def build_jobs(body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, ObservedJob]:
    """Build Jobs by (namespace, engine key) and by each owning EngineBuild's uid. Only the
    Job named after the key stands for it: another one with the key's label is not its Job."""
    job = observe(dict(body))
    entries: dict[Any, ObservedJob] = {("name", namespace, job.name): job}
    if job.key and job.name == job_name(job.key):
        entries[("key", namespace, job.key)] = job
    entries |= {("owner", uid): job for uid in job.owner_uids}
    return entries


@kopf.index("v1", "pods", labels={KEY_LABEL: kopf.PRESENT})
def build_pods(body: kopf.Body, namespace: str | None,
               **_: Any) -> dict[tuple[str, str], ObservedPod]:
    """Build pods (summarized) by (namespace, Job name)."""
    pod = observe_pod(dict(body))
    return {(str(namespace), pod.owner): pod}


@kopf.index("v1", "pods", labels={ED_LABEL: kopf.PRESENT})
def serving_pods(body: kopf.Body, namespace: str | None,
                 **_: Any) -> dict[tuple[str, str], ObservedPod]:
    """Serving pods (summarized) by (namespace, EngineDeployment name)."""
    return {(str(namespace), body["metadata"]["labels"][ED_LABEL]): observe_pod(dict(body))}


def is_build_create_failure(body: Mapping[str, Any], **_: Any) -> bool:
    """A Job controller's ``FailedCreate`` Event about a build Job (Events of everything else
    are dropped as they arrive: nothing of them is kept)."""
    involved = body.get("involvedObject") or {}
    return bool(body.get("reason") == "FailedCreate" and involved.get("kind") == "Job"
                and str(involved.get("name", "")).startswith("kiln-build-"))


def create_failure(body: Mapping[str, Any]) -> CreateFailure:
    stamp = (body.get("lastTimestamp") or (body.get("series") or {}).get("lastObservedTime")
             or body.get("eventTime") or body["metadata"].get("creationTimestamp"))
    last = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    involved = body["involvedObject"]
    return CreateFailure(str(involved["name"]), str(body.get("message") or ""), last,
                         str(involved.get("uid") or "") or None)


def is_build_workload(body: Mapping[str, Any], **_: Any) -> bool:
    """A Kueue Workload of a build Job (where Kueue is installed; else Kopf serves nothing)."""
    return job_of(dict(body)) is not None


@kopf.index(KUEUE_GROUP, KUEUE_VERSION, WORKLOADS, when=is_build_workload)
def build_workloads(body: kopf.Body, namespace: str | None,
                    **_: Any) -> dict[tuple[str, str], ObservedWorkload]:
    """Kueue's Workloads of build Jobs (summarized) by (namespace, Job name)."""
    workload = observe_workload(dict(body))
    return {(str(namespace), workload.job): workload} if workload else {}


@kopf.index("v1", "events", when=is_build_create_failure)
def build_create_failures(body: kopf.Body, namespace: str | None,
                          **_: Any) -> dict[tuple[str, str], CreateFailure]:
    """The Job controller's latest ``FailedCreate`` per build Job, by (namespace, Job)."""
    found = create_failure(body)
    return {(str(namespace), found.job): found}


@kopf.index(GROUP, VERSION, EB_PLURAL)
def engine_builds(body: kopf.Body, namespace: str | None, name: str,
                  **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """EngineBuilds by (namespace, name)."""
    return {(namespace, name): lean(body)}


@kopf.index(GROUP, VERSION, ED_PLURAL)
def engine_deployments(body: kopf.Body, namespace: str | None, name: str,
                       **_: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    """EngineDeployments by name, and by the EngineBuild they reference."""
    ref = (body.get("spec") or {}).get("engineBuildRef", {}).get("name", "")
    kept = lean(body)
    return {("name", str(namespace), name): kept, ("ref", str(namespace), ref): kept}


@kopf.index("apps", "v1", "deployments", labels={ED_LABEL: kopf.PRESENT})
def serving_deployments(body: kopf.Body, namespace: str | None,
                        **_: Any) -> dict[tuple[str, str], ObservedDeployment]:
    """Serving Deployments by (namespace, EngineDeployment name)."""
    owner = body["metadata"]["labels"][ED_LABEL]
    return {(str(namespace), owner): observe_deployment(dict(body))}


def _child(kind: str, body: kopf.Body, namespace: str | None
           ) -> dict[tuple[str, str], ObservedChild]:
    """A serving child by (namespace, EngineDeployment name): kiln's part of it only, and
    only of the children kiln names, under its controller reference."""
    if not kilns(kind, dict(body)):
        return {}
    owner = body["metadata"]["labels"][ED_LABEL]
    return {(str(namespace), owner): observe_child(kind, dict(body))}


@kopf.index("v1", "services", labels={ED_LABEL: kopf.PRESENT})
def serving_services(body: kopf.Body, namespace: str | None,
                     **_: Any) -> dict[tuple[str, str], ObservedChild]:
    return _child("Service", body, namespace)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels={ED_LABEL: kopf.PRESENT})
def serving_budgets(body: kopf.Body, namespace: str | None,
                    **_: Any) -> dict[tuple[str, str], ObservedChild]:
    return _child("PodDisruptionBudget", body, namespace)


@kopf.index("v1", "configmaps", labels={ED_LABEL: kopf.PRESENT})
def serving_configmaps(body: kopf.Body, namespace: str | None,
                       **_: Any) -> dict[tuple[str, str], ObservedChild]:
    """The trust and LLM API ConfigMaps."""
    return _child("ConfigMap", body, namespace)


@kopf.index("v1", "nodes")
def gpu_nodes(body: kopf.Body, **_: Any) -> dict[str, GpuNode]:
    """GPU nodes by ``nvidia.com/gpu.product``."""
    node = gpu_node(dict(body))
    return {node.product: node} if node else {}


CHILD_INDEXES = ("serving_services", "serving_budgets", "serving_configmaps")
"""The indexes of an EngineDeployment's children besides its Deployments."""


def _values(index: kopf.Index[Any, Any], key: Any) -> list[Any]:
    return list(index.get(key, ()))


def _last(index: kopf.Index[Any, Any], key: Any) -> Any:
    found = _values(index, key)
    return found[-1] if found else None


class Indexes:
    """The indexes, from the keyword arguments Kopf gives a startup handler (which keep
    filling while the operator runs). Implements ``JobLookup`` and ``World``."""

    def __init__(self, kwargs: Mapping[str, Any]) -> None:
        self._jobs: kopf.Index[Any, ObservedJob] = kwargs["build_jobs"]
        self._builds: kopf.Index[Any, dict[str, Any]] = kwargs["engine_builds"]
        self._deployments: kopf.Index[Any, dict[str, Any]] = kwargs["engine_deployments"]
        self._serving: kopf.Index[Any, ObservedDeployment] = kwargs["serving_deployments"]
        self._children: tuple[kopf.Index[Any, ObservedChild], ...] = tuple(
            kwargs[index] for index in CHILD_INDEXES)
        self._nodes: kopf.Index[str, GpuNode] = kwargs["gpu_nodes"]
        self._build_pods: kopf.Index[Any, ObservedPod] = kwargs["build_pods"]
        self._serving_pods: kopf.Index[Any, ObservedPod] = kwargs["serving_pods"]
        self._create_failures: kopf.Index[Any, CreateFailure] = kwargs["build_create_failures"]
        self._workloads: kopf.Index[Any, ObservedWorkload] = kwargs["build_workloads"]

    # -- build Jobs (JobLookup) ----------------------------------------------------------------
    def by_key(self, namespace: str, key: str) -> ObservedJob | None:
        found: ObservedJob | None = _last(self._jobs, ("key", namespace, key))
        return found

    def owned_by(self, uid: str) -> list[ObservedJob]:
        return _values(self._jobs, ("owner", uid))

    def job_named(self, namespace: str, name: str) -> ObservedJob | None:
        found: ObservedJob | None = _last(self._jobs, ("name", namespace, name))
        return found

    def job_pods(self, namespace: str, job: str) -> list[ObservedPod]:
        return _values(self._build_pods, (namespace, job))

    def create_failure(self, namespace: str, job: str) -> CreateFailure | None:
        found = _values(self._create_failures, (namespace, job))
        return max(found, key=lambda f: f.last.timestamp() if f.last else 0.0, default=None)

    def serving_pods(self, namespace: str, owner: str) -> list[ObservedPod]:
        return _values(self._serving_pods, (namespace, owner))

    def workload(self, namespace: str, job: str) -> ObservedWorkload | None:
        found: ObservedWorkload | None = _last(self._workloads, (namespace, job))
        return found

    # -- EngineBuilds ----------------------------------------------------------------------------
    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = _last(self._builds, (namespace, name))
        return found

    def every_engine_build(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        return [(ref, body) for ref in list(self._builds) for body in _values(self._builds, ref)]

    # -- EngineDeployments and what they serve on (World) ------------------------------------
    def gpu_nodes(self) -> list[GpuNode]:
        return [node for product in list(self._nodes) for node in _values(self._nodes, product)]

    def deployments(self, namespace: str, owner: str) -> list[ObservedDeployment]:
        return _values(self._serving, (namespace, owner))

    def children(self, namespace: str, owner: str) -> list[ObservedChild]:
        return [child for index in self._children for child in _values(index, (namespace, owner))]

    def referencing(self, namespace: str, build: str) -> list[dict[str, Any]]:
        return _values(self._deployments, ("ref", namespace, build))

    def every(self) -> list[dict[str, Any]]:
        return [body for key in list(self._deployments) if key[0] == "name"
                for body in _values(self._deployments, key)]

    def named(self, namespace: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = _last(self._deployments, ("name", namespace, name))
        return found
