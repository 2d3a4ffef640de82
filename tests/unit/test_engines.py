"""Engines in the store (``kiln.engine_build.engines``): a serving pod's report makes kiln
look for itself, a damaged engine is set aside (kept, never served), an intact one is left
alone whatever a pod says, and signing again with the current key is a step of its own."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from kiln.config import OperatorConfig
from kiln.contract import layout, provenance
from kiln.contract.key import key_of
from kiln.contract.manifest import Manifest
from kiln.contract.termination import Failure
from kiln.dev import signing
from kiln.domain.labels import KEY_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.engine_build import engines as module
from kiln.engine_build.engines import Engines, Report, reports
from kiln.engine_build.jobs import ObservedJob
from kiln.store import open_store
from kiln.trust.keys import Trust

INPUTS = {"computeCapability": "9.0", "origin": {"namespace": "ns"}}
"""Built in namespace ``ns`` (``JOB``'s): it counts there."""
KEY = key_of(INPUTS)
JOB = provenance.JobRef("ns", "kiln-build-x", "uid-1")


@pytest.fixture
def engines(tmp_path: Path) -> Engines:
    config = OperatorConfig(signing_key_file=str(signing.write_key(tmp_path / "key.pem")),
                            verify_seconds=600)
    return Engines(config, Trust.from_config(config))


@pytest.fixture
def uri(tmp_path: Path, engines: Engines) -> str:
    """A store holding engine ``KEY``, signed by the operator's key."""
    (tmp_path / "store").mkdir()
    src = tmp_path / "engine"
    src.mkdir()
    (src / "rank0.engine").write_bytes(os.urandom(64 * 1024))
    (src / "config.json").write_text("{}")
    uri = f"file://{tmp_path / 'store'}/"
    store = open_store(uri)
    store.upload(KEY, src, inputs=INPUTS)
    data = store.read_manifest_bytes(KEY)
    assert data is not None and engines.trust.signer is not None
    store.write_envelope(KEY, provenance.sign(data, Manifest.model_validate_json(data), JOB,
                                              engines.trust.signer))
    return uri


def flip(uri: str, name: str) -> Path:
    store = open_store(uri)
    manifest = store.read_manifest(KEY)
    assert manifest is not None
    path = Path(uri.removeprefix("file://")) / "engines" / KEY / manifest.upload / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def integrity(name: str, pod: str = "chat-1") -> Report:
    return Report(pod, "IntegrityError", f"engine {KEY}: {name} of engine {KEY[:12]} in x is "
                  "corrupt: its sha256 is a, the manifest says b")


def test_engine_uris_are_composed_in_one_place_and_parse_back() -> None:
    assert layout.engine_uri("s3://b/p", KEY) == f"s3://b/p/engines/{KEY}/"
    assert layout.store_of(layout.engine_uri("s3://b/p/", KEY), KEY) == "s3://b/p/"
    assert layout.damaged_uri("s3://b/", KEY, "u1") == f"s3://b/damaged/{KEY}/u1/"
    with pytest.raises(ValueError, match="not an engine URI"):
        layout.store_of("s3://b/p/elsewhere/", KEY)


def test_only_fetch_failures_of_a_missing_or_damaged_engine_are_reports() -> None:
    def pod(name: str, reason: str, key: str = KEY, *, deleting: bool = False) -> ObservedPod:
        return ObservedPod(name, "rs", None, "Pending", deleting=deleting,
                           init_failure=("fetch-engine", Failure(reason, "m")),
                           annotations=((KEY_ANNOTATION, key),))

    found = reports([pod("a", "IntegrityError"), pod("b", "NotFound"), pod("c", "GPUMismatch"),
                     pod("d", "NotFound", "f" * 64), pod("e", "Untrusted", deleting=True)],
                    [KEY])
    assert [(r.pod, r.reason) for r in found[KEY]] == [("a", "IntegrityError"),
                                                       ("b", "NotFound")]
    assert set(found) == {KEY}


def test_a_damaged_file_is_set_aside_with_the_evidence_and_counts_as_absent(
        engines: Engines, uri: str) -> None:
    assert engines.manifest(uri, KEY, "ns", None) is not None
    store = open_store(uri)
    before = store.read_manifest_bytes(KEY)
    upload = Manifest.model_validate_json(before or b"").upload
    damaged = flip(uri, "rank0.engine").read_bytes()

    assert engines.check(uri, KEY, integrity("rank0.engine")) is True
    assert store.read_manifest_bytes(KEY) is None and store.read_envelope(KEY) is None
    aside = Path(uri.removeprefix("file://")) / "damaged" / KEY / upload
    assert (aside / "manifest.json").read_bytes() == before
    assert (aside / "provenance.dsse.json").exists()
    assert (aside / "files" / "rank0.engine").read_bytes() == damaged
    found = json.loads((aside / "finding.json").read_text())
    assert found["found"].startswith("rank0.engine: its sha256 is ")
    assert found["reportedBy"] == "pod chat-1: IntegrityError"
    assert not (Path(uri.removeprefix("file://")) / "engines" / KEY / upload).exists()
    assert engines.manifest(uri, KEY, "ns", None) is None  # absent to every reader now
    finding = engines.finding(uri, KEY)
    assert finding is not None and finding.where == layout.damaged_uri(uri, KEY, upload)


def test_an_intact_engine_is_left_alone_whatever_a_pod_says(engines: Engines,
                                                            uri: str) -> None:
    store = open_store(uri)
    before = store.read_manifest_bytes(KEY)
    assert engines.check(uri, KEY, integrity("rank0.engine", "forged")) is False
    assert engines.check(uri, KEY, integrity("../../etc/passwd", "forged")) is False
    assert engines.check(uri, KEY, Report("forged", "NotFound", "gone")) is False
    assert store.read_manifest_bytes(KEY) == before
    assert not (Path(uri.removeprefix("file://")) / "damaged").exists()


def test_a_missing_or_cut_file_is_damage_without_a_hash(engines: Engines, uri: str) -> None:
    path = flip(uri, "config.json")
    path.unlink()
    assert engines.check(uri, KEY) is True
    finding = engines.finding(uri, KEY)
    assert finding is not None and finding.message == "config.json is missing"


def test_a_manifest_committed_meanwhile_is_never_taken_away(engines: Engines,
                                                            uri: str) -> None:
    store = open_store(uri)
    before = store.read_manifest_bytes(KEY) or b""
    assert store.set_aside(KEY, before.replace(b'"key"', b'"key" '), {"message": "x"}) is None
    assert store.read_manifest_bytes(KEY) == before


def test_reports_are_checked_once_per_interval_and_wake_the_asker(
        engines: Engines, uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[tuple[str, str]] = []
    engines.wake = lambda namespace, name: woken.append((namespace, name))
    checked: list[str] = []
    real = engines.check

    def check(uri: str, key: str, report: Report | None = None) -> bool:
        checked.append(report.pod if report else "-")
        return real(uri, key, report)

    monkeypatch.setattr(engines, "check", check)
    assert engines.manifest(uri, KEY, "ns", None) is not None
    engines.heed(uri, KEY, [integrity("rank0.engine", "first")], ("ns", "llama"))
    engines.join()
    engines.heed(uri, KEY, [integrity("rank0.engine", "second")], ("ns", "llama"))
    engines.join()
    assert checked == ["first"] and woken == []  # intact; the second waits its turn

    flip(uri, "rank0.engine")
    monkeypatch.setattr(module, "REPORT_SECONDS", 0.0)
    engines.heed(uri, KEY, [integrity("rank0.engine", "third")], ("ns", "llama"))
    engines.join()
    assert checked == ["first", "third"] and woken == [("ns", "llama")]
    assert engines.manifest(uri, KEY, "ns", None) is None


def test_an_engine_another_trusted_key_signed_counts_and_is_never_countersigned(
        engines: Engines, uri: str, tmp_path: Path) -> None:
    store = open_store(uri)
    old = CryptoSigner.generate_ecdsa()
    data = store.read_manifest_bytes(KEY) or b""
    store.write_envelope(KEY, provenance.sign(data, Manifest.model_validate_json(data), JOB,
                                              old))
    (tmp_path / "trusted.pem").write_text(provenance.public_pem(old))
    config = OperatorConfig(signing_key_file=engines.config.signing_key_file,
                            trusted_keys_file=str(tmp_path / "trusted.pem"))
    rotated = Engines(config, Trust.from_config(config))
    written = store.read_envelope(KEY)
    assert rotated.manifest(uri, KEY, "ns", None) is not None
    assert store.read_envelope(KEY) == written, "a read writes nothing"
    assert not hasattr(rotated, "countersign"), "kiln signs only what its own Jobs built"


def test_a_pods_report_makes_the_next_read_look_at_the_store(engines: Engines,
                                                             uri: str) -> None:
    assert engines.manifest(uri, KEY, "ns", None) is not None
    open_store(uri).delete(KEY)  # behind kiln's back
    assert engines.manifest(uri, KEY, "ns", None) is not None, "cached for verify_seconds"
    engines.heed(uri, KEY, [Report("chat-1", "NotFound", "no manifest")], ("ns", "llama"))
    assert engines.manifest(uri, KEY, "ns", None) is None
    engines.join()


class CountingStore:
    """A store that counts the reads of each key's manifest, and hides the keys of
    ``hidden`` (not committed yet)."""

    def __init__(self, uri: str) -> None:
        self.inner = open_store(uri)
        self.reads: list[str] = []
        self.hidden: set[str] = set()

    def read_manifest_bytes(self, key: str) -> bytes | None:
        self.reads.append(key)
        return None if key in self.hidden else self.inner.read_manifest_bytes(key)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_missing_manifest_is_read_once_while_its_job_runs_and_again_when_it_ends(
        engines: Engines, uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes over a running build (every resync, for each of thousands) read nothing: the
    Job's end says when a manifest may be there. A key committed for one namespace's Job is
    taken by every namespace's next pass."""
    store = CountingStore(uri)
    monkeypatch.setattr(engines, "store", lambda _uri: store)
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    other = key_of({"computeCapability": "8.0"})
    running = ObservedJob(f"kiln-build-{other[:12]}", other, "Active", ("uid-1",))
    for _ in range(5):  # a resync apart
        assert engines.manifest(uri, other, "ns", running) is None
        assert engines.manifest(uri, other, "ns2", running) is None
        clock.now += 30
    assert store.reads == [other, other], "once per namespace, not once per pass"
    clock.now += engines.config.verify_seconds
    assert engines.manifest(uri, other, "ns", running) is None
    assert store.reads == [other] * 3, "looked for again after verify_seconds"
    done = ObservedJob(running.name, other, "Failed", ("uid-1",))
    assert engines.manifest(uri, other, "ns", done) is None
    assert store.reads == [other] * 4, "the Job ended: read again"
    replaced = ObservedJob("kiln-build-new", other, "Active", ("uid-1",))
    assert engines.manifest(uri, other, "ns", replaced) is None
    assert store.reads == [other] * 5, "another Job: read again"

    store.hidden.add(KEY)
    building = ObservedJob(f"kiln-build-{KEY[:12]}", KEY, "Active", ("uid-2",))
    assert engines.manifest(uri, KEY, "ns", building) is None
    assert engines.manifest(uri, KEY, "ns2", building) is None
    store.hidden.clear()  # ns's Job commits it
    succeeded = ObservedJob(building.name, KEY, "Succeeded", ("uid-2",))
    assert engines.manifest(uri, KEY, "ns", succeeded) is not None
    reads = len(store.reads)
    assert engines.manifest(uri, KEY, "ns2", building) is not None
    assert len(store.reads) == reads, "found once: no namespace reads it again"
