"""Nobody else's engine: a squatter with the store's credentials writes a complete engine
under a victim's key, before and after the victim's build, and the signing key rotates.

The real control plane, the operator as a process, builds by the real kiln-builder, moto's S3;
serving pods' ``kiln fetch-engine`` runs as the Deployment kiln rendered would run it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from securesystemslib.signer import CryptoSigner

from e2e.support import Operator, get_eb
from faults.serving import fetch, serving_deployment
from faults.support import ENGINES, create, engine_build
from kiln import GROUP, VERSION
from kiln.api import EngineBuild
from kiln.contract import exitcodes, provenance
from kiln.contract.key import key_inputs, key_of
from kiln.dev import signing
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.domain.labels import KEY_ANNOTATION
from kiln.engine_build.targets import effective
from kiln.sources import open_source, origin_of
from kiln.store import EngineStore, open_store
from waiting import eventually

pytestmark = pytest.mark.timeout(300)


def engine_deployment(name: str, build: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
            "metadata": {"name": name},
            "spec": {"engineBuildRef": {"name": build}, "replicas": 1, "gpu": "H100-SXM",
                     "fallback": "none"}}


def create_ed(kube: Cluster, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube.api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginedeployments", body)


def victim_key(body: dict[str, Any], weights: str, endpoint: str,
               namespace: str) -> tuple[str, dict[str, Any]]:
    """What anyone can compute from the public inputs: the key of the victim's engine."""
    eb = EngineBuild.model_validate(body)
    (target,) = effective(eb.spec, [])
    identity = open_source(weights, endpoint_url=endpoint).identity().digest
    inputs = key_inputs(weights_identity=identity, origin=origin_of(weights, namespace, None),
                        build=eb.spec.build,
                        builder_image="kiln-builder:test", gpu_product=target.gpu_product,
                        compute_capability=target.compute_capability)
    return key_of(inputs), inputs


def squat(store: EngineStore, key: str, inputs: dict[str, Any], tmp: Path) -> str:
    """A complete engine (files, their true digests, a manifest whose inputs hash to the key)
    and an envelope signed with the squatter's own key, written over whatever is there."""
    evil = tmp / f"evil-{os.urandom(3).hex()}"
    evil.mkdir()
    (evil / "config.json").write_text('{"evil": true}')
    (evil / "model.safetensors").write_bytes(os.urandom(4096))
    manifest = store.upload(key, evil, inputs=inputs, keep=lambda _: False)
    data = store.read_manifest_bytes(key)
    assert data is not None and manifest.key == key
    store.write_envelope(key, provenance.sign(data, manifest, provenance.JobRef(
        "squat", "kiln-build-x", "fake"), CryptoSigner.generate_ecdsa()))
    return manifest.upload


class States:
    """Every engine state the victim's status showed, polled in the background."""

    def __init__(self, kube: Cluster, namespace: str, name: str) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()

        def poll() -> None:
            while not self._stop.wait(0.2):
                status = get_eb(kube, namespace, name).get("status") or {}
                self.seen |= {e.get("state", "") for e in status.get("engines", [])}

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen


