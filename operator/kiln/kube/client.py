"""The Kubernetes adapter: the few API calls the controllers make, with kiln's errors.

Over the official ``kubernetes`` client, with raw JSON in and out (its generated models would
cost a parse and an object graph per Job and pod). Blocking: call from worker threads, never
from Kopf's event loop. Writes pass ``fence`` first: a replica that is not (or no longer)
the leader makes none.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client import ApiException

from kiln import GROUP, VERSION
from kiln.errors import (
    AccessDenied,
    InvalidInput,
    KilnError,
    NameTaken,
    NotFound,
    NotLeader,
    Unavailable,
)
from kiln.kube.auth import Credentials

log = logging.getLogger(__name__)
JSON = "application/json"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"  # JSON is YAML
BACKGROUND = {"propagationPolicy": "Background"}
MANAGER = "kiln"
"""The field manager of every write (one for all replicas: ownership never moves)."""
TIMEOUT = (10.0, 60.0)
"""Connect and read timeouts of one request."""
_BASES = {"Deployment": "/apis/apps/v1", "Service": "/api/v1",
          "PodDisruptionBudget": "/apis/policy/v1", "ConfigMap": "/api/v1"}
_PLURALS = {"Deployment": "deployments", "Service": "services",
            "PodDisruptionBudget": "poddisruptionbudgets", "ConfigMap": "configmaps"}


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.body = status, reason, body

    @property
    def message(self) -> str:
        """The Status message if the body is one, else the body's start."""
        try:
            return str(json.loads(self.body).get("message", ""))[:300]
        except (ValueError, AttributeError):
            return self.body[:300]


def load_config() -> Credentials:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    return Credentials()


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


