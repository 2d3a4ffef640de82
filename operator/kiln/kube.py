"""The Kubernetes adapter: the few API calls the controllers make, with kiln's errors.

Blocking (``kiln.kubeapi``): call from worker threads, never from Kopf's event loop.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import urllib3

from kiln import GROUP, VERSION
from kiln.errors import AccessDenied, InvalidInput, KilnError, NotFound, Unavailable
from kiln.kubeapi import ApiError, Client, load

log = logging.getLogger(__name__)
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"  # JSON is YAML
BACKGROUND = {"propagationPolicy": "Background"}


def load_config() -> Client:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    return Client(load())


def translate(error: ApiError, what: str) -> KilnError:
    """An API error as one of kiln's."""
    if error.status == 404:
        return NotFound(f"{what}: not found")
    if error.status in (401, 403):
        return AccessDenied(f"{what}: {error.reason} ({error.message})")
    if error.status in (400, 422):
        # The apiserver refuses what kiln rendered from the spec: the same request fails the
        # same way until the spec changes.
        return InvalidInput(f"{what}: {error.message}", reason="Invalid")
    return Unavailable(f"{what}: {error.status} {error.reason} ({error.message})")


def _jobs(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


def _child(kind: str, namespace: str, name: str) -> str:
    base, plural = {"Deployment": ("/apis/apps/v1", "deployments"),
                    "Service": ("/api/v1", "services"),
                    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets")}[kind]
    return f"{base}/namespaces/{namespace}/{plural}/{name}"


def _custom(plural: str, namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"


class Kube:
    """Calls on Jobs, Pods, Secrets and kiln's own objects."""

    def __init__(self, api: Client) -> None:
        self.api = api

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create the Job; False if one of that name exists already."""
        meta = job["metadata"]
        try:
            self.api.request("POST", _jobs(meta["namespace"]), job)
        except ApiError as error:
            if error.status == 409:
                return False
            raise translate(error, f"create Job {meta['namespace']}/{meta['name']}") from error
        return True

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = self.api.request("GET", f"{_jobs(namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, f"read Job {namespace}/{name}") from error
        return job

    def set_job_owners(self, namespace: str, name: str, owners: list[dict[str, Any]],
                       resource_version: str) -> bool:
        """Replace the Job's owners (compare-and-swap on ``resource_version``); False if the
        Job changed meanwhile or is gone."""
        body = {"metadata": {"ownerReferences": owners, "resourceVersion": resource_version}}
        try:
            self.api.request("PATCH", f"{_jobs(namespace)}/{name}", body, content_type=MERGE)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise translate(error, f"update owners of Job {namespace}/{name}") from error
        return True

    def delete_job(self, namespace: str, name: str, *, uid: str | None = None,
                   resource_version: str | None = None) -> bool:
        """Delete the Job (its pods in the background); with ``uid`` and
        ``resource_version``, only if it is still that Job as it was read: False if it
        changed meanwhile. A Job already gone counts as deleted."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version))
                         if v is not None}
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": "Background", "preconditions": preconditions}
        try:
            self.api.request("DELETE", f"{_jobs(namespace)}/{name}", body)
        except ApiError as error:
            if error.status == 409:
                return False
            if error.status != 404:
                raise translate(error, f"delete Job {namespace}/{name}") from error
        return True

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        try:
            pods = self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                    query={"labelSelector": f"job-name={job}"})
        except ApiError as error:
            raise translate(error, f"list pods of Job {namespace}/{job}") from error
        return list(pods.get("items") or [])

    def secret_version(self, namespace: str, name: str) -> str | None:
        """A Secret's resourceVersion (None: it does not exist): one cheap read, to tell
        whether credentials changed while an object backs off."""
        try:
            secret = self.api.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, f"read Secret {namespace}/{name}") from error
        return str((secret.get("metadata") or {}).get("resourceVersion") or "")

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self.api.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            raise translate(error, f"read Secret {namespace}/{name}") from error
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> None:
        """Merge-patch ``status`` of a kiln object (lists are replaced whole)."""
        try:
            self.api.request("PATCH", _custom(plural, namespace, name) + "/status",
                             {"status": status}, content_type=MERGE)
        except ApiError as error:
            if error.status == 404:
                return
            raise translate(error, f"patch status of {plural} {namespace}/{name}") from error

    # -- serving (EngineDeployment): server-side apply of children, EngineBuild reads ---------

    def apply(self, obj: dict[str, Any], manager: str = "kiln") -> None:
        """Server-side apply a Deployment, Service or PodDisruptionBudget (kiln's fields win)."""
        meta = obj["metadata"]
        namespace, name, kind = meta["namespace"], meta["name"], obj["kind"]
        try:
            self.api.request("PATCH", _child(kind, namespace, name), obj,
                             query={"fieldManager": manager, "force": "true"},
                             content_type=APPLY)
        except ApiError as error:
            raise translate(error, f"apply {kind} {namespace}/{name}") from error

    def read_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment, Service or PodDisruptionBudget as it is now, or None."""
        try:
            obj: dict[str, Any] = self.api.request("GET", _child(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, f"read {kind} {namespace}/{name}") from error
        return obj

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.api.request("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                             query=BACKGROUND)
        except ApiError as error:
            if error.status != 404:
                raise translate(error, f"delete Deployment {namespace}/{name}") from error

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str,
                   component: str = "kiln") -> None:
        """A core/v1 Event about ``body`` (what Kopf posts, for callers outside its handlers);
        best effort, as Kopf's are: a failure is logged, not raised."""
        meta = body["metadata"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except (ApiError, urllib3.exceptions.HTTPError) as error:
            log.warning("could not post Event %s about %s/%s: %s", reason, meta["namespace"],
                        meta["name"], error)

    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A kiln object as it is now, or None."""
        try:
            obj: dict[str, Any] = self.api.request("GET", _custom(plural, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, f"read {plural} {namespace}/{name}") from error
        return obj

    def patch_status_at(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                        resource_version: str) -> bool:
        """Merge-patch ``status`` if the object is still at ``resource_version``; False if it
        changed meanwhile (or is gone)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            self.api.request("PATCH", _custom(plural, namespace, name) + "/status", body,
                             content_type=MERGE)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise translate(error, f"patch status of {plural} {namespace}/{name}") from error
        return True
