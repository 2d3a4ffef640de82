"""The chart against the test bed's apiserver: its output applied server-side, a real
``helm install``, and RBAC checked with ``kubectl auth can-i`` as the chart's ServiceAccount.

The permissions kiln needs are ``kiln.kube.rights.RIGHTS`` (``support.NEEDS``), which
``tests/unit/test_rights.py`` finds in the code; a rule missing from the chart, a verb granted
that kiln never uses, a Secret or a write outside the namespaces it serves, fails here.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from chart import support
from chart.support import (
    CHART,
    CLUSTER,
    DENIED,
    GC_NEEDS,
    NAMED,
    NEEDS,
    SERVED,
    WATCHED,
    Need,
    covers,
    find,
    granted,
    grants,
    missing,
    render,
)
from kiln import GROUP

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crds(kube: Any) -> None:
    """The chart's CRDs (the generated ones), applied server-side and Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 f"crd/enginebuilds.{GROUP}", f"crd/enginedeployments.{GROUP}")


@pytest.fixture
def release() -> str:
    """A release name of its own: ClusterRoles are cluster-wide, tests must not share them."""
    return "kiln-" + os.urandom(3).hex()


@pytest.fixture
def cleanup(kube: Any) -> Iterator[list[dict[str, Any]]]:
    """Cluster-scoped objects to delete after the test (namespaced ones go with the namespace)."""
    docs: list[dict[str, Any]] = []
    yield docs
    support.delete(kube, [d for d in docs if "namespace" not in d["metadata"]
                          and d["kind"] != "CustomResourceDefinition"])


@pytest.fixture
def other_namespace(kube: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube.api_client)
    name = "other-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


# -- the rendered chart on a real apiserver --------------------------------------------------

@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_rendered_chart_applies_server_side(kube: Any, crds: None, namespace: str, release: str,
                                            cleanup: list[dict[str, Any]], variant: str) -> None:
    values: dict[str, Any] = {}
    if variant == "everything":
        values = {
            "watchNamespaces": [namespace],
            "store": {"uri": "s3://engines/prod/", "credentialsSecret": "engine-store",
                      "pvcClaims": ["engines"]},
            "builder": {"env": {"AWS_ENDPOINT_URL": "http://minio:9000"}},
            "argocd": {"healthChecks": {"enabled": True}},
            "verbose": True,
        }
    docs = render(values, release=release, namespace=namespace, include_crds=True)
    cleanup.extend(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 2
    support.apply(kube, docs)  # strict field validation: an unknown field fails here
    apps = client.AppsV1Api(kube.api_client)
    stored = apps.read_namespaced_deployment(release, namespace)
    assert stored.spec.strategy.type == "RollingUpdate"  # two replicas, one leads
    assert stored.spec.template.spec.containers[0].security_context.read_only_root_filesystem
    again = kube.kubectl("apply", "--server-side", "--force-conflicts",
                         "--field-manager=kiln-tests", "-f", "-",
                         input=support.render_text(values, release=release, namespace=namespace,
                                                   include_crds=True).stdout)
    assert "unchanged" in again.stdout or "serverside-applied" in again.stdout


def test_helm_install_and_uninstall(kube: Any, crds: None, namespace: str,
                                    release: str) -> None:
    """A real ``helm install`` (CRDs already there: ``--skip-crds``), NOTES, uninstall."""
    common = ["--kubeconfig", str(kube.kubeconfig), "--namespace", namespace]
    result = support.helm("install", release, str(CHART), *common, "--skip-crds",
                          "--set", "argocd.healthChecks.enabled=true",
                          "--set", "store.uri=s3://engines/")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"installed as {release} in namespace {namespace}" in notes
    assert "Default engine store: s3://engines/" in notes
    assert "argocd-cm" in notes
    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    assert rbac.read_cluster_role(release).rules
    support.helm("uninstall", release, *common, "--wait")
    with pytest.raises(client.ApiException) as error:
        rbac.read_cluster_role(release)
    assert error.value.status == 404


# -- RBAC as the chart's ServiceAccount -------------------------------------------------------

def _own(release: str) -> set[support.Grant]:
    """In the release namespace: its Lease, its signing key's Secret (by name), creating it."""
    return support.as_grants(support.OWN_LEASE) | {
        ("secrets", f"{release}-signing", "get"), ("secrets", "", "create")}


@pytest.fixture
def served_namespace(kube: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube.api_client)
    name = "served-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_cluster_wide_rbac_reads_everywhere_and_writes_only_where_it_serves(
        kube: Any, crds: None, namespace: str, served_namespace: str, other_namespace: str,
        release: str, cleanup: list[dict[str, Any]]) -> None:
    """The default install watches every namespace, but reads Secrets and writes only in the
    namespaces it serves: not in ``kube-system``, not in one nobody bound it in."""
    kubeconfig, docs = support.install_rbac(kube, namespace, release,
                                            {"servedNamespaces": [served_namespace]})
    cleanup.extend(docs)
    support.wait_for(lambda: not missing(kube, kubeconfig, served_namespace), what="RBAC")
    # Exactly what kiln uses, where it serves; reads only (no Secret) anywhere else.
    reads = support.as_grants((*WATCHED, *CLUSTER))
    assert grants(kube, kubeconfig, served_namespace) == support.as_grants(NEEDS)
    assert grants(kube, kubeconfig, other_namespace) == reads
    assert grants(kube, kubeconfig, "kube-system") == reads
    assert grants(kube, kubeconfig, namespace) == reads | _own(release)
    # The same, asked one request at a time.
    assert missing(kube, kubeconfig, served_namespace) == set()
    leaked = {n for n, ok in granted(kube, kubeconfig, (*SERVED, *DENIED),
                                     "kube-system").items() if ok}
    assert leaked == set(), sorted(map(str, leaked))
    # Cluster-wide, Kopf does not look at Namespaces, so neither may kiln.
    assert not any(granted(kube, kubeconfig, NAMED, other_namespace).values())
    # An admin serves one more namespace with a RoleBinding to the -serve ClusterRole.
    support.serve(kube, other_namespace, release, namespace)
    support.wait_for(lambda: not missing(kube, kubeconfig, other_namespace), what="RBAC")
    assert grants(kube, kubeconfig, other_namespace) == support.as_grants(NEEDS)