def _custom(plural: str, namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"


class Client:
    """JSON requests through the official client; a 401 renews the credentials and retries
    once. Safe to share between threads."""

    def __init__(self, credentials: Credentials,
                 fence: Callable[[], bool] = lambda: True,
                 write_timeout: Callable[[], float | None] = lambda: None) -> None:
        self.credentials = credentials
        self.fence = fence
        """Whether this replica may write now (the leader's lease is valid)."""
        self.write_timeout = write_timeout
        """The most a fenced write may take, connect to answer (None: ``TIMEOUT``). A write
        that passed the fence must be over before another replica can take the Lease; the
        credentials' client makes one attempt only (no urllib3 retries)."""

    def request(self, method: str, path: str, body: Any = None, *,
                query: dict[str, str] | None = None, content_type: str = JSON,
                timeout: float | tuple[float, float] = TIMEOUT, fenced: bool = True) -> Any:
        """The decoded JSON answer (None if empty); ``ApiError`` for an error status,
        urllib3's errors when the server cannot be reached, ``NotLeader`` for a write
        while the fence is closed (the Lease's own writes pass ``fenced=False``)."""
        params = dict(query or {})
        if method in ("POST", "PUT", "PATCH") and content_type != APPLY:
            params.setdefault("fieldManager", MANAGER)
        headers = {"Accept": JSON, "Content-Type": content_type}
        if method != "GET" and fenced:
            limit = self.write_timeout()
            if limit is not None:  # one total: urllib3 bounds connect and read together
                whole = sum(timeout) if isinstance(timeout, tuple) else timeout
                timeout = min(whole, limit)
        for attempt in (1, 2):
            api = self.credentials.api()
            if method != "GET" and fenced and not self.fence():  # checked last before sending
                raise NotLeader(f"{method} {path}: this replica does not hold the Lease")
            try:
                response = api.call_api(
                    path, method, query_params=list(params.items()), header_params=headers,
                    body=body, auth_settings=["BearerToken"], _preload_content=False,
                    _request_timeout=timeout)
            except ApiException as error:
                if error.status == 401 and attempt == 1:
                    log.info("Unauthorized: renewing credentials")
                    self.credentials.refresh(api)
                    continue
                if not error.status:  # the client's own: no answer (a TLS or proxy error)
                    raise urllib3.exceptions.HTTPError(str(error.reason)) from error
                text = error.body if isinstance(error.body, str) else (
                    (error.body or b"").decode("utf-8", errors="replace"))
                raise ApiError(error.status, error.reason or "", text) from error
            data = response.data
            return json.loads(data) if data else None
        raise AssertionError("unreachable")

class Kube:
    """Calls on Jobs, Pods, Secrets and kiln's own objects."""

    def __init__(self, api: Client) -> None:
        self.api = api

    def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """Every kiln object of a kind, in every namespace."""
        try:
            found = self.api.request("GET", f"/apis/{GROUP}/{VERSION}/{plural}")
        except ApiError as error:
            raise translate(error, f"list {plural}") from error
        return list(found.get("items") or [])

    def list_build_jobs(self, label: str) -> list[dict[str, Any]]:
        """Every Job carrying ``label``, in every namespace."""
        try:
            found = self.api.request("GET", "/apis/batch/v1/jobs",
                                     query={"labelSelector": label})
        except ApiError as error:
            raise translate(error, "list build Jobs") from error
        return list(found.get("items") or [])

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

    def create_secret(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Secret; False if one of that name exists (nothing of it is changed)."""
        try:
            self.api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
        except ApiError as error:
            if error.status == 409:
                return False
            raise translate(error, f"create Secret {namespace}/{body['metadata']['name']}") \
                from error
        return True

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self.api.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            raise translate(error, f"read Secret {namespace}/{name}") from error
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch ``status`` of a kiln object (lists are replaced whole); the object as
        written (None when it is gone)."""
        try:
            answer = self.api.request("PATCH", _custom(plural, namespace, name) + "/status",
                                      {"status": status}, content_type=MERGE)
            return answer if isinstance(answer, dict) else None
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, f"patch status of {plural} {namespace}/{name}") from error

    # -- serving (EngineDeployment): server-side apply of children, EngineBuild reads ---------

    def apply(self, obj: dict[str, Any], manager: str = "kiln") -> None:
        """Create a Deployment, Service, PodDisruptionBudget or ConfigMap, or server-side apply
        it (kiln's fields win) when it carries ``obj``'s owner reference already. Never adopts:
        an object of that name without it is someone else's, left as it is (``NameTaken``)."""
        meta = obj["metadata"]
        namespace, name, kind = meta["namespace"], meta["name"], obj["kind"]
        path = f"{_BASES[kind]}/namespaces/{namespace}/{_PLURALS[kind]}"
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")),
                     None)
        for _ in range(3):  # created or replaced by someone else since the read: again
            existing = self._read(f"{path}/{name}", f"read {kind} {namespace}/{name}")
            if existing is None:
                # Created by an apply too, so that kiln's apply owns every field it rendered
                # and a field it stops rendering (an init container, a volume) is removed: a
                # POST would leave them owned by an "Update" of kiln, which no apply removes.
                # Not forced: an object of that name created meanwhile by someone else
                # conflicts (409) and is read again, then refused as NameTaken.
                try:
                    self.api.request("PATCH", f"{path}/{name}", obj,
                                     query={"fieldManager": manager}, content_type=APPLY)
                    return
                except ApiError as error:
                    if error.status == 409:
                        continue
                    raise translate(error, f"create {kind} {namespace}/{name}") from error
            uids = {r.get("uid") for r in existing["metadata"].get("ownerReferences") or []
                    if r.get("controller") is True}  # kiln's reference is its controller's
            if owner is None or owner["uid"] not in uids:
                whose = f"{owner['kind']} {owner['name']}" if owner else "kiln"
                raise NameTaken(
                    f"{kind} {namespace}/{name} exists and is not {whose}'s (no owner reference "
                    f"to it): kiln changes nothing of it; delete or rename it, or rename the "
                    f"{owner['kind'] if owner else 'object'}")
            # What was read is the precondition: an object changed since (replaced by another
            # of its name, or a controller's status update) is read again, not patched.
            body = {**obj, "metadata": {**meta,
                                        "resourceVersion": existing["metadata"]["resourceVersion"]}}
            try:
                self.api.request("PATCH", f"{path}/{name}", body,
                                 query={"fieldManager": manager, "force": "true"},
                                 content_type=APPLY)
            except ApiError as error:
                if error.status in (404, 409):  # deleted or changed since the read
                    continue
                raise translate(error, f"apply {kind} {namespace}/{name}") from error
            return
        raise Unavailable(f"{kind} {namespace}/{name} changed between each read and write "
                          "(3 attempts)", reason="Conflict")

    def _read(self, path: str, what: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise translate(error, what) from error
        return found

    def read_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment, Service, PodDisruptionBudget or ConfigMap as it is now, or None."""
        return self._read(f"{_BASES[kind]}/namespaces/{namespace}/{_PLURALS[kind]}/{name}",
                          f"read {kind} {namespace}/{name}")

    def delete_deployment(self, namespace: str, name: str, *, uid: str | None = None,
                          resource_version: str | None = None) -> None:
        """Delete a Deployment; with ``uid`` (and ``resource_version``), only if it is still
        that object as read (a 409 otherwise, raised as ``Unavailable``: read it again)."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version))
                         if v is not None}
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions}
        try:
            self.api.request("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                             body if preconditions else None, query=BACKGROUND)
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
        except (ApiError, NotLeader, urllib3.exceptions.HTTPError) as error:
            log.warning("could not post Event %s about %s/%s: %s", reason, meta["namespace"],
                        meta["name"], error)
