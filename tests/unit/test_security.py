"""The pure parts of kiln's security (docs/security.md): restricted pod specs and their
overrides, allowed builder images, the checks before signing, the statement's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from kiln.api import EngineBuildSpec
from kiln.config import OperatorConfig
from kiln.contract import env as names
from kiln.contract import provenance
from kiln.contract.key import key_of
from kiln.contract.manifest import FileEntry, Manifest
from kiln.contract.task import BuildTask
from kiln.engine_build import signing
from kiln.engine_build.plan import Want
from kiln.engine_build.render import render_job
from kiln.engine_build.targets import effective
from kiln.engine_deployment.render import render_deployment, render_trust, trust_name
from unit.test_engine_deployment_render import eb, ed, engine_serve

KEY = "ab" * 32
ORIGIN = {"scheme": "s3", "bucket": "models", "prefix": "llama/"}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                  "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
KILN_CONTAINER = {**RESTRICTED_CONTAINER, "runAsNonRoot": True, "runAsUser": 10001,
                  "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}


def job(**job_spec: Any) -> dict[str, Any]:
    spec = EngineBuildSpec.model_validate({"model": {"source": "s3://models/llama/"},
                                           "targets": [{"gpu": "H100-SXM"}], "job": job_spec})
    (target,) = effective(spec, [])
    task = BuildTask.for_build(key=KEY, weights_identity="w", origin=ORIGIN,
                               source="s3://models/llama/",
                               revision=None, build=spec.build, gpu_product=target.gpu_product,
                               compute_capability="9.0", store="s3://engines/",
                               builder_image="builder:1", credentials_from_env=False)
    return render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=spec,
                      want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
                      task_json=task.to_json(), config=OperatorConfig(),
                      trusted_keys="-----BEGIN PUBLIC KEY-----\n...")


def test_build_pods_are_restricted_and_get_the_trusted_keys() -> None:
    pod = job()["spec"]["template"]["spec"]
    assert pod["securityContext"] == RESTRICTED_POD
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == RESTRICTED_CONTAINER
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[names.TRUSTED_KEYS].startswith("-----BEGIN PUBLIC KEY-----")


def test_security_context_overrides_win() -> None:
    pod = job(securityContext={"runAsUser": 0, "runAsNonRoot": False,
                               "capabilities": {"add": ["SYS_PTRACE"]}})["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsNonRoot"]) == (
        0, False)
    assert pod["containers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_serving_pods_are_restricted_and_read_the_trust_config_map() -> None:
    deployment = render_deployment(ed(), eb(), engine_serve(), OperatorConfig())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == RESTRICTED_POD
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"] == RESTRICTED_CONTAINER
    assert pod["initContainers"][0]["securityContext"] == KILN_CONTAINER
    init = next(c for c in pod["initContainers"] if c["name"] == "fetch-engine")
    ref = next(e for e in init["env"] if e["name"] == names.TRUSTED_KEYS)
    assert ref["valueFrom"]["configMapKeyRef"] == {
        "name": "llama-kiln-trust", "key": "trusted-keys.pem", "optional": True}
    trust = render_trust(ed(), "PEM")
    assert trust["metadata"]["name"] == trust_name(ed())
    assert trust["metadata"]["ownerReferences"][0]["uid"] == "ed-uid"
    server = ed(server={"securityContext": {"runAsUser": 0, "runAsNonRoot": False}})
    root = render_deployment(server, eb(), engine_serve(), OperatorConfig())
    spec = root["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["initContainers"][0]["securityContext"] == KILN_CONTAINER


def test_server_overrides_never_reach_the_fetch_container() -> None:
    """Review finding 5: the pod-level override (root, no seccomp) reached fetch-engine, which
    set nothing of its own but the capabilities and escalation."""
    server = ed(server={"securityContext": {
        "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
        "seccompProfile": {"type": "Unconfined"}, "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["SYS_ADMIN"]}}})
    spec = render_deployment(server, eb(), engine_serve(), OperatorConfig())["spec"]["template"][
        "spec"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    fetch = next(c for c in spec["initContainers"] if c["name"] == "fetch-engine")
    assert fetch["securityContext"] == KILN_CONTAINER
    assert spec["containers"][0]["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]


@pytest.mark.parametrize(("image", "allowed"), [
    ("ghcr.io/kiln-dev/kiln-builder:0.1.0", True),
    ("ghcr.io/kiln-dev/kiln-builder@sha256:" + "1" * 64, True),
    ("ghcr.io/kiln-dev/kiln-builder", True),
    ("ghcr.io/kiln-dev/kiln-builder-evil:1", False),
    ("registry.test/team/anything:2", True),
    ("evil.example/x@sha256:" + "2" * 64, True),
    ("evil.example/x:latest", False),
])
def test_allowed_builder_images(image: str, allowed: bool) -> None:
    config = OperatorConfig.from_env({"KILN_ALLOWED_BUILDER_IMAGES": json.dumps(
        ["ghcr.io/kiln-dev/kiln-builder", "registry.test/team/", "sha256:" + "2" * 64])})
    assert config.image_allowed(image) is allowed
    assert OperatorConfig().image_allowed(image)  # empty list: any


def _pod(job_body: dict[str, Any], message: dict[str, Any], code: int = 0) -> dict[str, Any]:
    """A pod the Job controller made of ``job_body``: its labels, owner and template."""
    uid = job_body["metadata"]["uid"]
    return {"metadata": {"name": "kiln-build-x-abcde",
                         "labels": {"batch.kubernetes.io/controller-uid": uid,
                                    "job-name": job_body["metadata"]["name"]},
                         "ownerReferences": [{"kind": "Job", "uid": uid, "controller": True,
                                              "name": job_body["metadata"]["name"]}]},
            "spec": {**json.loads(json.dumps(job_body["spec"]["template"]["spec"])),
                     "serviceAccountName": "default", "nodeName": "n1"},
            "status": {"containerStatuses": [{"name": "builder", "state": {"terminated": {
                "exitCode": code, "message": json.dumps(message)}}}]}}


def _job_with_uid() -> dict[str, Any]:
    return {**job(), "metadata": {**job()["metadata"], "uid": "job-uid"}}


def _problem(body: dict[str, Any], image: str = "builder:1") -> str | None:
    rendered = job()
    if image != "builder:1":
        rendered["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return signing.job_problem(body, rendered)


def test_only_kilns_job_and_its_own_pods_report_count() -> None:
    body = _job_with_uid()
    assert _problem(body) is None
    assert "running other:2" in str(_problem(body, "other:2"))
    swapped = json.loads(json.dumps(body))
    swapped["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "evil"]
    assert _problem(swapped) is not None
    extra = json.loads(json.dumps(body))
    extra["spec"]["template"]["spec"]["initContainers"] = [{"name": "x", "image": "y"}]
    assert _problem(extra) is not None

    wrote = {"key": KEY, "cached": False, "manifestSha256": "d" * 64}
    report = signing.built(body, [_pod(body, wrote)])
    assert isinstance(report, signing.Built) and report.job.uid == "job-uid"
    assert signing.built(body, [_pod(body, {**wrote, "cached": True})]) is None
    assert signing.built(body, [_pod(body, wrote, code=1)]) is None
    stranger = _pod(body, wrote)
    stranger["metadata"]["ownerReferences"] = [{"uid": "another-job"}]
    assert signing.built(body, [stranger]) is None


def test_a_pod_without_the_jobs_spec_is_not_its_pod() -> None:
    """The reviewer's forge: a busybox pod with the Job's name label and an owner reference to
    its uid, reporting the digest of the tenant's own manifest, listed first."""
    body = _job_with_uid()
    forged = {"metadata": {"name": "aaa-forged", "labels": {"job-name": body["metadata"]["name"]},
                           "ownerReferences": [{"uid": "job-uid"}]},
              "spec": {"containers": [{"name": "builder", "image": "busybox"}]},
              "status": {"containerStatuses": [{"name": "builder", "state": {"terminated": {
                  "exitCode": 0, "message": json.dumps({"manifestSha256": "e" * 64})}}}]}}
    real = _pod(body, {"key": KEY, "cached": False, "manifestSha256": "d" * 64})
    report = signing.built(body, [forged, real])
    assert isinstance(report, signing.Built) and report.manifest_sha256 == "d" * 64
    # Even with the controller-uid label and a controller owner reference: not its spec.
    forged["metadata"] = {**real["metadata"], "name": "aaa-forged"}
    report = signing.built(body, [forged, real])
    assert isinstance(report, signing.Built) and report.manifest_sha256 == "d" * 64
    # The old unit helper's pod (an owner reference, no spec, no label): refused.
    specless = {"metadata": {"ownerReferences": [{"uid": "job-uid"}]},
                "status": real["status"]}
    assert signing.built(body, [specless]) is None
    for name, value in (("hostPID", True), ("volumes", []),
                        ("securityContext", {"runAsUser": 0})):
        changed = json.loads(json.dumps(real))
        changed["spec"][name] = value
        assert signing.built(body, [changed]) is None, name
    added = json.loads(json.dumps(real))
    added["spec"]["containers"][0]["env"].append({"name": "LD_PRELOAD", "value": "/x.so"})
    assert signing.built(body, [added]) is None
    # The whole spec is compared (issue 24): whatever runs the tenant's code, or points the
    # pod elsewhere, disqualifies it; what the scheduler and admission set does not.
    hook = {"exec": {"command": ["sh", "-c", "evil"]}}
    for where, name, value in (
            ("container", "lifecycle", {"postStart": hook}),
            ("container", "livenessProbe", hook), ("container", "startupProbe", hook),
            ("container", "stdin", True), ("container", "tty", True),
            ("pod", "hostAliases", [{"ip": "10.0.0.9", "hostnames": ["s3.amazonaws.com"]}]),
            ("pod", "dnsConfig", {"nameservers": ["10.0.0.9"]}),
            ("pod", "dnsPolicy", "None"), ("pod", "hostname", "x")):
        changed = json.loads(json.dumps(real))
        target = changed["spec"]["containers"][0] if where == "container" else changed["spec"]
        target[name] = value
        assert signing.built(body, [changed]) is None, name
    admitted = json.loads(json.dumps(real))
    admitted["spec"] |= {"priority": 0, "preemptionPolicy": "PreemptLowerPriority",
                         "tolerations": [{"key": "node.kubernetes.io/not-ready",
                                          "operator": "Exists", "effect": "NoExecute",
                                          "tolerationSeconds": 300}]}
    admitted["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1"}}
    assert isinstance(signing.built(body, [admitted]), signing.Built)
    # Two of its own pods reporting different manifests: neither is signed.
    other = _pod(body, {"key": KEY, "cached": False, "manifestSha256": "f" * 64})
    assert "2 different manifests" in str(signing.built(body, [real, other]))


