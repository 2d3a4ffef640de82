"""The chart against the test bed's apiserver: its output applied server-side, a real
``helm install``, and RBAC checked with ``kubectl auth can-i`` as the chart's ServiceAccount.

The permissions kiln needs are listed in ``support.NEEDS`` independently of the chart; a
rule missing from the chart, or one granted that nobody needs, fails here.
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
    DENIED,
    GC_NEEDS,
    NEEDS,
    Need,
    covers,
    find,
    granted,
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

def test_cluster_wide_rbac_grants_what_kiln_needs_and_nothing_else(
        kube: Any, crds: None, namespace: str, other_namespace: str, release: str,
        cleanup: list[dict[str, Any]]) -> None:
    kubeconfig, docs = support.install_rbac(kube, namespace, release)
    cleanup.extend(docs)
    support.wait_for(lambda: not missing(kube, kubeconfig, other_namespace), what="RBAC")
    assert missing(kube, kubeconfig, other_namespace) == set()
    allowed = {n for n, ok in granted(kube, kubeconfig, DENIED, other_namespace).items() if ok}
    assert allowed == set(), [str(n) for n in allowed]
    # Cluster-wide, Kopf does not look at Namespaces, so neither may kiln.
    assert not granted(kube, kubeconfig, [Need("list", "", "namespaces", scope="cluster")],
                       other_namespace)[Need("list", "", "namespaces", scope="cluster")]


def test_namespaced_rbac_stays_in_the_watched_namespaces(
        kube: Any, crds: None, namespace: str, other_namespace: str, release: str,
        cleanup: list[dict[str, Any]]) -> None:
    kubeconfig, docs = support.install_rbac(kube, namespace, release,
                                            {"watchNamespaces": [namespace]})
    cleanup.extend(docs)
    inside = [n for n in NEEDS if n.scope != "all"]
    support.wait_for(lambda: not missing(kube, kubeconfig, namespace, inside), what="RBAC")
    kopf_namespaces = [Need("list", "", "namespaces", scope="cluster"),
                       Need("watch", "", "namespaces", scope="cluster")]
    assert all(granted(kube, kubeconfig, kopf_namespaces, namespace).values())
    outside = [n for n in NEEDS if n.scope != "cluster"]
    leaked = {n for n, ok in granted(kube, kubeconfig, outside, other_namespace).items() if ok}
    assert leaked == set(), [str(n) for n in leaked]
    # The release namespace is the watched one here: kiln may create its signing key's Secret
    # there (and read only that one), nowhere else.
    create_secret = Need("create", "", "secrets")
    denied = [n for n in DENIED if n != create_secret]
    allowed = {n for n, ok in granted(kube, kubeconfig, denied, namespace).items() if ok}
    assert allowed == set(), [str(n) for n in allowed]
    assert not granted(kube, kubeconfig, [create_secret], other_namespace)[create_secret]


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
    allowed = {n for n, ok in granted(kube, kubeconfig, beyond, other_namespace).items() if ok}
    assert allowed == set(), [str(n) for n in allowed]


RULES = ("events", "customresourcedefinitions", "enginebuilds", "enginebuilds/status", "jobs",
         "pods", "secrets", "nodes", "deployments", "services", "poddisruptionbudgets",
         "configmaps")
"""Each rule of the cluster-wide ClusterRole, by its first resource."""


def test_every_rule_is_in_the_removal_tests() -> None:
    role = find(render(show_only=["templates/rbac.yaml"]), "ClusterRole")
    assert sorted(rule["resources"][0] for rule in role["rules"]) == sorted(RULES)


@pytest.mark.parametrize("first_resource", RULES)
def test_removing_a_rule_is_detected(kube: Any, crds: None, namespace: str,
                                     other_namespace: str, release: str,
                                     cleanup: list[dict[str, Any]],
                                     first_resource: str) -> None:
    """The chart without one of its rules: ``can-i`` fails for exactly what that rule
    granted (and for something: no rule is superfluous)."""
    docs = render(release=release, namespace=namespace,
                  show_only=["templates/serviceaccount.yaml", "templates/rbac.yaml"])
    docs = copy.deepcopy(docs)
    role = find(docs, "ClusterRole")
    (removed,) = [r for r in role["rules"] if r["resources"][0] == first_resource]
    role["rules"].remove(removed)
    cleanup.extend(docs)
    support.apply(kube, docs)
    kubeconfig = kube.kubeconfig_for_service_account(
        namespace, find(docs, "ServiceAccount")["metadata"]["name"], create=False)
    lost = {n for n in NEEDS if covers(removed, n)
            and not any(covers(rule, n) for rule in role["rules"])}
    assert lost, f"the rule for {first_resource} grants nothing kiln needs"
    # A need of each remaining rule, granted, shows the role took effect (RBAC caches); only
    # then does a denial mean the rule is missing rather than the binding not seen yet.
    controls = {next(n for n in NEEDS if covers(rule, n)) for rule in role["rules"]}
    support.wait_for(lambda: not missing(kube, kubeconfig, other_namespace, controls),
                     what="the remaining rules to take effect")
    assert missing(kube, kubeconfig, other_namespace, lost | controls) == lost
