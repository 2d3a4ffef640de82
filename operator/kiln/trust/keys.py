"""The operator's keys: the one it signs engines with, and the public keys it trusts.

Read once from files (``KILN_SIGNING_KEY_FILE``, ``KILN_TRUSTED_KEYS_FILE``) mounted from a
Secret and the chart's values. The signing key's own public key is always trusted; the others
let engines signed by a previous key keep serving during a rotation, until re-signed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key

from kiln.config import OperatorConfig
from kiln.contract import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trust:
    """A signer (None: this operator signs nothing) and the trusted public keys."""

    signer: CryptoSigner | None
    keys: tuple[Key, ...]
    bundle: str
    """The trusted public keys as a PEM bundle: what build and serving pods get."""
    build_namespace: str | None = None
    """Where shared engines are built (``provenance.built_where``)."""

    @classmethod
    def from_config(cls, config: OperatorConfig) -> Trust:
        signer = None
        pems: list[str] = []
        if config.signing_key_file:
            signer = provenance.load_signer(Path(config.signing_key_file).read_bytes())
            pems.append(provenance.public_pem(signer))
        else:
            log.warning("no signing key (KILN_SIGNING_KEY_FILE): engines are not signed, and "
                        "unsigned engines are never served")
        if config.trusted_keys_file:
            pems.append(Path(config.trusted_keys_file).read_text())
        bundle = "".join(p if p.endswith("\n") else p + "\n" for p in pems)
        keys = provenance.public_keys(bundle)
        unique = {k.keyid: k for k in keys}
        log.info("signing with key %s; trusting %d public key(s): %s",
                 signer.public_key.keyid[:12] if signer else "none", len(unique),
                 ", ".join(k[:12] for k in sorted(unique)))
        return cls(signer, tuple(unique.values()), bundle, config.build_namespace)

    @property
    def keyid(self) -> str | None:
        """The signing key's id."""
        return self.signer.public_key.keyid if self.signer else None

    def verify(self, key: str, manifest_bytes: bytes | None,
               envelope: bytes | None) -> provenance.Verified:
        """The engine's manifest if a trusted key signed exactly it, after a Job of the
        namespace its key names built it; else ``Untrusted``."""
        return provenance.verify(key, manifest_bytes, envelope, list(self.keys),
                                 self.build_namespace)