def _evil(change: str) -> dict[str, Any]:
    evil = _job_with_uid()
    pod = evil["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if change == "env":
        c["env"].append({"name": "LD_PRELOAD", "value": "/evil/lib.so"})
    elif change == "path":
        c["env"].append({"name": "PATH", "value": "/evil:/usr/bin"})
    elif change == "mount":
        c["volumeMounts"].append({"name": "evil", "mountPath": "/usr/local/bin"})
        pod["volumes"].append({"name": "evil", "configMap": {"name": "x", "defaultMode": 493}})
    elif change == "privileged":
        c["securityContext"] = {**c["securityContext"], "privileged": True}
    elif change == "hostPID":
        pod["hostPID"] = True
    elif change == "hostNetwork":
        pod["hostNetwork"] = True
    elif change == "serviceAccount":
        pod["serviceAccountName"] = "admin"
    elif change == "envFrom":
        c["envFrom"] = [{"configMapRef": {"name": "x"}}]
    elif change == "name":
        evil["metadata"]["name"] = "kiln-build-other"
    elif change == "parallelism":
        evil["spec"]["parallelism"] = 2
    elif change == "managedBy":
        evil["spec"]["managedBy"] = "example.com/mine"
    elif change == "annotations":
        evil["spec"]["template"]["metadata"]["annotations"] = {
            "container.apparmor.security.beta.kubernetes.io/builder": "unconfined"}
    elif change in ("task", "source", "store", "endpoints"):
        task = next(e for e in c["env"] if e["name"] == names.TASK)
        parsed = json.loads(task["value"])
        if change == "task":
            parsed["weightsIdentity"] = "other"
        elif change == "source":
            parsed["source"]["uri"] = "s3://tenant-copy/llama/"
        elif change == "endpoints":
            parsed["source"]["endpoints"] = {"AWS_ENDPOINT_URL": "http://tenant.example"}
        else:
            parsed["store"] = "s3://tenant-store/"
        task["value"] = json.dumps(parsed)
    elif change in ("lifecycle", "readinessProbe"):
        c[change] = {"exec": {"command": ["sh", "-c", "evil"]}} if change != "lifecycle" \
            else {"postStart": {"exec": {"command": ["sh", "-c", "evil"]}}}
    elif change == "hostAliases":
        pod["hostAliases"] = [{"ip": "10.0.0.9", "hostnames": ["s3.amazonaws.com"]}]
    return evil


@pytest.mark.parametrize("change", ["env", "path", "mount", "privileged", "hostPID",
                                    "hostNetwork", "serviceAccount", "envFrom", "name",
                                    "parallelism", "managedBy", "annotations", "task",
                                    "source", "store", "endpoints", "lifecycle",
                                    "readinessProbe", "hostAliases"])
def test_a_tenant_authored_job_is_not_kilns(change: str) -> None:
    """The reviewer's forge: a Job of the key's name that adds to kiln's render."""
    assert _problem(_evil(change)) is not None


def test_a_job_reading_another_credentials_secret_is_not_kilns() -> None:
    """The Secret's name is compared (it is part of the key's origin): another Secret may name
    another endpoint."""
    spec = EngineBuildSpec.model_validate({"model": {"source": "s3://models/llama/",
                                                     "credentialsSecret": "creds"},
                                           "targets": [{"gpu": "H100-SXM"}]})
    (target,) = effective(spec, [])
    task = BuildTask.for_build(key=KEY, weights_identity="w", origin=ORIGIN,
                               source="s3://models/llama/", revision=None, build=spec.build,
                               gpu_product=target.gpu_product, compute_capability="9.0",
                               store="s3://engines/", builder_image="builder:1",
                               credentials_from_env=True)
    rendered = render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=spec,
                          want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
                          task_json=task.to_json(), config=OperatorConfig())
    body = {**json.loads(json.dumps(rendered)),
            "metadata": {**rendered["metadata"], "uid": "job-uid"}}
    assert signing.job_problem(body, rendered) is None
    for entry in body["spec"]["template"]["spec"]["containers"][0]["env"]:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            ref["name"] = "elsewhere"
    assert "environment" in str(signing.job_problem(body, rendered))


