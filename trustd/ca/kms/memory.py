"""In-memory key manager for tests: real keys, held in process memory only."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.errors import AlreadyExistsError, NotFoundError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_private_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm is KeyAlgorithm.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


# Built once: constructing these costs about as much as hashing a certificate.
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())
_PREHASHED_SHA384 = utils.Prehashed(hashes.SHA384())
_ECDSA_SHA256 = ec.ECDSA(_PREHASHED_SHA256)
_ECDSA_SHA384 = ec.ECDSA(_PREHASHED_SHA384)
_PKCS1V15 = padding.PKCS1v15()


def sign_digest(key: PrivateKey, algorithm: KeyAlgorithm, digest: bytes) -> bytes:
    """Sign a precomputed digest with a cryptography key (shared by memory and local)."""
    p384 = algorithm is KeyAlgorithm.EC_P384
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, _ECDSA_SHA384 if p384 else _ECDSA_SHA256)
    return key.sign(digest, _PKCS1V15, _PREHASHED_SHA384 if p384 else _PREHASHED_SHA256)


def sign_digests(key: PrivateKey, algorithm: KeyAlgorithm, digests: Sequence[bytes]) -> list[bytes]:
    """``sign_digest`` of each digest, in order."""
    p384 = algorithm is KeyAlgorithm.EC_P384
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = _ECDSA_SHA384 if p384 else _ECDSA_SHA256
        return [key.sign(d, ecdsa) for d in digests]
    prehashed = _PREHASHED_SHA384 if p384 else _PREHASHED_SHA256
    return [key.sign(d, _PKCS1V15, prehashed) for d in digests]


class MemoryKeyManager:
    """Keys live in a dict; ``retire`` forgets them. For unit tests and benchmarks."""

    kind = "memory"
    signs_in_process = True  # see kms.base.signs_in_process

    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {}
        self._lock = threading.Lock()

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        key = generate_private_key(algorithm)
        with self._lock:
            if name in self._keys:
                raise AlreadyExistsError(f"key {name!r} exists already")
            self._keys[name] = key
        return KeyRef(backend=self.kind, key_id=name, algorithm=algorithm)

    def _get(self, ref: KeyRef) -> PrivateKey:
        with self._lock:
            key = self._keys.get(ref.key_id)
        if key is None:
            raise NotFoundError(f"key {ref.key_id!r} does not exist or was retired")
        return key

    def public_key(self, ref: KeyRef) -> PublicKey:
        return self._get(ref).public_key()

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return sign_digest(self._get(ref), ref.algorithm, digest)

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return sign_digests(self._get(ref), ref.algorithm, digests)

    def retire(self, ref: KeyRef) -> None:
        with self._lock:
            self._keys.pop(ref.key_id, None)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None
