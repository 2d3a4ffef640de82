"""Helpers for the chart tests: the test bed's helm, rendering, the operator's permissions.

``NEEDS`` is what kiln's operator does with the API (``kiln.kube.rights``, which
``tests/unit/test_rights.py`` finds in the code): the RBAC tests check the chart's
ServiceAccount against it with ``kubectl auth can-i``. ``install_rbac`` gives a kubeconfig
that acts as that ServiceAccount (e.g. to run the operator with exactly the chart's
permissions); ``serve`` binds it in one more namespace, as an admin does.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.dev.testbed.binaries import Binaries, ensure_built
from kiln.dev.testbed.cluster import Cluster
from kiln.kube import rights

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kiln"


@functools.cache
def binaries() -> Binaries:
    return ensure_built()


@functools.cache
def kube_version() -> str:
    """The Kubernetes version of the test bed (its kubectl's), for ``helm --kube-version``:
    the test bed's helm is built without the version stamp a release carries."""
    out = subprocess.run([str(binaries()["kubectl"]), "version", "--client", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    version: str = json.loads(out)["clientVersion"]["gitVersion"]
    return version.lstrip("v")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(binaries()["helm"]), *args], capture_output=True, text=True,
                            check=False, timeout=300)
    if check and result.returncode:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}")
    return result


