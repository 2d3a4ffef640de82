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
from kiln.contract.manifest import FileEntry, Manifest
from kiln.contract.task import BuildTask
from kiln.engine_build import signing
from kiln.engine_build.plan import Want
from kiln.engine_build.render import render_job
from kiln.engine_deployment.render import render_deployment, render_trust, trust_name
from kiln.key import key_of
from kiln.targets import effective
from unit.test_engine_deployment_render import eb, ed, engine_serve

KEY = "ab" * 32
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                  "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def job(**job_spec: Any) -> dict[str, Any]:
    spec = EngineBuildSpec.model_validate({"model": {"source": "s3://models/llama/"},
                                           "targets": [{"gpu": "H100-SXM"}], "job": job_spec})
    (target,) = effective(spec, [])
    task = BuildTask.for_build(key=KEY, weights_identity="w", source="s3://models/llama/",
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
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["securityContext"] == RESTRICTED_CONTAINER
    (init,) = pod["initContainers"]
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
    assert spec["initContainers"][0]["securityContext"] == RESTRICTED_CONTAINER


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
    return {"metadata": {"ownerReferences": [{"uid": job_body["metadata"]["uid"]}]},
            "status": {"containerStatuses": [{"name": "builder", "state": {"terminated": {
                "exitCode": code, "message": json.dumps(message)}}}]}}


def test_only_kilns_job_and_its_own_pods_report_count() -> None:
    body = {**job(), "metadata": {**job()["metadata"], "uid": "job-uid"}}
    assert signing.kiln_job_problem(body, KEY, "builder:1") is None
    assert "running other:2" in str(signing.kiln_job_problem(body, KEY, "other:2"))
    swapped = json.loads(json.dumps(body))
    swapped["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "evil"]
    assert signing.kiln_job_problem(swapped, KEY, "builder:1") is not None
    extra = json.loads(json.dumps(body))
    extra["spec"]["template"]["spec"]["initContainers"] = [{"name": "x", "image": "y"}]
    assert signing.kiln_job_problem(extra, KEY, "builder:1") is not None

    wrote = {"key": KEY, "cached": False, "manifestSha256": "d" * 64}
    report = signing.built(body, [_pod(body, wrote)])
    assert report is not None and report.job.uid == "job-uid"
    assert signing.built(body, [_pod(body, {**wrote, "cached": True})]) is None
    assert signing.built(body, [_pod(body, wrote, code=1)]) is None
    stranger = _pod(body, wrote)
    stranger["metadata"]["ownerReferences"] = [{"uid": "another-job"}]
    assert signing.built(body, [stranger]) is None


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
