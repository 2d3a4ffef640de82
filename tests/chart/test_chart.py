"""The Helm chart without a cluster: lint, what it renders, what its schema refuses, and the
CRD copies. Rendering uses the test bed's helm.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart.support import CHART, ROOT, find, helm, render, render_text
from kiln import metrics
from kiln.cli import main as kiln_main
from kiln.config import OperatorConfig
from kiln.gen import crds
from kiln.kube.lease import Timing

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "everything": {
        "watchNamespaces": ["team-a"],
        "store": {"uri": "s3://engines/prod/", "credentialsSecret": "engine-store",
                  "pvcClaims": ["engines"]},
        "builder": {"env": {"AWS_ENDPOINT_URL": "http://minio:9000"},
                    "podLabels": {"team": "ml"}, "queue": "gpu-builds"},
        "server": {"tritonImage": "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3",
                   "tritonModelsDir": "/opt/models", "env": {"AWS_REGION": "us-east-2"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "argocd": {"healthChecks": {"enabled": True}},
        "image": {"digest": "sha256:" + "0" * 64},
        "verbose": True,
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    },
}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    return dict(operator)


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


def rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm("lint", "--strict", str(CHART), "--values", str(path), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_operator_deployment_defaults() -> None:
    docs = render()
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2  # a hot standby, elected through a Lease
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == find(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    operator = container(docs)
    assert operator["image"] == "ghcr.io/kiln-dev/kiln:0.1.0"
    assert operator["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    probe = operator["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"health": 8080, "metrics": 8081}
    assert probe["port"] == "health"
    security = operator["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert operator["resources"]["requests"] and operator["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in operator["volumeMounts"]


def test_selector_survives_upgrades() -> None:
    """A Deployment's selector is immutable: no version or chart label in it."""
    deployment = find(render(), "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(selector)
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = find(render(), "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_values_reach_the_operator_config() -> None:
    """Through the env the chart sets, OperatorConfig reads back what values said."""
    docs = render(VARIANTS["everything"])
    env = env_of(docs)
    config = OperatorConfig.from_env(env)
    assert config.default_store == "s3://engines/prod/"
    assert config.store_secret == "engine-store"
    assert config.builder_image == "ghcr.io/kiln-dev/kiln-builder:0.1.0-trtllm1.2.1"
    assert config.build_env == {"AWS_ENDPOINT_URL": "http://minio:9000"}
    assert config.build_pod_labels == {"team": "ml"}
    assert config.job_ttl_seconds == 3600
    assert config.build_queue == "gpu-builds"
    assert config.weights_check_seconds == 30
    assert config.rebuild_settle == "1m"
    assert {"name": "KILN_NAMESPACE", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.namespace"}}} in container(docs)["env"]
    assert config.server_image == "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
    assert config.triton_image == "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3"
    assert config.triton_models_dir == "/opt/models"
    assert config.serve_env == {"AWS_REGION": "us-east-2"}
    assert config.fetch_image == "ghcr.io/kiln-dev/kiln@sha256:" + "0" * 64  # the operator's
    assert env["KILN_METRICS_PORT"] == "8081"
    assert env["AWS_REGION"] == "eu-west-1"
    operator = container(docs)
    assert operator["image"] == "ghcr.io/kiln-dev/kiln@sha256:" + "0" * 64
    assert operator["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz",
                                "--namespace=team-a", "--verbose"]
    assert operator["envFrom"] == [{"secretRef": {"name": "engine-store", "optional": True}}]
    assert {"name": "store-engines", "mountPath": "/mnt/kiln/pvc/engines",
            "readOnly": True} in operator["volumeMounts"]


def test_defaults_leave_optional_settings_unset() -> None:
    env = env_of(render())
    assert "KILN_DEFAULT_STORE" not in env
    assert "KILN_STORE_SECRET" not in env
    # Defaults on purpose (docs/security.md): a signing key from the Secret the operator
    # creates itself (none templated: helm template would make a new one each time), only the
    # default builder repository allowed; replicas elect a leader.
    assert env["KILN_SIGNING_SECRET"] == "kiln-signing"
    assert not [d for d in render() if d["kind"] == "Secret"]
    assert OperatorConfig.from_env(env) == OperatorConfig(
        allowed_builder_images=("ghcr.io/kiln-dev/kiln-builder",),
        leader_election=True, lease_name="kiln",
        lease_namespace=OperatorConfig.from_env(env).lease_namespace)


def test_replicas_elect_a_leader_through_a_lease_in_the_release_namespace() -> None:
    docs = render()
    env = container(docs)["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["KILN_LEASE_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    assert by_name["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    timing = Timing.from_env({e["name"]: e["value"] for e in env if "value" in e})
    assert timing == Timing(lease=15, renew_deadline=10, retry=2)
    role = find(docs, "Role", "kiln-leader")
    assert role["metadata"]["namespace"] == "kiln-system"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    refused = render_text({"leaderElection": {"enabled": False}}, check=False)
    assert refused.returncode and "replicaCount > 1 needs leaderElection" in refused.stderr
    single = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    assert find(single, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in single if d["kind"] == "Role" and "leases" in str(d["rules"])]


def test_every_setting_the_operator_reads_is_set_by_the_chart() -> None:
    """Drift: a new ``KILN_*`` setting in kiln.config (or the metrics port) needs a value."""
    sources = (ROOT / "operator" / "kiln" / "config.py").read_text()
    names = set(re.findall(r"\"(KILN_[A-Z0-9_]+)\"", sources)) | {metrics.PORT_ENV}
    assert len(names) >= 12
    template = (CHART / "templates" / "deployment.yaml").read_text()
    unset = sorted(n for n in names if f"name: {n}\n" not in template)
    assert unset == [], f"charts/kiln/templates/deployment.yaml does not set {unset}"


def test_rbac_has_no_wildcards_and_secrets_are_read_only() -> None:
    for name, values in VARIANTS.items():
        for rule in rules(render(values)):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (name, rule)
            assert "nonResourceURLs" not in rule
            if "secrets" in rule["resources"] and rule["verbs"] != ["get"]:
                # Only the signing key's Secret, which the operator creates once, itself.
                assert rule["verbs"] == ["create"], rule
            assert "resourceNames" not in rule or rule == {
                "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["kiln-signing"],
                "verbs": ["get"]}, rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_rbac_rules_are_commented_in_sections() -> None:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    rendered = render_text(show_only=["templates/rbac.yaml"]).stdout
    assert "--- Watched" in rendered and "--- Served" in rendered and "--- Cluster" in rendered
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- apiGroups:"):
            above = lines[i - 1]
            assert above.startswith(("#", "  verbs:")), f"rule without a comment: {lines[i:i+3]}"


def test_cluster_wide_by_default() -> None:
    docs = render()
    assert {d["kind"] for d in docs if "rbac" in d["apiVersion"]
            and not d["metadata"]["name"].endswith(("-leader", "-signing"))} == {
        "ClusterRole", "ClusterRoleBinding"}
    resources = {r for rule in rules(docs) for r in rule["resources"]}
    assert "namespaces" not in resources  # Kopf does not look at Namespaces cluster-wide


def test_named_namespaces_get_roles_and_a_small_cluster_role() -> None:
    docs = render(VARIANTS["namespaced"])
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "kiln"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "kiln"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "kiln-system"
    cluster = find(docs, "ClusterRole")
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces", "nodes"}
    assert container(docs)["args"][-2:] == ["--namespace=team-a", "--namespace=team-b"]


def test_the_pod_policy_renders_into_an_admission_policy() -> None:
    policy = find(render(), "ValidatingAdmissionPolicy")
    text = str(policy["spec"]["validations"])
    assert "spec.job.securityContext.runAsUser" in text and "restricted" in text
    assert "spec.server.securityContext.runAsUser" in text
    baseline = str(find(render({"podPolicy": {"securityLevel": "baseline",
                                              "priorityClasses": ["batch"]}}),
                        "ValidatingAdmissionPolicy")["spec"]["validations"])
    assert "runAsUser" not in baseline and "SYS_CHROOT" in baseline and "['batch']" in baseline
    for values in ({"podPolicy": {"securityLevel": "privileged", "priorityClasses": ["*"]}},
                   {"podPolicy": {"admission": False}}):
        assert not [d for d in render(values) if "Admission" in d["kind"]]
    env = env_of(render({"podPolicy": {"securityLevel": "baseline",
                                       "priorityClasses": ["batch"]}}))
    config = OperatorConfig.from_env(env)
    assert (config.pod_security, config.allowed_priority_classes) == ("baseline", ("batch",))


def test_service_monitor_is_optional() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    docs = render(VARIANTS["everything"])
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= find(
        docs, "Service")["metadata"]["labels"].items()


def test_metrics_port_zero_drops_the_service() -> None:
    docs = render({"metrics": {"port": 0}})
    assert not [d for d in docs if d["kind"] == "Service"]
    assert env_of(docs)["KILN_METRICS_PORT"] == "0"
    assert [p["name"] for p in container(docs)["ports"]] == ["health"]


@pytest.mark.parametrize(("values", "complaint"), [
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ({"securityContext": {"capabilities": {"drop": []}}}, "drop"),
    ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, "add"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),
    ({"stroe": {"uri": "s3://x/"}}, "stroe"),
    ({"store": {"uri": "http://engines/"}}, "uri"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"builder": {"env": {"A": 1}}}, "env"),
    ({"builder": {"podLabels": {"app.kubernetes.io/instance": "my-app"}}},
     "app.kubernetes.io/instance"),
], ids=["rw-root", "no-drop", "add-cap", "root", "glob", "typo", "store-uri", "port",
        "env-not-string", "tracking-label"])
def test_schema_refuses(values: dict[str, Any], complaint: str) -> None:
    result = render_text(values, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_argocd_config_map_carries_the_scripts() -> None:
    assert not [d for d in render() if d["kind"] == "ConfigMap"]
    docs = render({"argocd": {"healthChecks": {"enabled": True}}})
    data = find(docs, "ConfigMap")["data"]
    for kind, file in (("EngineBuild", "enginebuild-health.lua"),
                       ("EngineDeployment", "enginedeployment-health.lua")):
        script = (CHART / "argocd" / file).read_text()
        assert data[f"resource.customizations.health.kiln.dev_{kind}"].strip() == script.strip()
    assert len(data) == 2


# -- CRDs ----------------------------------------------------------------------------------

def test_chart_crds_are_the_generated_ones(tmp_path: Path) -> None:
    """Drift: `kiln crds` writes crds/ and charts/kiln/crds/; both must be current."""
    written = crds.write_crds(tmp_path)
    chart_crds = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in chart_crds] == sorted(p.name for p in written)
    for path in written:
        assert (CHART / "crds" / path.name).read_text() == path.read_text(), (
            f"charts/kiln/crds/{path.name} is stale: run `kiln crds`")
        assert (ROOT / "crds" / path.name).read_text() == path.read_text()


def test_kiln_crds_writes_both_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiln_main(["crds", "--out", str(tmp_path / "crds"),
                      "--chart", str(tmp_path / "chart")]) == 0
    names = sorted(p.name for p in (tmp_path / "crds").glob("*.yaml"))
    assert names == sorted(p.name for p in (tmp_path / "chart").glob("*.yaml"))
    assert len(names) == 2
    assert kiln_main(["crds", "--out", str(tmp_path / "only"), "--chart", ""]) == 0
    assert len(capsys.readouterr().out.split()) == 6


def test_rendered_crds_are_the_chart_crds() -> None:
    docs = render(include_crds=True)
    rendered = sorted((d for d in docs if d["kind"] == "CustomResourceDefinition"),
                      key=lambda d: d["metadata"]["name"])
    expected = sorted(crds.crd_manifests(), key=lambda d: d["metadata"]["name"])
    assert rendered == expected


def test_store_gc_is_an_optional_dry_run_cron_job() -> None:
    assert not [d for d in render() if d["kind"] == "CronJob"]
    docs = render({"store": {"uri": "s3://engines/", "gc": {"enabled": True}}})
    job = find(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (gc,) = job["containers"]
    assert gc["args"] == ["gc", "--retention=7d"]  # lists only, until apply: true
    accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    assert job["serviceAccountName"] in accounts  # its own, not the operator's
    assert job["serviceAccountName"] != find(docs, "Deployment")["spec"]["template"]["spec"][
        "serviceAccountName"]
    applied = render({"store": {"uri": "s3://engines/",
                                "gc": {"enabled": True, "apply": True, "retention": "14d"}}})
    assert find(applied, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["args"] == ["gc", "--retention=14d", "--apply"]
    refused = render_text({"store": {"gc": {"enabled": True}}, "watchNamespaces": ["a"]},
                          check=False)
    assert refused.returncode and "cluster-wide" in refused.stderr


def test_the_replicas_prefer_different_nodes_unless_told_otherwise() -> None:
    def affinity(values: dict[str, Any] | None = None) -> Any:
        return find(render(values), "Deployment")["spec"]["template"]["spec"].get("affinity")

    soft = affinity()["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    (term,) = soft
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = find(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    hard = affinity({"podAntiAffinity": "hard"})["podAntiAffinity"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname")
    assert affinity({"podAntiAffinity": ""}) is None
    assert affinity({"replicaCount": 1, "leaderElection": {"enabled": False}}) is None
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["ops"]}]}]}}}
    assert affinity({"affinity": own}) == own
