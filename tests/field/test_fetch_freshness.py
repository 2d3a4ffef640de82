"""What a serving pod's ``kiln fetch-engine`` accepts from the shared store, which every tenant
can write: a manifest signed by a trusted key that names a path outside the engine directory
writes nothing there; a manifest too large to be kiln's is refused from its size, unread.

The real control plane and operator build and serve the engine; the serving Deployment's
init container then runs here, as the kubelet would run it, against moto (through a proxy that
records what it serves where the test says so).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from builder.faults import S3Proxy
from e2e.support import Operator
from faults.serving import fetch, serving_deployment
from field.conftest import ENGINES
from field.support import create, engine_build, engine_deployment, get, is_ready
from kiln import EB_PLURAL
from kiln.contract import layout, provenance
from kiln.contract.manifest import MANIFEST, MAX_MANIFEST, FileEntry, Manifest
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import KEY_ANNOTATION, UPLOAD_ANNOTATION
from waiting import eventually

pytestmark = [pytest.mark.usefixtures("operator", "builders"), pytest.mark.timeout(300)]


class Recorder(S3Proxy):
    """moto behind a proxy that records, per GET, the path, the Range asked and the bytes
    served."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, lambda _m, _p: False)
        self.gets: list[tuple[str, str, int]] = []
        self.gets_lock = threading.Lock()

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        status, answer_headers, answer = super().forward(method, path, headers, body)
        if method == "GET":
            with self.gets_lock:
                self.gets.append((path, headers.get("Range", ""), len(answer)))
        return status, answer_headers, answer


def served(kube: Cluster, namespace: str, weights: str) -> tuple[Any, str]:
    """An engine built and served by kiln: its serving Deployment and its key."""
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}]),
           engine_deployment("chat", "llama", gpu="H100-SXM", fallback="none"))
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "llama")) or None, timeout=150)
    deployment = eventually(lambda: serving_deployment(kube, namespace, "chat"), timeout=60)
    key = deployment.spec.template.metadata.annotations[KEY_ANNOTATION]
    return deployment, key


def stored(s3_client: Any, key: str, name: str) -> bytes:
    data: bytes = s3_client.get_object(Bucket=ENGINES, Key=f"{layout.ENGINES}{key}/{name}")[
        "Body"].read()
    return data


def put(s3_client: Any, key: str, name: str, data: bytes) -> None:
    s3_client.put_object(Bucket=ENGINES, Key=f"{layout.ENGINES}{key}/{name}", Body=data)


def test_a_signed_manifest_naming_a_path_outside_the_engine_writes_nothing_there(
        kube: Cluster, namespace: str, weights: str, operator: Operator, s3_client: Any,
        tmp_path: Path) -> None:
    deployment, key = served(kube, namespace, weights)
    manifest_bytes, envelope = stored(s3_client, key, MANIFEST), stored(
        s3_client, key, provenance.ENVELOPE)
    signer = provenance.load_signer(Path(operator.env["KILN_SIGNING_KEY_FILE"]).read_bytes())
    job = provenance.verify(key, manifest_bytes, envelope,
                            [signer.public_key]).job  # what kiln signed, and for which Job

    # A trusted key signs a manifest that also names ../escaped.txt (a peer operator's key,
    # or a build whose output kiln signed); its bytes are in the store where it points.
    evil = json.loads(manifest_bytes)
    payload = b"written outside the engine directory"
    evil["files"].append({"path": "../escaped.txt", "size": len(payload),
                          "sha256": hashlib.sha256(payload).hexdigest()})
    put(s3_client, key, f"{evil['upload']}/../escaped.txt", payload)
    evil_bytes = json.dumps(evil, indent=2).encode()
    files = [FileEntry.model_construct(**f) for f in evil["files"]]
    unchecked = Manifest.model_construct(**{**evil, "files": files})
    put(s3_client, key, MANIFEST, evil_bytes)
    put(s3_client, key, provenance.ENVELOPE,
        provenance.sign(evil_bytes, unchecked, job, signer))

    dest = tmp_path / "pod" / "engine"
    dest.parent.mkdir()
    refused = fetch(kube, deployment, dest)
    assert not (dest.parent / "escaped.txt").exists(), refused.log
    assert refused.code != 0 and refused.reason in ("Untrusted", "IntegrityError"), refused
    assert "../escaped.txt" in refused.message, refused.message


def test_an_oversized_manifest_is_refused_without_being_read(
        kube: Cluster, namespace: str, weights: str, s3_client: Any, s3_endpoint: str,
        tmp_path: Path) -> None:
    deployment, key = served(kube, namespace, weights)
    size = 8 * MAX_MANIFEST
    put(s3_client, key, MANIFEST, b"{" + b" " * (size - 2) + b"}")  # a tenant's, in the store

    with Recorder(s3_endpoint) as proxy:
        refused = fetch(kube, deployment, tmp_path / "engine",
                        {"AWS_ENDPOINT_URL": proxy.url})
    assert refused.code != 0 and refused.reason == "Untrusted", refused
    assert f"{size} bytes" in refused.message, refused.message
    asked = [(rng, sent) for path, rng, sent in proxy.gets if path.split("?")[0].endswith(
        f"{key}/{MANIFEST}")]
    assert asked, proxy.gets
    for rng, sent in asked:  # never more asked for, nor served, than a manifest kiln writes
        assert rng.startswith("bytes=0-") and int(rng.removeprefix("bytes=0-")) <= MAX_MANIFEST
        assert sent <= MAX_MANIFEST + 1


def test_a_restored_older_upload_is_refused(
        kube: Cluster, namespace: str, weights: str, s3_client: Any, tmp_path: Path) -> None:
    deployment, key = served(kube, namespace, weights)
    first = deployment.spec.template.metadata.annotations[UPLOAD_ANNOTATION]
    older = {name: stored(s3_client, key, name) for name in (MANIFEST, provenance.ENVELOPE)}

    # The engine goes missing and kiln builds it again: a new upload, signed, served.
    for name in older:
        s3_client.delete_object(Bucket=ENGINES, Key=f"{layout.ENGINES}{key}/{name}")

    def pinned_again() -> Any:
        found = serving_deployment(kube, namespace, "chat")
        notes = found.spec.template.metadata.annotations if found else {}
        return found if notes.get(UPLOAD_ANNOTATION) not in (None, first) else None

    newer = eventually(pinned_again, timeout=180)
    # Someone with the store's credentials puts the older signed upload back.
    for name, data in older.items():
        put(s3_client, key, name, data)

    refused = fetch(kube, newer, tmp_path / "engine")
    assert refused.code != 0 and refused.reason == "Untrusted", refused
    assert first in refused.message and "pins upload" in refused.message, refused.message