def test_namespaced_rbac_stays_in_the_watched_namespaces(
        kube: Any, crds: None, namespace: str, served_namespace: str, other_namespace: str,
        release: str, cleanup: list[dict[str, Any]]) -> None:
    kubeconfig, docs = support.install_rbac(kube, namespace, release,
                                            {"watchNamespaces": [served_namespace]})
    cleanup.extend(docs)
    inside = [n for n in (*NEEDS, *NAMED) if n.scope != "all"]
    support.wait_for(lambda: not missing(kube, kubeconfig, served_namespace, inside),
                     what="RBAC")
    cluster = support.as_grants((*CLUSTER, *NAMED))
    assert grants(kube, kubeconfig, served_namespace) == support.as_grants(inside)
    assert grants(kube, kubeconfig, other_namespace) == cluster
    assert grants(kube, kubeconfig, "kube-system") == cluster
    assert grants(kube, kubeconfig, namespace) == cluster | _own(release)
    leaked = {n for n, ok in granted(kube, kubeconfig, (*WATCHED, *SERVED, *DENIED),
                                     "kube-system").items() if ok}
    assert leaked == set(), sorted(map(str, leaked))


def test_the_gc_cron_job_may_only_read_its_references(
        kube: Any, crds: None, namespace: str, other_namespace: str, release: str,
        cleanup: list[dict[str, Any]]) -> None:
    docs = render({"store": {"uri": "s3://engines/", "gc": {"enabled": True}}}, release=release,
                  namespace=namespace, show_only=["templates/gc-cronjob.yaml"])
    account = find(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "serviceAccountName"]
    rbac = [d for d in docs if d["kind"] != "CronJob"]
    cleanup.extend(rbac)
    support.apply(kube, rbac)
    kubeconfig = kube.kubeconfig_for_service_account(namespace, account, create=False)
    support.wait_for(lambda: not missing(kube, kubeconfig, other_namespace, GC_NEEDS),
                     what="RBAC")
    assert missing(kube, kubeconfig, other_namespace, GC_NEEDS) == set()
    beyond = [n for n in (*NEEDS, *DENIED) if n not in GC_NEEDS]
    beyond += [Need("get", n.group, n.resource) for n in GC_NEEDS]  # never read one by name
    allowed = {n for n, ok in granted(kube, kubeconfig, beyond, other_namespace).items() if ok}
    assert allowed == set(), [str(n) for n in allowed]


def _roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ClusterRole"]


