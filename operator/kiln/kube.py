"""The Kubernetes adapter: the few API calls the controllers make, with kiln's errors.

Blocking (the ``kubernetes`` client): call from Kopf's sync handlers, which run in threads.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config

from kiln import GROUP, VERSION
from kiln.errors import AccessDenied, KilnError, NotFound, Unavailable

log = logging.getLogger(__name__)


def load_config() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def translate(error: client.ApiException, what: str) -> KilnError:
    """An API error as one of kiln's."""
    if error.status == 404:
        return NotFound(f"{what}: not found")
    if error.status in (401, 403):
        return AccessDenied(f"{what}: {error.reason} ({_message(error)})")
    return Unavailable(f"{what}: {error.status} {error.reason} ({_message(error)})")


def _message(error: client.ApiException) -> str:
    return str(error.body)[:300] if error.body else ""


class Kube:
    """Calls on Jobs, Pods, Secrets and kiln's own objects."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.policy = client.PolicyV1Api(api_client)

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create the Job; False if one of that name exists already."""
        meta = job["metadata"]
        try:
            self.batch.create_namespaced_job(meta["namespace"], job)
        except client.ApiException as error:
            if error.status == 409:
                return False
            raise translate(error, f"create Job {meta['namespace']}/{meta['name']}") from error
        return True

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job = self.batch.read_namespaced_job(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise translate(error, f"read Job {namespace}/{name}") from error
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(job)
        return result

    def set_job_owners(self, namespace: str, name: str, owners: list[dict[str, Any]],
                       resource_version: str) -> None:
        """Replace the Job's owners (compare-and-swap on ``resource_version``)."""
        body = {"metadata": {"ownerReferences": owners, "resourceVersion": resource_version}}
        try:
            self.batch.patch_namespaced_job(name, namespace, body)
        except client.ApiException as error:
            raise translate(error, f"update owners of Job {namespace}/{name}") from error

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except client.ApiException as error:
            if error.status != 404:
                raise translate(error, f"delete Job {namespace}/{name}") from error

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}")
        except client.ApiException as error:
            raise translate(error, f"list pods of Job {namespace}/{job}") from error
        result: list[dict[str, Any]] = [
            self.api_client.sanitize_for_serialization(p) for p in pods.items]
        return result

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except client.ApiException as error:
            raise translate(error, f"read Secret {namespace}/{name}") from error
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> None:
        """Merge-patch ``status`` of a kiln object (lists are replaced whole)."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status})
        except client.ApiException as error:
            if error.status == 404:
                return
            raise translate(error, f"patch status of {plural} {namespace}/{name}") from error

    # -- serving (EngineDeployment): server-side apply of children, EngineBuild reads ---------

    def apply(self, obj: dict[str, Any], manager: str = "kiln") -> None:
        """Server-side apply a Deployment, Service or PodDisruptionBudget (kiln's fields win)."""
        meta = obj["metadata"]
        namespace, name, kind = meta["namespace"], meta["name"], obj["kind"]
        patch = {"Deployment": self.apps.patch_namespaced_deployment,
                 "Service": self.core.patch_namespaced_service,
                 "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget}[kind]
        try:
            patch(name, namespace, obj, field_manager=manager, force=True,
                  _content_type="application/apply-patch+yaml")
        except client.ApiException as error:
            raise translate(error, f"apply {kind} {namespace}/{name}") from error

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, namespace,
                                                   propagation_policy="Background")
        except client.ApiException as error:
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
            self.core.create_namespaced_event(meta["namespace"], event)
        except (client.ApiException, urllib3.exceptions.HTTPError) as error:
            log.warning("could not post Event %s about %s/%s: %s", reason, meta["namespace"],
                        meta["name"], error)

    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A kiln object as it is now, or None."""
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name)
        except client.ApiException as error:
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
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body)
        except client.ApiException as error:
            if error.status in (404, 409):
                return False
            raise translate(error, f"patch status of {plural} {namespace}/{name}") from error
        return True
