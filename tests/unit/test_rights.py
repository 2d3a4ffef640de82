"""``kiln.kube.rights.RIGHTS`` is what the code uses: every API call the adapters make and
every resource Kopf watches is covered by a right, and every right is used. The chart's RBAC
is checked against the same table (``tests/chart``), and ``docs/security.md`` lists it.

The calls are found by running each adapter against a recorder (the paths it asks for), and
their call sites in the code by its syntax tree: a new call site fails here until it is driven.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf

import kiln.handlers
from kiln.gc import collect
from kiln.handlers import relists
from kiln.kube import rights
from kiln.kube.client import APPLY, ApiError, Kube
from kiln.kube.lease import Elector, Timing

OPERATOR = Path(kiln.handlers.__file__).resolve().parents[1]

Use = tuple[str, str, str, str]
"""(group, resource[/subresource], verb, where): where is ``namespace`` or ``cluster``."""

CALL_SITES = {
    ("kube/client.py", "_read"), ("kube/lease.py", "_request"),
    ("handlers/relists.py", "list_uids"), ("gc/collect.py", "referenced"),
}
"""Every function that calls the API (``...api.request``) besides the methods of ``Kube``."""


class Recorder:
    """Answers every list with nothing, every read but a Secret's with a 404 (the Lease's
    after it was written), every write with an empty object."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lease: dict[str, Any] | None = None
        self.missing: set[str] = set()

    def request(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        self.calls.append((method, path))
        if method == "PATCH" and options.get("content_type") == APPLY and path in self.missing:
            # an apply that creates is authorized as a create too (the apiserver's patch
            # handler checks "create" when the object does not exist)
            self.calls.append(("POST", path.rsplit("/", 1)[0]))
        if "/leases/" in path and method == "GET":
            if self.lease is None:
                raise ApiError(404, "Not Found", "{}")
            return self.lease
        if "/leases" in path and method in ("POST", "PUT"):
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        if "/secrets/" in path:
            return {"metadata": {"resourceVersion": "1"}, "data": {}}
        if method == "GET" and use(method, path)[2] == "get":
            self.missing.add(path)
            raise ApiError(404, "Not Found", "{}")  # apply creates, reads find nothing
        return {"items": []} if method == "GET" else {}


def use(method: str, path: str) -> Use:
    match = re.fullmatch(r"/apis?(?:/([^/]+))?/v[^/]+(?:/namespaces/([^/]+))?/([^/]+)"
                         r"(?:/([^/]+)(?:/([^/]+))?)?", path)
    assert match, path
    group, namespace, resource, name, sub = match.groups()
    if path.startswith("/api/"):
        group = ""
    verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "delete"}[method]
    return (group or "", f"{resource}/{sub}" if sub else resource, verb,
            "namespace" if namespace else "cluster")


OWNED = {"kind": "Deployment", "metadata": {
    "name": "d", "namespace": "ns", "ownerReferences": [
        {"kind": "EngineDeployment", "name": "e", "uid": "u", "controller": True}]}}

DRIVES: dict[str, Callable[[Kube], Any]] = {
    "list_custom": lambda k: k.list_custom("enginebuilds"),
    "list_build_jobs": lambda k: k.list_build_jobs("kiln.dev/key"),
    "create_job": lambda k: k.create_job({"metadata": {"namespace": "ns", "name": "j"}}),
    "read_job": lambda k: k.read_job("ns", "j"),
    "set_job_owners": lambda k: k.set_job_owners("ns", "j", [], "1"),
    "delete_job": lambda k: k.delete_job("ns", "j", uid="u", resource_version="1"),
    "job_pods": lambda k: k.job_pods("ns", "j"),
    "secret_version": lambda k: k.secret_version("ns", "s"),
    "create_secret": lambda k: k.create_secret("ns", {"metadata": {"name": "s"}}),
    "secret_data": lambda k: k.secret_data("ns", "s"),
    "patch_status": lambda k: [k.patch_status(p, "ns", "n", {})
                               for p in ("enginebuilds", "enginedeployments")],
    "apply": lambda k: [k.apply({**OWNED, "kind": kind}) for kind in
                        ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap")],
    "read_child": lambda k: k.read_child("Deployment", "ns", "d"),
    "delete_deployment": lambda k: k.delete_deployment("ns", "d", uid="u"),
    "post_event": lambda k: k.post_event(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}},
        "Normal", "R", "m"),
}
"""Each method of ``Kube``, called once: ``test_every_kube_method_is_driven`` keeps it whole."""


