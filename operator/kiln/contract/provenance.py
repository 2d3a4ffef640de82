"""An engine's signed provenance: an in-toto Statement in a DSSE envelope beside its manifest.

The operator (never the build pod) signs it after the key's own build Job succeeded; the
builder and ``kiln fetch-engine`` verify it. Formats and crypto are the maintained libraries':
the Statement is in-toto attestation v1 (``in_toto_attestation``), the envelope and the
signature DSSE (``securesystemslib.dsse``, ``securesystemslib.signer`` over ``cryptography``).

Subjects: ``manifest.json`` (the exact bytes in the store) and every engine file, each with its
sha256. Predicate: the key, the upload, the key's inputs, the builder image, the Job that built
it and the versions the builder saw. A manifest counts only if an envelope signed by a trusted
key names its digest, the requested key, and inputs that hash to that key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from kiln.contract.key import key_of, short_key
from kiln.contract.manifest import MANIFEST, Manifest
from kiln.errors import InvalidInput, Untrusted, quoted

__all__ = ["ENVELOPE", "JobRef", "Untrusted", "Verified", "built_where", "load_signer",
           "public_keys", "public_pem", "sha256", "sign", "signed_by", "statement", "verify"]

ENVELOPE = "provenance.dsse.json"
"""The envelope's name, beside ``manifest.json`` in the engine's directory."""
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://kiln.dev/provenance/engine/v1"
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
_ANY_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRef:
    """The build Job that produced an engine."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Verified:
    """A manifest whose provenance verified, and by which keys."""

    manifest: Manifest
    keyids: frozenset[str]
    job: JobRef


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def public_keys(pem_bundle: str) -> list[Key]:
    """Every ``PUBLIC KEY`` PEM block of ``pem_bundle`` as a verification key (its keyid is
    securesystemslib's: a digest of the key)."""
    keys: list[Key] = []
    ignored = sorted({kind for kind in _ANY_PEM.findall(pem_bundle) if kind != "PUBLIC KEY"})
    if ignored:
        log.warning("trusted keys: ignoring PEM block(s) of type %s (only PUBLIC KEY blocks are "
                    "trusted; an RSA PUBLIC KEY or a CERTIFICATE must be converted)",
                    ", ".join(ignored))
    for block in _PEM.findall(pem_bundle):
        try:
            keys.append(SSlibKey.from_crypto(load_pem_public_key(block.encode())))
        except (ValueError, TypeError) as error:
            raise InvalidInput(f"a trusted public key is not usable: {error}") from error
    return keys


def load_signer(pem: bytes) -> CryptoSigner:
    """The signer of a PEM private key (ECDSA P-256/384, Ed25519 or RSA)."""
    try:
        return CryptoSigner(load_pem_private_key(pem, password=None))
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"the signing key is not a usable PEM private key: {error}") from error


def public_pem(signer: CryptoSigner) -> str:
    """The signer's public key as PEM (what serving pods trust)."""
    return str(signer.public_key.keyval["public"]).strip() + "\n"


def statement(manifest_bytes: bytes, manifest: Manifest, job: JobRef) -> dict[str, Any]:
    """The in-toto Statement of an engine, as JSON."""
    subjects = [ResourceDescriptor(name=MANIFEST, digest={"sha256": sha256(manifest_bytes)}).pb]
    subjects += [ResourceDescriptor(name=f.path, digest={"sha256": f.sha256}).pb
                 for f in manifest.files]
    predicate = {
        "key": manifest.key,
        "upload": manifest.upload,
        "inputs": manifest.inputs,
        "builderImage": manifest.inputs.get("builderImage", ""),
        "job": {"namespace": job.namespace, "name": job.name, "uid": job.uid},
        "versions": manifest.versions,
        "signedAt": datetime.now(UTC).isoformat(),
    }
    st = Statement(subjects, PREDICATE_TYPE, predicate)
    st.validate()
    result: dict[str, Any] = json_format.MessageToDict(st.pb)
    return result


def sign(manifest_bytes: bytes, manifest: Manifest, job: JobRef, signer: CryptoSigner) -> bytes:
    """A DSSE envelope of the engine's Statement, signed by ``signer``."""
    payload = json.dumps(statement(manifest_bytes, manifest, job), sort_keys=True).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return json.dumps(envelope.to_dict(), indent=2).encode()


MAX_ENVELOPE = 1 << 20
"""The largest envelope read (bytes): a bigger one is not kiln's."""


def _load(envelope_bytes: bytes) -> Envelope:
    """The DSSE envelope in ``envelope_bytes``; ``ValueError`` for anything else (too big, not
    JSON, nested too deep, fields of the wrong type, bad base64)."""
    if len(envelope_bytes) > MAX_ENVELOPE:
        raise ValueError(f"it is larger than {MAX_ENVELOPE} bytes")
    try:
        data = json.loads(envelope_bytes)
    except (ValueError, RecursionError, TypeError) as error:
        raise ValueError(f"it is not JSON ({type(error).__name__})") from error
    if not isinstance(data, dict) or not isinstance(data.get("payload"), str) or not isinstance(
            data.get("payloadType"), str) or not isinstance(data.get("signatures"), list):
        raise ValueError("it lacks a string payload and payloadType and a list of signatures")
    for signature in data["signatures"]:
        if not (isinstance(signature, dict) and isinstance(signature.get("keyid"), str)
                and isinstance(signature.get("sig"), str)):
            raise ValueError("a signature is not a string keyid and sig")
    try:
        return Envelope.from_dict(data)
    except Exception as error:  # the library's own parse (base64): any failure is a refusal
        raise ValueError(f"{type(error).__name__}: {error}") from error