def engine(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    status = get_eb(kube, namespace, name).get("status") or {}
    engines = status.get("engines") or [{}]
    return engines[0] if status.get("phase") == "Ready" else None


def runs(builders: LocalProcessRunner, namespace: str) -> int:
    return sum(f.namespace == namespace and f.exit_code == 0 for f in builders.finished)


def test_a_squatted_key_is_never_cached_nor_served(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str, s3_client: Any, tmp_path: Path) -> None:
    body = engine_build("victim", weights)
    key, inputs = victim_key(body, weights, s3_endpoint, namespace)
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    squatted = squat(store, key, inputs, tmp_path)  # before the victim's build
    states = States(kube, namespace, "victim")
    create(kube, namespace, body)
    create_ed(kube, namespace, engine_deployment("chat", "victim"))

    # The victim builds (the squatter's engine counts as absent), then its own engine serves.
    ready = eventually(lambda: engine(kube, namespace, "victim"), timeout=120)
    assert (ready["key"], ready["state"]) == (key, "Ready")
    assert runs(builders, namespace) == 1
    owner = provenance.public_keys(
        signing.public_pem(Path(operator.env["KILN_SIGNING_KEY_FILE"])))
    verified = provenance.verify(key, store.read_manifest_bytes(key), store.read_envelope(key),
                                 owner)
    assert verified.manifest.upload != squatted
    assert verified.job.namespace == namespace and verified.job.name.startswith("kiln-build-")
    deployment = eventually(lambda: serving_deployment(kube, namespace, "chat"), timeout=60)
    done = fetch(kube, deployment, tmp_path / "first")
    assert done.code == exitcodes.OK, done.log
    assert (tmp_path / "first" / "model.safetensors").exists()

    # After the build: the squatter replaces the manifest (and the envelope) again.
    squat(store, key, inputs, tmp_path)
    refused = fetch(kube, deployment, tmp_path / "second")
    assert (refused.code, refused.reason) == (exitcodes.UNTRUSTED, "Untrusted"), refused.log
    assert not (tmp_path / "second" / "model.safetensors").exists()
    # The operator notices at its next verification and builds the key again; serving goes on.
    eventually(lambda: runs(builders, namespace) == 2 or None, timeout=120)
    again = eventually(lambda: engine(kube, namespace, "victim"), timeout=60)
    assert again["key"] == key
    # The rebuilt key is a new upload: the Deployment rolls onto it (its pods pin it), and
    # the old pod template, which pinned the first upload, fetches nothing.
    rolled = eventually(lambda: d if (d := serving_deployment(kube, namespace, "chat"))
                        and _pin(d) not in (None, _pin(deployment)) else None, timeout=60)
    stale = fetch(kube, deployment, tmp_path / "stale")
    assert (stale.code, stale.reason) == (exitcodes.UNTRUSTED, "Untrusted"), stale.log
    done = eventually(lambda: (f if (f := fetch(kube, rolled, tmp_path / "third")).code
                               == exitcodes.OK else None), timeout=30)
    assert "signed by a trusted key" in done.log
    assert "Cached" not in states.stop()

    # A flipped byte in a file of the signed engine is refused by its sha256.
    manifest = store.read_manifest(key)
    assert manifest is not None
    name = f"engines/{key}/{manifest.upload}/model.safetensors"
    data = bytearray(s3_client.get_object(Bucket=ENGINES, Key=name)["Body"].read())
    data[100] ^= 0xFF
    s3_client.put_object(Bucket=ENGINES, Key=name, Body=bytes(data))
    broken = fetch(kube, rolled, tmp_path / "fourth")
    assert (broken.code, broken.reason) == (exitcodes.INTEGRITY, "IntegrityError"), broken.log
    assert "model.safetensors" in broken.message


def _pin(deployment: Any) -> str | None:
    """The upload the Deployment's ``fetch-engine`` pins (``--upload``)."""
    init = next(c for c in deployment.spec.template.spec.init_containers
                if c.name == "fetch-engine")
    args = list(init.args)
    return args[args.index("--upload") + 1] if "--upload" in args else None


def _restart(operator: Operator, **env: str | None) -> None:
    operator.kill()
    for name, value in env.items():
        if value is None:
            operator.env.pop(name, None)
        else:
            operator.env[name] = value
    operator.start()


def _trust(kube: Cluster, namespace: str, ed: str) -> str:
    data = client.CoreV1Api(kube.api_client).read_namespaced_config_map(
        f"{ed}-kiln-trust", namespace).data or {}
    return str(data.get("trusted-keys.pem", ""))


def test_a_rotated_key_keeps_old_engines_serving_until_re_signed(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    old_file = Path(operator.env["KILN_SIGNING_KEY_FILE"])
    old_pem = signing.public_pem(old_file)
    (old_key,) = provenance.public_keys(old_pem)
    new_file = signing.write_key(tmp_path / "new-key.pem")
    (new_key,) = provenance.public_keys(signing.public_pem(new_file))
    (tmp_path / "old.pem").write_text(old_pem)
    create(kube, namespace, engine_build("a", weights, max_batch_size=8))
    create(kube, namespace, engine_build("b", weights, max_batch_size=9))
    create_ed(kube, namespace, engine_deployment("chat", "a"))
    key_a = eventually(lambda: engine(kube, namespace, "a"), timeout=120)["key"]
    key_b = eventually(lambda: engine(kube, namespace, "b"), timeout=120)["key"]
    assert runs(builders, namespace) == 2
    # "b" goes away before the rotation: its engine stays signed by the old key only.
    client.CustomObjectsApi(kube.api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginebuilds", "b")
    deployment = eventually(lambda: serving_deployment(kube, namespace, "chat"), timeout=60)
    try:
        # Rotation, step 1: sign with the new key, the old public key still listed.
        _restart(operator, KILN_SIGNING_KEY_FILE=str(new_file),
                 KILN_TRUSTED_KEYS_FILE=str(tmp_path / "old.pem"))
        eventually(lambda: (old_pem.strip() in _trust(kube, namespace, "chat")
                   and len(provenance.public_keys(_trust(kube, namespace, "chat"))) == 2)
                   or None, timeout=60)
        done = fetch(kube, deployment, tmp_path / "during")
        assert done.code == exitcodes.OK, done.log
        # The operator verifies what the old key signed and never countersigns it: it signs
        # only what its own Jobs built.
        operator.resynced("enginebuilds")
        assert provenance.signed_by(store.read_envelope(key_a) or b"", old_key)
        assert not provenance.signed_by(store.read_envelope(key_a) or b"", new_key)
        assert not provenance.signed_by(store.read_envelope(key_b) or b"", new_key)

        # Step 2: the old public key removed. The engine "a" serves counts as absent until the
        # operator signs the same manifest again from the kiln Job that built it.
        _restart(operator, KILN_TRUSTED_KEYS_FILE=None)
        eventually(lambda: (len(provenance.public_keys(_trust(kube, namespace, "chat"))) == 1
                   and old_pem.strip() not in _trust(kube, namespace, "chat")) or None,
                   timeout=60)
        eventually(lambda: provenance.signed_by(store.read_envelope(key_a) or b"", new_key)
                   or None, timeout=60)
        done = fetch(kube, deployment, tmp_path / "after")
        assert done.code == exitcodes.OK, done.log
        assert engine(kube, namespace, "a") is not None
        # The engine signed only with the old key counts as absent: "b" again builds it.
        with pytest.raises(provenance.Untrusted):
            provenance.verify(key_b, store.read_manifest_bytes(key_b), store.read_envelope(key_b),
                              [new_key])
        # (Its Job gone too: a kiln Job that built the key, still there, would let the operator
        # sign the same manifest again instead of building it.)
        batch = client.BatchV1Api(kube.api_client)
        for job in batch.list_namespaced_job(namespace).items:
            if job.metadata.annotations.get(KEY_ANNOTATION) == key_b:
                batch.delete_namespaced_job(job.metadata.name, namespace,
                                            propagation_policy="Background")
        eventually(lambda: not [j for j in batch.list_namespaced_job(namespace).items
                                if j.metadata.annotations.get(KEY_ANNOTATION) == key_b],
                   timeout=30)
        create(kube, namespace, engine_build("b", weights, max_batch_size=9))
        rebuilt = eventually(lambda: engine(kube, namespace, "b"), timeout=120)
        assert (rebuilt["key"], rebuilt["state"]) == (key_b, "Ready")  # built, not Cached
        assert runs(builders, namespace) == 3
        provenance.verify(key_b, store.read_manifest_bytes(key_b), store.read_envelope(key_b),
                          [new_key])
    finally:
        _restart(operator, KILN_SIGNING_KEY_FILE=str(old_file), KILN_TRUSTED_KEYS_FILE=None)
