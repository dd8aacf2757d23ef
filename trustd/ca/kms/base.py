"""The KeyManager seam: where CA and audit signing keys live.

The CA builds the to-be-signed bytes and asks the key manager to sign their
digest; key bytes never cross this seam. Backends: ``memory`` (tests),
``local`` (encrypted key file, the embedded default), ``vault-transit``
(OpenBao/Vault transit engine) and ``pkcs11`` (an HSM).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec, rsa

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyAlgorithm(enum.StrEnum):
    EC_P256 = "ec-p256"  # ECDSA over P-256; signatures are over SHA-256 digests
    EC_P384 = "ec-p384"  # ECDSA over P-384; signatures are over SHA-384 digests
    RSA_2048 = "rsa-2048"  # RSASSA-PKCS1-v1_5 over SHA-256
    RSA_4096 = "rsa-4096"

    @property
    def hash_name(self) -> str:
        return "sha384" if self is KeyAlgorithm.EC_P384 else "sha256"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRef:
    backend: str  # the backend's kind, e.g. "local", "vault-transit", "pkcs11"
    key_id: str  # the backend's own name for the key (file name, transit key name, CKA_LABEL)
    version: int = 1  # key version where the backend versions keys (transit), else 1
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256  # what the key is and how it signs

    def to_json(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "key_id": self.key_id,
            "version": self.version,
            "algorithm": self.algorithm.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> KeyRef:
        return cls(
            backend=str(data["backend"]),
            key_id=str(data["key_id"]),
            version=int(str(data.get("version", 1))),
            algorithm=KeyAlgorithm(str(data.get("algorithm", KeyAlgorithm.EC_P256.value))),
        )


@runtime_checkable
class KeyManager(Protocol):
    """Creates and uses signing keys that never leave the backend.

    Every method may raise ``UnavailableError`` (backend down, sealed or slow:
    bounded by a timeout) or ``PermissionDeniedError`` (wrong token or PIN),
    with a message that names no secret. Methods are blocking: async callers
    run them in a thread pool.
    """

    kind: str  # "memory", "local", "vault-transit", "pkcs11"

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        """Create a new non-exportable key called ``name`` (unique per slot/purpose)."""
        ...

    def public_key(self, ref: KeyRef) -> PublicKey: ...

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        """Sign a pre-computed digest (SHA-256, or SHA-384 for P-384).

        Returns a DER ECDSA signature (X9.62 ``Ecdsa-Sig-Value``) or a PKCS#1 v1.5
        RSA signature, exactly what goes in an X.509 signatureValue.
        """
        ...

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        """Sign several digests; backends with a batch call amortise the round trip."""
        ...

    def retire(self, ref: KeyRef) -> None:
        """Destroy or disable the key; signing with it afterwards fails."""
        ...

    def check(self) -> None:
        """Raise UnavailableError with the reason when the backend cannot sign now."""
        ...

    def close(self) -> None: ...


def signs_in_process(key_manager: object) -> bool:
    """Whether the key manager's signatures are made in this process, with a key it holds.

    A class says so with ``signs_in_process = True`` (``memory``, ``local``): it
    signs with ``cryptography`` in this process, so the issuer need not verify
    each signature it returns. Remote and HSM backends (``vault-transit``,
    ``pkcs11``) do not, and every signature they return is verified under the
    CA key. Only the key manager's own class is asked: not the instance, so a
    wrapper that forwards attributes to a local key manager does not inherit
    the claim, and not a base class, so neither does a subclass that signs
    another way without saying so itself.
    """
    return vars(type(key_manager)).get("signs_in_process", False) is True