def _envelope(envelope_bytes: bytes | None, key: str) -> Envelope:
    if envelope_bytes is None:
        raise Untrusted(f"engine {short_key(key)} is unsigned: no {ENVELOPE} beside its "
                        "manifest (kiln signs only engines its own build Job produced)")
    try:
        envelope = _load(envelope_bytes)
    except ValueError as error:
        raise Untrusted(f"engine {short_key(key)}: {ENVELOPE} is not a DSSE envelope "
                        f"({error})") from error
    if envelope.payload_type != PAYLOAD_TYPE:
        raise Untrusted(f"engine {short_key(key)}: {ENVELOPE} carries {envelope.payload_type!r},"
                        f" not an in-toto statement")
    return envelope


def signed_by(envelope_bytes: bytes, key: Key) -> bool:
    """Whether ``key`` signed the envelope."""
    try:
        _load(envelope_bytes).verify([key], 1)
    except Exception:
        return False
    return True


def built_where(inputs: dict[str, Any], job_namespace: str,
                build_namespace: str | None) -> str | None:
    """Why an engine of these key ``inputs``, built by a Job in ``job_namespace``, does not
    count (None if it does). A signed engine is as trustworthy as the namespace its Job ran
    in: one whose origin names a namespace (a tenant's build) counts only if built there; one
    whose origin names none (shared) only if built in the platform's build namespace."""
    origin = inputs.get("origin")
    own = origin.get("namespace") if isinstance(origin, dict) else None
    if own:
        return None if job_namespace == own else (
            f"it is namespace {own}'s engine, but its Job ran in namespace {job_namespace}")
    if build_namespace and job_namespace == build_namespace:
        return None
    where = build_namespace or "none is configured (KILN_BUILD_NAMESPACE)"
    return (f"it is a shared engine, built in namespace {job_namespace}, not in the "
            f"platform's build namespace ({where})")


def verify(key: str, manifest_bytes: bytes | None, envelope_bytes: bytes | None,
           trusted: list[Key], build_namespace: str | None = None) -> Verified:
    """The manifest of engine ``key`` if a trusted key signed exactly it, after a Job in the
    namespace its key names built it (``built_where``; ``build_namespace``: the platform's,
    where shared engines are built); else ``Untrusted``, whatever the store holds (a
    malformed envelope or manifest included)."""
    try:
        verified = _verify(key, manifest_bytes, envelope_bytes, trusted)
    except Untrusted:
        raise
    except Exception as error:
        raise Untrusted(f"engine {short_key(key)}: its manifest or {ENVELOPE} does not parse "
                        f"({type(error).__name__})") from error
    problem = built_where(verified.manifest.inputs, verified.job.namespace, build_namespace)
    if problem is not None:
        raise Untrusted(f"engine {short_key(key)} does not count here: {problem}")
    return verified


def _verify(key: str, manifest_bytes: bytes | None, envelope_bytes: bytes | None,
            trusted: list[Key]) -> Verified:
    if manifest_bytes is None:
        raise Untrusted(f"engine {short_key(key)} has no manifest")
    envelope = _envelope(envelope_bytes, key)
    if not trusted:
        raise Untrusted(f"engine {short_key(key)}: no trusted public keys to verify it with")
    try:
        accepted = envelope.verify(trusted, 1)
    except (VerificationError, ValueError, TypeError) as error:
        raise Untrusted(f"engine {short_key(key)}: its provenance is signed by no trusted key "
                        f"({error})") from error
    try:
        pb = json_format.Parse(envelope.payload, statement_pb2.Statement())
        st = Statement.copy_from_pb(pb)
        st.validate()
    except (json_format.ParseError, ValueError, RecursionError, TypeError) as error:
        raise Untrusted(f"engine {short_key(key)}: the signed payload is not an in-toto "
                        f"Statement ({error})") from error
    if st.pb.predicate_type != PREDICATE_TYPE:
        raise Untrusted(f"engine {short_key(key)}: the statement is a {st.pb.predicate_type}")
    predicate = json_format.MessageToDict(st.pb.predicate)
    if predicate.get("key") != key:
        raise Untrusted(f"the provenance beside engine {short_key(key)} is that of "
                        f"{short_key(str(predicate.get('key')))}")
    subjects = {s.name: s.digest.get("sha256", "") for s in st.pb.subject}
    if subjects.get(MANIFEST) != sha256(manifest_bytes):
        raise Untrusted(f"the manifest of engine {short_key(key)} is not the one that was "
                        "signed (replaced after signing?)")
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValueError as error:
        said = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise Untrusted(f"the manifest of engine {short_key(key)} does not parse: "
                        f"{quoted(said, 400)}") from error
    if manifest.key != key or key_of(manifest.inputs) != key:
        raise Untrusted(f"the signed manifest of engine {short_key(key)} names another key or "
                        "inputs that do not hash to it")
    files = {f.path: f.sha256 for f in manifest.files}
    if files != {n: d for n, d in subjects.items() if n != MANIFEST}:
        raise Untrusted(f"engine {short_key(key)}: the signed subjects and the manifest's files "
                        "differ")
    job = predicate.get("job") or {}
    return Verified(manifest, frozenset(accepted),
                    JobRef(str(job.get("namespace", "")), str(job.get("name", "")),
                           str(job.get("uid", ""))))