def test_every_right_is_a_rule_and_every_rule_a_right() -> None:
    """The rendered rules are exactly ``kiln.kube.rights.RIGHTS``, in both modes."""
    for values, served in (({}, "ClusterRole"), ({"watchNamespaces": ["a"]}, "Role")):
        docs = render(values, show_only=["templates/rbac.yaml"])
        rules = {(d["metadata"]["name"], d["kind"]): d["rules"] for d in docs
                 if d["kind"] in ("ClusterRole", "Role")}
        granted_ = {(d[0], n) for d, rs in rules.items() for rule in rs
                    for n in support.rule_needs(rule)}
        expected = {("kiln", n) for n in (*CLUSTER, *(NAMED if values else ()))}
        if values:
            expected |= {("kiln", n) for n in (*WATCHED, *SERVED) if n.scope == "namespace"}
        else:
            expected |= {("kiln", n) for n in WATCHED if n.scope == "namespace"}
            expected |= {("kiln-serve", n) for n in SERVED}
        expected |= {("kiln-leader", n) for n in support.OWN_LEASE}
        expected |= {("kiln-signing", n) for n in support.OWN_SIGNING}
        assert granted_ == expected, (served, sorted(map(str, granted_ ^ expected)))


@pytest.mark.parametrize("index", range(18))
def test_removing_a_rule_is_detected(kube: Any, crds: None, namespace: str,
                                     served_namespace: str, release: str,
                                     cleanup: list[dict[str, Any]], index: int) -> None:
    """The chart without one of its ClusterRoles' rules: ``can-i`` fails for exactly what
    that rule granted (and for something: no rule is superfluous)."""
    docs = render({"servedNamespaces": [served_namespace]}, release=release,
                  namespace=namespace,
                  show_only=["templates/serviceaccount.yaml", "templates/rbac.yaml"])
    docs = copy.deepcopy(docs)
    everything = [(role, rule) for role in _roles(docs) for rule in role["rules"]]
    assert len(everything) == 18, "a rule was added or removed: change the parameters"
    role, removed = everything[index]
    role["rules"].remove(removed)
    cleanup.extend(docs)
    support.apply(kube, docs)
    kubeconfig = kube.kubeconfig_for_service_account(
        namespace, find(docs, "ServiceAccount")["metadata"]["name"], create=False)
    rest = [rule for r in _roles(docs) for rule in r["rules"]]
    lost = {n for n in NEEDS if covers(removed, n) and not any(covers(r, n) for r in rest)}
    assert lost, f"the rule {removed} grants nothing kiln needs"
    # A need of each remaining rule, granted, shows the role took effect (RBAC caches); only
    # then does a denial mean the rule is missing rather than the binding not seen yet.
    controls = {next(n for n in NEEDS if covers(rule, n)) for rule in rest}
    support.wait_for(lambda: not missing(kube, kubeconfig, served_namespace, controls),
                     what="the remaining rules to take effect")
    assert missing(kube, kubeconfig, served_namespace, lost | controls) == lost


# -- the pod policy at admission -----------------------------------------------------------

def test_the_pod_policy_refuses_at_admission_with_the_field_named(
        kube: Any, crds: None, namespace: str, release: str,
        cleanup: list[dict[str, Any]]) -> None:
    """The chart's ValidatingAdmissionPolicy (the operator's pod policy in CEL, from
    podPolicy): a root override or a priority class outside the list is refused by the API
    server, the field named; what the policy allows is admitted."""
    docs = render(release=release, namespace=namespace,
                  show_only=["templates/admission-policy.yaml"])
    # Bound to this test's namespace only: the suite's other tests share the apiserver.
    find(docs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    cleanup.extend(docs)
    support.apply(kube, docs)
    custom = client.CustomObjectsApi(kube.api_client)

    def refusal(plural: str, spec: dict[str, Any]) -> str | None:
        kind = "EngineBuild" if plural == "enginebuilds" else "EngineDeployment"
        body = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind,
                "metadata": {"name": "policy"}, "spec": spec}
        try:
            custom.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, plural, body,
                                                   dry_run="All")
        except client.ApiException as error:
            if error.status not in (403, 422):
                raise
            return str(error.body)
        return None

    build = {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}]}
    root = support.wait_for(lambda: refusal("enginebuilds", {**build, "job": {
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False}}}),
        what="the policy to take effect")
    assert "spec.job.securityContext.runAsUser: 0 (root)" in root, root
    critical = refusal("enginebuilds", {**build, "job": {
        "priorityClassName": "system-node-critical"}})
    assert critical and "spec.job.priorityClassName: system-node-critical" in critical
    serving = {"engineBuildRef": {"name": "llama"}, "replicas": 1, "gpu": "H100-SXM"}
    escalating = refusal("enginedeployments", {**serving, "server": {"securityContext": {
        "allowPrivilegeEscalation": True}}})
    assert escalating and "spec.server.securityContext.allowPrivilegeEscalation" in escalating
    assert refusal("enginebuilds", {**build, "job": {"securityContext": {
        "runAsUser": 1000, "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}}}) is None
    assert refusal("enginedeployments", serving) is None
