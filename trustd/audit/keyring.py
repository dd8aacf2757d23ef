"""Audit public keys, for checking a copied log without the key manager.

``trustd audit keys`` exports the public keys of the audit keys (their refs and
SubjectPublicKeyInfo PEM); kept somewhere the log's host cannot write, they let
``trustd audit verify --offline DIR --keys FILE`` check the checkpoints of a
copy anywhere. Whoever can rewrite the copy cannot forge a checkpoint for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.errors import InvalidArgumentError, NotFoundError, UnavailableError


def export_keys(keys: Sequence[tuple[KeyRef, PublicKey]]) -> dict[str, Any]:
    return {
        "audit_keys": [
            {
                **ref.to_json(),
                "public_key_pem": pub.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode(),
            }
            for ref, pub in keys
        ]
    }


class PublicKeyring:
    """Enough of a key manager for ``trustd.audit.verify``: the public keys it was given."""

    def __init__(self, keys: dict[KeyRef, PublicKey]) -> None:
        if not keys:
            raise InvalidArgumentError("the audit keys file holds no key")
        backends = {r.backend for r in keys}
        if len(backends) != 1:
            raise InvalidArgumentError(
                f"the audit keys file mixes key backends ({', '.join(sorted(backends))}): "
                "export the keys of one key manager"
            )
        self.kind = backends.pop()
        self._keys = keys

    @property
    def refs(self) -> list[KeyRef]:
        return list(self._keys)

    def public_key(self, ref: KeyRef) -> PublicKey:
        try:
            return self._keys[ref]
        except KeyError:
            raise NotFoundError(f"audit key {ref.key_id!r} is not in the keys file") from None

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        raise UnavailableError("a public keyring cannot create keys")

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        raise UnavailableError("a public keyring cannot sign")

    @classmethod
    def load(cls, path: Path) -> PublicKeyring:
        try:
            data = json.loads(path.read_text())
            keys: dict[KeyRef, PublicKey] = {}
            for item in data["audit_keys"]:
                pub = serialization.load_pem_public_key(str(item["public_key_pem"]).encode())
                if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                    raise ValueError("not an EC or RSA public key")
                keys[KeyRef.from_json(item)] = pub
        except FileNotFoundError:
            raise InvalidArgumentError(f"--keys {path}: no such file") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgumentError(
                f"--keys {path}: not an audit keys file (from `trustd audit keys`): {exc}"
            ) from None
        return cls(keys)
