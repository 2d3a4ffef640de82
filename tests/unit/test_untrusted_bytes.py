"""Whatever the store holds beside (or as) a manifest, it is refused as ``Untrusted`` or
counts as absent, never an exception of another kind (review of issue 19, finding 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from kiln.contract import provenance
from kiln.errors import Untrusted
from kiln.store import open_store

TYPE = provenance.PAYLOAD_TYPE
CASES: dict[str, Any] = {
    "badb64payload": {"payload": "!!!", "payloadType": TYPE, "signatures": []},
    "badb64sig": {"payload": "e30=", "payloadType": TYPE,
                  "signatures": [{"keyid": "a", "sig": "!!!"}]},
    "sigint": {"payload": "e30=", "payloadType": TYPE, "signatures": [{"keyid": "a", "sig": 5}]},
    "sigsdict": {"payload": "e30=", "payloadType": TYPE, "signatures": {"a": 1}},
    "payloadint": {"payload": 5, "payloadType": TYPE, "signatures": []},
    "keyidint": {"payload": "e30=", "payloadType": TYPE,
                 "signatures": [{"keyid": 5, "sig": "AA=="}]},
    "keyidlist": {"payload": "e30=", "payloadType": TYPE,
                  "signatures": [{"keyid": [1], "sig": "AA=="}]},
    "dupkeyid": {"payload": "e30=", "payloadType": TYPE,
                 "signatures": [{"keyid": "a", "sig": "AA=="}, {"keyid": "a", "sig": "AA=="}]},
    "list": [1, 2],
    "string": "x",
}
SIGNER = CryptoSigner.generate_ecdsa()


def _bytes(name: str) -> bytes:
    if name == "deep":
        return b"[" * 100_000
    if name == "huge":
        return b" " * (provenance.MAX_ENVELOPE + 1) + b"{}"
    if name == "binary":
        return b"\xff\xfe\x00"
    return json.dumps(CASES[name]).encode()


@pytest.mark.parametrize("name", [*CASES, "deep", "huge", "binary"])
def test_a_malformed_envelope_is_untrusted(name: str) -> None:
    with pytest.raises(Untrusted):
        provenance.verify("0" * 64, b"{}", _bytes(name), [SIGNER.public_key])
    assert provenance.signed_by(_bytes(name), SIGNER.public_key) is False


@pytest.mark.parametrize("manifest", [b"not json", b"[" * 100_000, b"{}", b"\xff"])
def test_a_malformed_manifest_is_untrusted(manifest: bytes) -> None:
    with pytest.raises(Untrusted):
        provenance.verify("0" * 64, manifest, _bytes("badb64sig"), [SIGNER.public_key])


def test_an_unparsable_manifest_counts_as_absent_and_is_replaced(tmp_path: Path) -> None:
    """The reviewer's garbled.py: ``has()`` raised ValidationError, failing the build."""
    key = "ab" * 32
    store = open_store(f"file://{tmp_path}/")
    folder = tmp_path / "engines" / key
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("not json")
    assert store.has(key) is False
    assert store.read_manifest(key) is None
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text("{}")
    manifest = store.upload(key, engine, inputs={"schema": 2})
    assert store.read_manifest(key) == manifest


def test_public_keys_names_the_pem_blocks_it_ignores(caplog: pytest.LogCaptureFixture) -> None:
    pem = provenance.public_pem(SIGNER)
    bundle = pem + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with caplog.at_level("WARNING"):
        assert len(provenance.public_keys(bundle)) == 1
    assert "CERTIFICATE" in caplog.text