def _apply_twice(kube: Kube, recorder: Recorder) -> None:
    """``apply`` creates when nothing is there, and applies over its own object."""
    original = recorder.request

    def existing(method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if method == "GET" and path.rsplit("/", 1)[-1] == "d":
            recorder.calls.append((method, path))
            return {**OWNED, "metadata": {**OWNED["metadata"], "resourceVersion": "1",
                                          "ownerReferences": [{"uid": "u", "controller": True}]}}
        return original(method, path, body, **kwargs)

    recorder.request = existing  # type: ignore[method-assign]
    DRIVES["apply"](kube)
    recorder.request = original  # type: ignore[method-assign]


def code_uses() -> set[Use]:
    """Every (group, resource, verb, where) the adapters ask the API for."""
    recorder = Recorder()
    kube = Kube(recorder)  # type: ignore[arg-type]
    for drive in DRIVES.values():
        drive(kube)
    _apply_twice(kube, recorder)
    elector = Elector(recorder, "kiln-system", "kiln", "me",  # type: ignore[arg-type]
                      Timing(lease=15, renew_deadline=10, retry=2), lambda: None, lambda: None)
    elector.step()  # creates the Lease
    elector.step()  # renews it
    elector.release()
    original = relists.context.kube
    relists.context.kube = lambda: kube  # type: ignore[attr-defined]
    try:
        for kind in relists.KINDS.values():
            relists.list_uids(kind, "ns" if kind.namespaced else None)
    finally:
        relists.context.kube = original  # type: ignore[attr-defined]
    collect.referenced(kube)
    return {use(method, path) for method, path in recorder.calls}


def kopf_uses() -> set[Use]:
    """list and watch of every resource a Kopf handler or index watches."""
    registry = kopf.get_default_registry()
    found: set[Use] = set()
    for handlers in (registry._watching, registry._indexing):
        for handler in handlers.get_all_handlers():
            selector = handler.selector
            assert selector is not None and selector.any_name, handler
            where = "cluster" if selector.any_name == "nodes" else "namespace"
            found |= {(selector.group or "", selector.any_name, verb, where)
                      for verb in ("list", "watch")}
    return found


def covered(used: Use) -> list[rights.Right]:
    group, resource, verb, where = used
    scopes = ("cluster",) if where == "cluster" and not _namespaced(resource) else (
        "watched", "served", "own")
    if where == "cluster" and _namespaced(resource):  # across all namespaces: a list
        scopes = ("watched",)
    return [r for r in rights.RIGHTS if r.group == group and r.resource == resource
            and verb in r.verbs and r.scope in scopes]


def _namespaced(resource: str) -> bool:
    return resource.split("/", maxsplit=1)[0] not in {
        r.resource for r in rights.RIGHTS if r.scope == "cluster"}


def test_every_call_is_covered_by_a_right() -> None:
    uses = code_uses() | kopf_uses()
    assert len(uses) > 30
    uncovered = sorted(u for u in uses if not covered(u))
    assert uncovered == [], "add these to kiln.kube.rights.RIGHTS (and the chart)"


def test_every_right_is_used() -> None:
    uses = code_uses() | kopf_uses()
    unused = []
    for right in rights.RIGHTS:
        if right.by == "kopf":
            continue
        for verb in right.verbs:
            if not any(right in covered(u) for u in uses if u[2] == verb):
                unused.append((right.group, right.resource, verb, right.scope))
    assert unused == [], "nothing in the code uses these: take them out of RIGHTS and the chart"


def test_only_kopf_uses_what_kiln_does_not_call() -> None:
    """Rights for Kopf's own calls (finalizers, CRD and Namespace scanning): exactly these."""
    by_kopf = {(r.group, r.resource, r.verbs) for r in rights.RIGHTS if r.by == "kopf"}
    assert by_kopf == {
        ("kiln.dev", "enginebuilds", ("patch",)), ("kiln.dev", "enginedeployments", ("patch",)),
        ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
        ("", "namespaces", ("list", "watch")),
    }


def test_no_secret_and_no_write_is_read_where_kiln_only_watches() -> None:
    for right in rights.rights("watched"):
        assert set(right.verbs) <= {"list", "watch"}, right
        assert right.resource != "secrets", right
    for right in rights.RIGHTS:
        assert right.why and "*" not in right.resource + "".join(right.verbs), right
        assert not (right.resource == "secrets" and {"list", "watch"} & set(right.verbs))


def test_every_kube_method_is_driven() -> None:
    methods = {name for name, value in vars(Kube).items()
               if callable(value) and not name.startswith("_")}
    assert methods == set(DRIVES), "drive the new method in DRIVES"


def _call_sites() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in OPERATOR.rglob("*.py"):
        if "dev" in path.relative_to(OPERATOR).parts:  # the test bed's own admin calls
            continue
        tree = ast.parse(path.read_text())
        for scope in ast.walk(tree):
            if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for node in ast.walk(scope):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "request"
                        and isinstance(node.func.value, ast.Attribute | ast.Call)
                        and "api" in ast.unparse(node.func.value).split(".")[-1]):
                    found.add((str(path.relative_to(OPERATOR)), scope.name))
    return found


def test_every_call_site_is_driven() -> None:
    """A new ``api.request`` call outside the functions driven above fails here."""
    classes = {("kube/client.py", "Kube"), ("kube/lease.py", "Elector")}
    driven = CALL_SITES | classes | {("kube/client.py", m) for m in DRIVES}
    undriven = sorted(_call_sites() - driven)
    assert undriven == [], "drive these in code_uses() and add them to CALL_SITES"


def test_docs_list_every_right() -> None:
    """docs/security.md holds ``rights.markdown()`` between its markers."""
    text = (OPERATOR.parents[1] / "docs" / "security.md").read_text()
    begin, end = "<!-- rights: kiln.kube.rights.markdown() -->\n", "<!-- /rights -->"
    assert begin in text and end in text
    block = text.split(begin, 1)[1].split(end, 1)[0]
    assert block == rights.markdown(), "paste kiln.kube.rights.markdown() into docs/security.md"
