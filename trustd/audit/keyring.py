"""The audit log's keys: the checkpoint-signing key and the token HMAC key it creates and
loads, and the public keys exported for checking a copied log without the key manager.

``trustd audit keys`` exports the public keys of the audit keys (their refs and
SubjectPublicKeyInfo PEM); kept somewhere the log's host cannot write, they let
``trustd audit verify --offline DIR --keys FILE`` check the checkpoints of a
copy anywhere. Whoever can rewrite the copy cannot forge a checkpoint for them.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.audit.errors import AuditCorruptError
from trustd.audit.files import write_error, write_file_atomic
from trustd.audit.segments import HMAC_KEY_FILE, KEY_FILE
from trustd.audit.verify import load_key_refs
from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef, PublicKey
from trustd.errors import InvalidArgumentError, NotFoundError, UnavailableError

log = structlog.get_logger(__name__)


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


# ------------------------------------------------------------------ the log's own keys


def load_or_create_signing_key(
    directory: Path, key_manager: KeyManager, key_name: str | None
) -> tuple[KeyRef, list[KeyRef]]:
    """The checkpoint-signing key of the log in ``directory`` (created in the key manager on
    first use), and the previous ones still needed to verify older checkpoints."""
    path = directory / KEY_FILE
    refs = load_key_refs(directory)
    if refs and refs[0].backend == key_manager.kind:
        return refs[0], refs[1:]
    name = key_name or f"audit-{secrets.token_hex(8)}"
    ref = key_manager.create_key(name, KeyAlgorithm.EC_P256)
    previous = refs
    if refs:
        log.warning(
            "audit key manager changed: new audit key",
            old_backend=refs[0].backend,
            new_backend=ref.backend,
            key_id=ref.key_id,
        )
    body = {"current": ref.to_json(), "previous": [r.to_json() for r in previous]}
    try:
        write_file_atomic(path, (json.dumps(body, indent=2) + "\n").encode())
    except OSError as exc:
        raise write_error("record the audit key reference", path, exc) from exc
    log.info("audit key created", key_id=ref.key_id, backend=ref.backend)
    return ref, previous


def load_or_create_hmac_key(directory: Path) -> bytes:
    """The key that turns join tokens into the HMACs the log records (never the tokens)."""
    path = directory / HMAC_KEY_FILE
    try:
        if path.exists():
            key = base64.b64decode(path.read_text().strip(), validate=True)
            if len(key) >= 16:
                return key
            raise AuditCorruptError(f"token HMAC key {path} is too short: restore it")
        key = secrets.token_bytes(32)
        write_file_atomic(path, base64.b64encode(key) + b"\n")
    except OSError as exc:
        raise write_error("create the token HMAC key", path, exc) from exc
    except ValueError as exc:
        raise AuditCorruptError(f"token HMAC key {path} is not base64: restore it") from exc
    return key
