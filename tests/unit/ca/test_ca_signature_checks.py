"""Which key managers' signatures the issuer verifies, and that a bad signature is still caught."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from ca_helpers import WEB, CaRig, make_csr, make_rig
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from trustd.ca import issuer as issuer_module
from trustd.ca.errors import SigningError
from trustd.ca.issuer import SvidTemplate, X509Issuer, load_csr
from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey, signs_in_process
from trustd.ca.kms.local import LocalKeyManager
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.ca.kms.pkcs11 import Pkcs11KeyManager
from trustd.ca.kms.vault_transit import VaultTransitKeyManager
from trustd.spiffeid import SpiffeId


class RemoteLikeKeyManager:
    """Stands for a KMS or HSM (transit, PKCS#11): signs elsewhere, so it can return anything.

    The first ``good`` signatures are right; after that each one is made with another key.
    """

    kind = "vault-transit"

    def __init__(self, real: MemoryKeyManager, *, good: int = 0) -> None:
        self.real = real
        self.good = good
        self.other = ec.generate_private_key(ec.SECP256R1())

    def _one(self, ref: KeyRef, digest: bytes) -> bytes:
        if self.good > 0:
            self.good -= 1
            return self.real.sign(ref, digest)
        return self.other.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        return self.real.create_key(name, algorithm)

    def public_key(self, ref: KeyRef) -> PublicKey:
        return self.real.public_key(ref)

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return self._one(ref, digest)

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return [self._one(ref, d) for d in digests]

    def retire(self, ref: KeyRef) -> None:
        self.real.retire(ref)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


class ForwardingKeyManager:
    """A wrapper that hands every attribute to a local key manager (and could alter signatures)."""

    def __init__(self, inner: MemoryKeyManager) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _templates(n: int, now: dt.datetime) -> list[SvidTemplate]:
    out = []
    for _ in range(n):
        _, pub = load_csr(make_csr())
        out.append(
            SvidTemplate(
                spiffe_id=SpiffeId.parse(WEB),
                public_key=pub,
                not_before=now,
                not_after=now + dt.timedelta(hours=1),
            )
        )
    return out


def _issuer(km: object) -> X509Issuer:
    return X509Issuer(
        key_manager=km,  # type: ignore[arg-type]
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )


@pytest.fixture
def verifies(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The digests whose signature the issuer verifies, in order."""
    seen: list[bytes] = []
    real = issuer_module.verify_signature

    def counting(public_key: PublicKey, algorithm: KeyAlgorithm, digest: bytes, sig: bytes) -> None:
        seen.append(digest)
        real(public_key, algorithm, digest, sig)

    monkeypatch.setattr(issuer_module, "verify_signature", counting)
    return seen


def test_only_the_in_process_backends_say_they_sign_in_process(tmp_path: Path) -> None:
    assert signs_in_process(MemoryKeyManager())
    assert signs_in_process(LocalKeyManager(tmp_path / "keys", b"k" * 32))
    for remote in (VaultTransitKeyManager, Pkcs11KeyManager):
        assert not signs_in_process(object.__new__(remote))  # no connection needed to ask
    assert not signs_in_process(RemoteLikeKeyManager(MemoryKeyManager()))
    assert not signs_in_process(object())


def test_a_wrapper_forwarding_to_a_local_key_manager_does_not_inherit_the_claim() -> None:
    wrapped = ForwardingKeyManager(MemoryKeyManager())
    assert wrapped.signs_in_process is True  # forwarded from the instance...
    assert not signs_in_process(wrapped)  # ...but only the class is asked


def test_remote_key_manager_bad_signature_is_caught_in_every_batch(verifies: list[bytes]) -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    signer = rig.authorities.active_signer()
    remote = RemoteLikeKeyManager(real, good=2 + 3)
    issuer = _issuer(remote)
    now = rig.clock.now()
    assert len(issuer.sign(signer, _templates(2, now))) == 2
    assert len(issuer.sign(signer, _templates(3, now))) == 3
    assert len(verifies) == 5  # each signature, not only the first batch's
    result: object = "untouched"
    with pytest.raises(SigningError, match="does not verify under the CA key; nothing was issued"):
        result = issuer.sign(signer, _templates(4, now))
    assert result == "untouched"
    with pytest.raises(SigningError, match="does not verify under the CA key"):
        issuer.sign(signer, _templates(1, now))


def test_forwarding_wrapper_bad_signature_is_caught(verifies: list[bytes]) -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    signer = rig.authorities.active_signer()
    other = ec.generate_private_key(ec.SECP256R1())
    wrapped = ForwardingKeyManager(real)
    issuer = _issuer(wrapped)
    now = rig.clock.now()
    issuer.sign(signer, _templates(2, now))
    issuer.sign(signer, _templates(2, now))
    assert len(verifies) == 4
    wrapped.sign = lambda ref, digest: other.sign(  # type: ignore[attr-defined]
        digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )
    with pytest.raises(SigningError, match="nothing was issued"):
        issuer.sign(signer, _templates(1, now))


def test_in_process_signatures_are_verified_for_the_first_batch_of_each_authority(
    verifies: list[bytes],
) -> None:
    rig = make_rig()
    now = rig.clock.now()
    first = rig.authorities.active_signer()
    rig.issuer.sign(first, _templates(3, now))
    assert len(verifies) == 3
    for n in (1, 4, 2):
        svids = rig.issuer.sign(first, _templates(n, now))
        for svid in svids:
            svid.certificate.verify_directly_issued_by(first.certificate)
    assert len(verifies) == 3
    rig.authorities.prepare()
    rig.authorities.activate()
    second = rig.authorities.active_signer()
    assert second is not first
    rig.issuer.sign(second, _templates(2, now))
    assert len(verifies) == 5
    rig.issuer.sign(second, _templates(2, now))
    assert len(verifies) == 5


def test_in_process_key_that_is_not_the_ca_certificate_key_issues_nothing() -> None:
    km = MemoryKeyManager()
    rig = make_rig(km=km)
    signer = rig.authorities.active_signer()
    km._keys[signer.key_ref.key_id] = ec.generate_private_key(ec.SECP256R1())
    now = rig.clock.now()
    with pytest.raises(SigningError, match="does not verify under the CA key; nothing was issued"):
        rig.issuer.sign(signer, _templates(2, now))
    with pytest.raises(SigningError, match="nothing was issued"):
        rig.issuer.sign(signer, _templates(1, now))


def test_local_key_manager_issues_verifiable_svids_without_per_certificate_checks(
    tmp_path: Path, verifies: list[bytes]
) -> None:
    km = LocalKeyManager(tmp_path / "keys", b"k" * 32)
    rig: CaRig = make_rig(km=km)
    signer = rig.authorities.active_signer()
    now = rig.clock.now()
    rig.issuer.sign(signer, _templates(1, now))
    svids = rig.issuer.sign(signer, _templates(5, now))
    assert len(verifies) == 1
    for svid in svids:
        svid.certificate.verify_directly_issued_by(signer.certificate)


class SubclassSigningElsewhere(MemoryKeyManager):
    """Inherits from an in-process key manager but returns other signatures (as a proxy might)."""

    def __init__(self) -> None:
        super().__init__()
        self.other = ec.generate_private_key(ec.SECP256R1())
        self.tamper = False

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        if self.tamper:
            return self.other.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return super().sign(ref, digest)


def test_a_subclass_does_not_inherit_the_claim_and_its_bad_signature_is_caught(
    verifies: list[bytes],
) -> None:
    km = SubclassSigningElsewhere()
    assert not signs_in_process(km)
    rig = make_rig(km=km)
    signer = rig.authorities.active_signer()
    now = rig.clock.now()
    rig.issuer.sign(signer, _templates(1, now))
    rig.issuer.sign(signer, _templates(1, now))
    assert len(verifies) == 2
    km.tamper = True
    with pytest.raises(SigningError, match="nothing was issued"):
        rig.issuer.sign(signer, _templates(1, now))