def render_text(values: dict[str, Any] | None = None, *, release: str = "kiln",
                namespace: str = "kiln-system", show_only: Sequence[str] = (),
                include_crds: bool = False, check: bool = True,
                ) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(CHART), "--namespace", namespace,
            "--kube-version", kube_version(), "--values", "-"]
    for template in show_only:
        args += ["--show-only", template]
    if include_crds:
        args.append("--include-crds")
    return subprocess.run([str(binaries()["helm"]), *args], input=yaml.safe_dump(values or {}),
                          capture_output=True, text=True, check=check, timeout=120)


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values``, as a list of objects."""
    text = render_text(values, **kwargs).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind
               and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in the rendered chart"
    return matches[0]


# -- permissions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """One request the operator makes: ``verb`` on ``group``/``resource`` (``subresource``);
    ``scope`` is ``namespace`` (in a watched namespace), ``all`` (across all namespaces,
    for cluster-wide watches) or ``cluster`` (a cluster-scoped resource)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    scope: str = "namespace"

    def __str__(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.subresource:
            what += f"/{self.subresource}"
        return f"{self.verb} {what} ({self.scope})"

    def can_i_args(self, namespace: str) -> list[str]:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        args = ["auth", "can-i", self.verb, what]
        if self.subresource:
            args.append(f"--subresource={self.subresource}")
        if self.scope == "namespace":
            args += ["--namespace", namespace]
        elif self.scope == "all":
            args.append("--all-namespaces")
        return args


def _needs(verbs: str, group: str, resources: str, subresource: str = "",
           scopes: Sequence[str] = ("namespace",)) -> list[Need]:
    return [Need(verb, group, resource, subresource, scope)
            for resource in resources.split() for verb in verbs.split() for scope in scopes]


WATCH = ("namespace", "all")
"""list and watch are needed per namespace and, cluster-wide, across all namespaces."""

def _from_rights(scope: str, scopes: Sequence[str], named: bool = False) -> tuple[Need, ...]:
    found: list[Need] = []
    for right in rights.rights(scope):  # type: ignore[arg-type]
        if right.named and not named:
            continue
        resource, _, sub = right.resource.partition("/")
        for verb in right.verbs:
            found += [Need(verb, right.group, resource, sub, s) for s in scopes]
    return tuple(found)


WATCHED: tuple[Need, ...] = _from_rights("watched", WATCH)
"""Reads kiln needs wherever it watches (``kiln.kube.rights``)."""
SERVED: tuple[Need, ...] = _from_rights("served", ("namespace",))
"""Secrets and writes kiln needs in the namespaces it serves, and only there."""
CLUSTER: tuple[Need, ...] = _from_rights("cluster", ("cluster",))
"""Cluster-scoped reads (Namespaces only when watching named namespaces: ``NAMED``)."""
NAMED: tuple[Need, ...] = tuple(n for n in _from_rights("cluster", ("cluster",), named=True)
                                if n not in CLUSTER)
NEEDS: tuple[Need, ...] = (*WATCHED, *SERVED, *CLUSTER)
"""What kiln's operator does with the API, from ``kiln.kube.rights.RIGHTS``."""


GC_NEEDS: tuple[Need, ...] = tuple([
    # `kiln gc` reads the references, across all namespaces, and nothing else.
    *_needs("list", "kiln.dev", "enginebuilds enginedeployments", scopes=WATCH),
    *_needs("list", "batch", "jobs", scopes=WATCH),
    *_needs("list", "apps", "deployments", scopes=WATCH),
])
"""What the GC CronJob's ServiceAccount may do (``kiln.gc.collect.referenced`` and ``kiln gc``'s
store list: lists only, ``tests/unit/test_rights.py`` drives them)."""

DENIED: tuple[Need, ...] = tuple([
    *_needs("list watch", "", "secrets", scopes=WATCH),
    *_needs("create update patch delete", "", "secrets"),
    Need("*", "*", "*", scope="cluster"),
    Need("*", "*", "*"),
    Need("*", "batch", "jobs"),
    Need("*", "kiln.dev", "enginebuilds"),
    *_needs("create update patch delete get", "apiextensions.k8s.io",
            "customresourcedefinitions", scopes=("cluster",)),
    *_needs("update delete create", "kiln.dev", "enginebuilds enginedeployments"),
    *_needs("create delete", "", "pods"),
    Need("create", "", "pods", "exec"),
    *_needs("get patch update delete", "", "nodes", scopes=("cluster",)),
    Need("create", "", "serviceaccounts", "token"),
    *_needs("list watch", "kopf.dev", "clusterkopfpeerings", scopes=("cluster",)),
    *_needs("bind escalate create", "rbac.authorization.k8s.io", "clusterroles",
            scopes=("cluster",)),
    Need("impersonate", "", "users", scope="cluster"),
])


def _review(kubeconfig: Path, need: Need, namespace: str) -> bool:
    """A SelfSubjectAccessReview: ``kubectl auth can-i`` answers no for a type the server does
    not serve (Kueue's, where Kueue is not installed), whatever RBAC says."""
    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    attributes = {"verb": need.verb, "group": need.group, "resource": need.resource,
                  "subresource": need.subresource or None,
                  "namespace": namespace if need.scope == "namespace" else None}
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": attributes}})
    return bool(review.status.allowed)


def can_i(kube: Cluster, kubeconfig: Path, need: Need, namespace: str) -> bool:
    if need.group == "kueue.x-k8s.io":
        return _review(kubeconfig, need, namespace)
    result = kube.kubectl(*need.can_i_args(namespace), check=False, kubeconfig=kubeconfig)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {need}: {result.stdout}{result.stderr}")
    return answer == "yes"


def granted(kube: Cluster, kubeconfig: Path, needs: Iterable[Need],
            namespace: str) -> dict[Need, bool]:
    """``kubectl auth can-i`` for each need, as the kubeconfig's user, in parallel."""
    needs = list(needs)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = pool.map(lambda n: can_i(kube, kubeconfig, n, namespace), needs)
        return dict(zip(needs, answers, strict=True))


def missing(kube: Cluster, kubeconfig: Path, namespace: str,
            needs: Iterable[Need] = NEEDS) -> set[Need]:
    return {n for n, ok in granted(kube, kubeconfig, needs, namespace).items() if not ok}


SYSTEM = ("selfsubjectreviews.authentication.k8s.io",
          "selfsubjectaccessreviews.authorization.k8s.io",
          "selfsubjectrulesreviews.authorization.k8s.io",
          "clustertrustbundles.certificates.k8s.io")
"""What every authenticated user may do (``system:basic-user``; every ServiceAccount reads
ClusterTrustBundles, public CA certificates), not the chart's."""

Grant = tuple[str, str, str]
"""``(resource.group/subresource, resource names, verb)`` as ``kubectl auth can-i --list``
prints them."""


def grants(kube: Cluster, kubeconfig: Path, namespace: str) -> set[Grant]:
    """Everything the kubeconfig's user may do in ``namespace`` (cluster-wide rules
    included), from ``kubectl auth can-i --list``: non-resource URLs and ``SYSTEM`` left out."""
    out = kube.kubectl("auth", "can-i", "--list", "--namespace", namespace,
                       kubeconfig=kubeconfig).stdout
    found: set[Grant] = set()
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
        if not match or match[1] in SYSTEM:
            continue
        resource, _, names, verbs = match.groups()
        found |= {(resource, names, verb) for verb in verbs.split()}
    return found


def as_grants(needs: Iterable[Need], names: str = "") -> set[Grant]:
    """``needs`` as ``grants`` prints them (the scope aside)."""
    found: set[Grant] = set()
    for need in needs:
        what = f"{need.resource}.{need.group}" if need.group else need.resource
        if need.subresource:
            what += f"/{need.subresource}"
        found.add((what, names, need.verb))
    return found


def serve(kube: Cluster, namespace: str, release: str, release_namespace: str) -> None:
    """What an admin does to have a cluster-wide kiln serve ``namespace``: a RoleBinding
    to the chart's ``<release>-serve`` ClusterRole for its ServiceAccount."""
    kube.kubectl("create", "rolebinding", f"{release}-serve", "--namespace", namespace,
                 f"--clusterrole={release}-serve",
                 f"--serviceaccount={release_namespace}:{release}")


def rule_needs(rule: dict[str, Any]) -> set[Need]:
    """The needs an RBAC rule grants, in a namespace (or the cluster, for cluster-scoped
    resources); ``resourceNames`` ignored."""
    cluster = {(n.group, n.resource) for n in (*CLUSTER, *NAMED)}
    found: set[Need] = set()
    for group in rule["apiGroups"]:
        for resource in rule["resources"]:
            name, _, sub = resource.partition("/")
            scope = "cluster" if (group, name) in cluster else "namespace"
            found |= {Need(verb, group, name, sub, scope) for verb in rule["verbs"]}
    return found


OWN_LEASE = (Need("get", "coordination.k8s.io", "leases"),
             Need("create", "coordination.k8s.io", "leases"),
             Need("update", "coordination.k8s.io", "leases"))
OWN_SIGNING = (Need("get", "", "secrets"), Need("create", "", "secrets"))
"""In the release namespace: the Lease, the signing key's Secret (get by name, create)."""


def wait_for(check: Any, timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something true (RBAC caches catch up in ~1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"timed out waiting for {what}"
            return value
        time.sleep(0.3)


def apply(kube: Cluster, docs: Iterable[dict[str, Any]]) -> None:
    """Server-side apply, as the admin."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kiln-tests",
                 "-f", "-", input=yaml.safe_dump_all(list(docs)))


def install_rbac(kube: Cluster, namespace: str, release: str,
                 values: dict[str, Any] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """The chart's ServiceAccount, ClusterRole/Roles and bindings, in ``namespace`` under
    ``release``; returns a kubeconfig acting as that ServiceAccount, and the objects."""
    docs = render(values, release=release, namespace=namespace,
                  show_only=["templates/serviceaccount.yaml", "templates/rbac.yaml"])
    apply(kube, docs)
    account = find(docs, "ServiceAccount")["metadata"]["name"]
    return kube.kubeconfig_for_service_account(namespace, account, create=False), docs


def delete(kube: Cluster, docs: Iterable[dict[str, Any]]) -> None:
    kube.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                 input=yaml.safe_dump_all(list(docs)), check=False)


def covers(rule: dict[str, Any], need: Need) -> bool:
    """Whether an RBAC rule grants ``need`` (no wildcards: the chart has none)."""
    resource = f"{need.resource}/{need.subresource}" if need.subresource else need.resource
    return bool(need.group in rule.get("apiGroups", [])
                and resource in rule.get("resources", []) and need.verb in rule.get("verbs", []))
