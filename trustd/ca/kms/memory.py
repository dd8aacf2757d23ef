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


def sign_digest(key: PrivateKey, algorithm: KeyAlgorithm, digest: bytes) -> bytes:
    """Sign a precomputed digest with a cryptography key (shared by memory and local)."""
    hash_alg: hashes.HashAlgorithm = (
        hashes.SHA384() if algorithm is KeyAlgorithm.EC_P384 else hashes.SHA256()
    )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(utils.Prehashed(hash_alg)))
    return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hash_alg))


class MemoryKeyManager:
    """Keys live in a dict; ``retire`` forgets them. For unit tests and benchmarks."""

    kind = "memory"

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
        key = self._get(ref)
        return [sign_digest(key, ref.algorithm, d) for d in digests]

    def retire(self, ref: KeyRef) -> None:
        with self._lock:
            self._keys.pop(ref.key_id, None)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None