def test_what_the_apiserver_and_other_engine_builds_of_the_key_set_is_kilns() -> None:
    body = _job_with_uid()
    spec, pod = body["spec"], body["spec"]["template"]["spec"]
    spec |= {"completions": 1, "parallelism": 1, "completionMode": "NonIndexed",
             "suspend": False, "podReplacementPolicy": "TerminatingOrFailed",
             "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "job-uid"}},
             "backoffLimit": 9}
    spec["template"]["metadata"]["labels"] |= {"batch.kubernetes.io/controller-uid": "job-uid",
                                               "controller-uid": "job-uid",
                                               "job-name": body["metadata"]["name"]}
    pod |= {"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "tolerations": [], "priorityClassName": "p"}
    pod["containers"][0] |= {"terminationMessagePath": "/dev/termination-log",
                             "imagePullPolicy": "IfNotPresent", "resources": {}}
    for rule in spec["podFailurePolicy"]["rules"]:  # as the apiserver returns it
        rule.setdefault("onPodConditions", [])
        for condition in rule["onPodConditions"]:
            condition.setdefault("status", "True")
    assert _problem(body) is None
    root = json.loads(json.dumps(body))  # an override an EngineBuild may set: renderable
    root["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    assert _problem(root) is None


def _admitted(**admission: Any) -> dict[str, Any]:
    """A queued build Job as Kueue v0.17 leaves it once admitted (queued.ADMISSION_*): not
    suspended, its template labelled with the PodSet and queues, annotated with the Workload,
    the flavor's node labels and tolerations merged in, a topology gate."""
    body = job(queueName="builds")
    body["metadata"]["uid"] = "job-uid"
    spec = body["spec"]
    template = spec["template"]
    spec["suspend"] = False
    template["metadata"]["labels"] |= {"kueue.x-k8s.io/podset": "main",
                                       "kueue.x-k8s.io/local-queue-name": "builds",
                                       "kueue.x-k8s.io/cluster-queue-name": "gpus"}
    template["metadata"]["annotations"] = {"kueue.x-k8s.io/workload": "job-kiln-build-1",
                                           "kueue.x-k8s.io/podset-unconstrained-topology": "true"}
    pod = template["spec"]
    pod["nodeSelector"] = {**pod.get("nodeSelector", {}), "cloud.example/pool": "h100"}
    pod["tolerations"] = [*pod.get("tolerations", []),
                          {"key": "reserved", "operator": "Exists", "effect": "NoSchedule"}]
    pod["schedulingGates"] = [{"name": "kueue.x-k8s.io/topology"}]
    for path, value in admission.items():  # what differs from Kueue's: "labels.x": "y"
        if path == "gates":
            pod["schedulingGates"] = value
        else:
            field, name = path.split(".", 1)
            template["metadata"][field][name] = value
    return body


def test_kueues_admission_of_a_queued_job_is_kilns() -> None:
    """Kueue unsuspends an admitted Job and merges its PodSet's admission into the template:
    kiln still signs what it builds."""
    assert signing.job_problem(_admitted(), job(queueName="builds")) is None
    body = _admitted()  # the apiserver's defaults on top
    body["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    assert signing.job_problem(body, job(queueName="builds")) is None


@pytest.mark.parametrize(("admission", "why"), [
    ({"labels.kueue.x-k8s.io/podset": "workers"}, "labels"),
    ({"labels.kueue.x-k8s.io/local-queue-name": "other"}, "labels"),
    ({"labels.team": "a"}, "labels"),
    ({"annotations.kueue.x-k8s.io/podset-unconstrained-topology": "false"}, "annotations"),
    ({"annotations.container.apparmor.security.beta.kubernetes.io/builder": "unconfined"},
     "annotations"),
    ({"gates": [{"name": "kueue.x-k8s.io/topology"}, {"name": "other"}]}, "schedulingGates"),
])
def test_only_what_kueue_writes_on_admission_is_allowed(admission: dict[str, Any],
                                                        why: str) -> None:
    assert why in str(signing.job_problem(_admitted(**admission), job(queueName="builds")))


def test_kueues_admission_labels_on_a_job_kiln_did_not_queue_are_not_kilns() -> None:
    body = _admitted()
    del body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]  # its queue is kiln's: none
    assert "labels" in str(signing.job_problem(body, job()))


@pytest.mark.parametrize("change", ["image", "readinessProbe", "hostAliases", "env", "mount",
                                    "annotations", "parallelism"])
def test_a_tenants_changes_to_an_admitted_job_are_not_kilns(change: str) -> None:
    """Kueue's admission opens nothing else: an exec probe, a host alias, another image on
    an admitted Job are still a tenant's."""
    body, rendered = _admitted(), job(queueName="builds")
    if change == "image":
        body["spec"]["template"]["spec"]["containers"][0]["image"] = "tenant/builder:1"
    else:
        evil = _evil(change)
        if change == "annotations":
            body["spec"]["template"]["metadata"]["annotations"] |= evil["spec"]["template"][
                "metadata"]["annotations"]
        elif change == "parallelism":
            body["spec"]["parallelism"] = 2
        else:
            body["spec"]["template"]["spec"]["containers"] = evil["spec"]["template"]["spec"][
                "containers"]
            body["spec"]["template"]["spec"]["volumes"] = evil["spec"]["template"]["spec"][
                "volumes"]
            if change == "hostAliases":
                body["spec"]["template"]["spec"]["hostAliases"] = evil["spec"]["template"][
                    "spec"]["hostAliases"]
    assert signing.job_problem(body, rendered) is not None


def test_only_the_manifest_the_job_wrote_is_signable() -> None:
    inputs = {"schema": 1, "gpuProduct": "X"}
    key = key_of(inputs)
    manifest = Manifest(key=key, inputs=inputs, upload="u1",
                        files=[FileEntry(path="a", size=1, sha256="0" * 64)])
    data = manifest.to_json()
    report = signing.Built(provenance.JobRef("ns", "j", "uid"), provenance.sha256(data))
    assert signing.signable(key, data, report) == manifest
    assert "replaced by another writer" in str(signing.signable(key, data + b" ", report))
    assert signing.signable(key, None, report) == "no manifest in the store"
    other = Manifest(key=key, inputs={"schema": 2}, upload="u1").to_json()
    assert "do not hash" in str(signing.signable(key, other, signing.Built(
        report.job, provenance.sha256(other))))


def test_the_statement_is_in_toto_v1_over_the_manifest_and_every_file() -> None:
    inputs = {"schema": 1, "builderImage": "builder:1"}
    key = key_of(inputs)
    manifest = Manifest(key=key, inputs=inputs, upload="u1", versions={"tensorrt_llm": "1.2.1"},
                        files=[FileEntry(path="rank0.engine", size=1, sha256="1" * 64)])
    data = manifest.to_json()
    envelope = json.loads(provenance.sign(data, manifest, provenance.JobRef("ns", "j", "uid"),
                                          CryptoSigner.generate_ecdsa()))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    import base64
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == provenance.PREDICATE_TYPE
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {
        "manifest.json": provenance.sha256(data), "rank0.engine": "1" * 64}
    predicate = statement["predicate"]
    assert (predicate["key"], predicate["builderImage"], predicate["job"]["uid"],
            predicate["versions"]) == (key, "builder:1", "uid", {"tensorrt_llm": "1.2.1"})


@pytest.mark.parametrize("label", ["app.kubernetes.io/managed-by", "kiln.dev/engine-key"])
def test_extra_pod_labels_may_not_set_kilns_own(label: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The operator watches its pods by its own labels: a pod relabelled by the config
    would be one it cannot see. Left out with a warning (an upgrade still starts)."""
    config = OperatorConfig.from_env({
        "KILN_BUILD_POD_LABELS": json.dumps({label: "x", "team": "a"}),
        "KILN_SERVING_POD_LABELS": json.dumps({label: "x"})})
    assert config.build_pod_labels == {"team": "a"} and config.serving_pod_labels == {}
    assert f"KILN_BUILD_POD_LABELS: ignoring {label}" in caplog.text


def test_a_job_without_a_uid_allows_no_controller_uid_label() -> None:
    """What kiln expects but cannot know (no uid) allows nothing, unlike Kueue's any-value
    labels."""
    body = job(queueName="builds")
    body["spec"]["template"]["metadata"]["labels"]["controller-uid"] = "forged"
    assert "labels" in str(signing.job_problem(body, job(queueName="builds")))


def test_a_job_that_left_its_queue_is_not_kilns() -> None:
    """The key's Job without its queue label (a tenant's, created first) runs outside the
    ClusterQueue's quota: not kiln's. Nor is one a tenant put in a queue kiln did not name."""
    unqueued = _admitted()
    del unqueued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    assert "queue" in str(signing.job_problem(unqueued, job(queueName="builds")))
    other = _admitted()
    other["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "tenant-queue"
    assert "queue" in str(signing.job_problem(other, job(queueName="builds")))
    assert signing.job_problem(_admitted(), job(queueName="builds")) is None
