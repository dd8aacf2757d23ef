"""Signed checkpoints: the anchor that makes a cut-off tail or a rewritten chain visible.

A hash chain alone cannot show that its last events were removed, nor that it
was rewritten from some point on with fresh hashes. A checkpoint records the
head of the chain (``seq``, ``hash``) and the start of the kept chain after
retention (``first_seq``, ``first_prev_hash``), and is signed by the audit key
in the configured KeyManager (local, OpenBao transit or PKCS#11), whose private
half never leaves the backend.

Signed bytes: the SHA-256 (SHA-384 for P-384 keys) of the domain separator
``b"trustd audit checkpoint v1\\n"`` followed by the compact, key-sorted JSON of
every field but ``signature``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef, PublicKey

_DOMAIN = b"trustd audit checkpoint v1\n"
VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """The signed head of the chain at one moment."""

    seq: int  # the last event covered (0 for an empty log)
    hash: str  # that event's hash (GENESIS_HASH for an empty log)
    time: str  # RFC 3339 UTC, when it was signed
    first_seq: int  # the oldest event kept (moves forward when retention deletes segments)
    first_prev_hash: str  # prev_hash of that event: where the kept chain is anchored
    key: KeyRef  # the audit key that signed it
    signature: bytes  # DER ECDSA or PKCS#1 v1.5 signature over the digest described above

    def payload(self) -> bytes:
        return _payload(
            seq=self.seq,
            hash=self.hash,
            time=self.time,
            first_seq=self.first_seq,
            first_prev_hash=self.first_prev_hash,
            key=self.key,
        )

    def to_line(self) -> str:
        body = json.loads(self.payload())
        body["signature"] = base64.b64encode(self.signature).decode("ascii")
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: bytes | str) -> Checkpoint:
        """Parse one line of checkpoints.jsonl; ValueError when malformed."""
        data: Any = json.loads(line)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("checkpoint is not a version 1 checkpoint object")
        try:
            key = data["key"]
            if not isinstance(key, dict):
                raise ValueError("checkpoint key must be an object")
            cp = cls(
                seq=int(data["seq"]),
                hash=str(data["hash"]),
                time=str(data["time"]),
                first_seq=int(data["first_seq"]),
                first_prev_hash=str(data["first_prev_hash"]),
                key=KeyRef.from_json(key),
                signature=base64.b64decode(str(data["signature"]), validate=True),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"checkpoint field missing or malformed: {exc}") from exc
        if cp.payload() != _payload_from_dict(data):
            raise ValueError("checkpoint has fields a version 1 checkpoint does not have")
        return cp


def _payload(
    *,
    seq: int,
    hash: str,
    time: str,
    first_seq: int,
    first_prev_hash: str,
    key: KeyRef,
) -> bytes:
    body = {
        "version": VERSION,
        "seq": seq,
        "hash": hash,
        "time": time,
        "first_seq": first_seq,
        "first_prev_hash": first_prev_hash,
        "key": key.to_json(),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def _payload_from_dict(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def digest_for(payload: bytes, algorithm: KeyAlgorithm) -> bytes:
    hasher = hashlib.sha384 if algorithm.hash_name == "sha384" else hashlib.sha256
    return hasher(_DOMAIN + payload).digest()


def sign_checkpoint(
    key_manager: KeyManager,
    ref: KeyRef,
    *,
    seq: int,
    hash: str,
    time: str,
    first_seq: int,
    first_prev_hash: str,
) -> Checkpoint:
    """Ask the key manager to sign a checkpoint (may raise its UnavailableError)."""
    payload = _payload(
        seq=seq,
        hash=hash,
        time=time,
        first_seq=first_seq,
        first_prev_hash=first_prev_hash,
        key=ref,
    )
    signature = key_manager.sign(ref, digest_for(payload, ref.algorithm))
    return Checkpoint(
        seq=seq,
        hash=hash,
        time=time,
        first_seq=first_seq,
        first_prev_hash=first_prev_hash,
        key=ref,
        signature=signature,
    )


def signature_valid(cp: Checkpoint, public_key: PublicKey) -> bool:
    digest = digest_for(cp.payload(), cp.key.algorithm)
    algo: hashes.HashAlgorithm = (
        hashes.SHA384() if cp.key.algorithm.hash_name == "sha384" else hashes.SHA256()
    )
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cp.signature, digest, ec.ECDSA(utils.Prehashed(algo)))
        else:
            public_key.verify(cp.signature, digest, padding.PKCS1v15(), utils.Prehashed(algo))
    except InvalidSignature:
        return False
    return True
