"""Pkcs11KeyManager against a real SoftHSM2 token initialised by the fixture."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pkcs11.exceptions
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from kms_peers import SoftHsm

from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef, PublicKey
from trustd.ca.kms.pkcs11 import Pkcs11KeyManager
from trustd.errors import AlreadyExistsError, ConfigError, NotFoundError, PermissionDeniedError

pytestmark = pytest.mark.integration

ALGORITHMS = [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048]


def digest_for(algorithm: KeyAlgorithm, data: bytes) -> bytes:
    return hashlib.new(algorithm.hash_name, data).digest()


def verify(public: PublicKey, algorithm: KeyAlgorithm, signature: bytes, digest: bytes) -> None:
    hash_alg = hashes.SHA384() if algorithm is KeyAlgorithm.EC_P384 else hashes.SHA256()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
    else:
        public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hash_alg))


def unique(prefix: str = "ca") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def manager(softhsm: SoftHsm) -> Iterator[Pkcs11KeyManager]:
    m = Pkcs11KeyManager(module=softhsm.module, token_label=softhsm.token_label, pin=softhsm.pin)
    yield m
    m.close()


def _raw_private_key(softhsm: SoftHsm, session: pkcs11.Session, label: str) -> pkcs11.PrivateKey:
    key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
    assert isinstance(key, pkcs11.PrivateKey)
    return key


def test_manager_satisfies_the_key_manager_protocol(manager: Pkcs11KeyManager) -> None:
    assert isinstance(manager, KeyManager)
    assert manager.kind == "pkcs11"


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_key_signs_a_digest_that_verifies_under_its_public_key(
    manager: Pkcs11KeyManager, algorithm: KeyAlgorithm
) -> None:
    ref = manager.create_key(unique(), algorithm)
    assert ref.backend == "pkcs11"
    public = manager.public_key(ref)
    if algorithm is KeyAlgorithm.RSA_2048:
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = digest_for(algorithm, b"tbs certificate bytes")
    signature = manager.sign(ref, digest)
    verify(public, algorithm, signature, digest)
    with pytest.raises(InvalidSignature):
        verify(public, algorithm, signature, digest_for(algorithm, b"other bytes"))


def test_private_key_is_sensitive_non_extractable_and_on_the_token(
    softhsm: SoftHsm, manager: Pkcs11KeyManager
) -> None:
    ref = manager.create_key(unique())
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    # The manager's session keeps the process logged in, so this session sees private objects.
    with token.open() as session:
        key = _raw_private_key(softhsm, session, ref.key_id)
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.ALWAYS_SENSITIVE] is True
        assert key[pkcs11.Attribute.TOKEN] is True
        assert key[pkcs11.Attribute.ID] == ref.key_id.encode()
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]


def test_rsa_private_exponent_cannot_be_read(softhsm: SoftHsm, manager: Pkcs11KeyManager) -> None:
    ref = manager.create_key(unique(), KeyAlgorithm.RSA_2048)
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open() as session:
        key = _raw_private_key(softhsm, session, ref.key_id)
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.PRIVATE_EXPONENT]


def test_keys_persist_on_the_token_across_managers(
    softhsm: SoftHsm, manager: Pkcs11KeyManager
) -> None:
    ref = manager.create_key(unique())
    public = manager.public_key(ref)
    manager.close()
    again = Pkcs11KeyManager(
        module=softhsm.module, token_label=softhsm.token_label, pin=softhsm.pin
    )
    try:
        assert again.public_key(ref).public_numbers() == public.public_numbers()
        digest = digest_for(ref.algorithm, b"x")
        verify(public, ref.algorithm, again.sign(ref, digest), digest)
    finally:
        again.close()


def test_creating_an_existing_key_name_is_refused(manager: Pkcs11KeyManager) -> None:
    name = unique()
    manager.create_key(name)
    with pytest.raises(AlreadyExistsError, match="exists on token"):
        manager.create_key(name, KeyAlgorithm.RSA_2048)


@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048], ids=lambda a: a.value
)
def test_sign_many_signs_every_digest(manager: Pkcs11KeyManager, algorithm: KeyAlgorithm) -> None:
    ref = manager.create_key(unique(), algorithm)
    digests = [digest_for(algorithm, i.to_bytes(4, "big")) for i in range(40)]
    signatures = manager.sign_many(ref, digests)
    public = manager.public_key(ref)
    assert len(signatures) == len(digests)
    for digest, signature in zip(digests, signatures, strict=True):
        verify(public, algorithm, signature, digest)


def test_signing_from_many_threads_with_one_manager(manager: Pkcs11KeyManager) -> None:
    ref = manager.create_key(unique())
    public = manager.public_key(ref)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(50):
                digest = digest_for(ref.algorithm, f"{worker}-{i}".encode())
                verify(public, ref.algorithm, manager.sign(ref, digest), digest)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_retired_key_cannot_sign_and_its_objects_are_gone(
    softhsm: SoftHsm, manager: Pkcs11KeyManager
) -> None:
    ref = manager.create_key(unique())
    digest = digest_for(ref.algorithm, b"x")
    manager.sign(ref, digest)
    manager.retire(ref)
    with pytest.raises(NotFoundError, match="does not exist"):
        manager.sign(ref, digest)
    with pytest.raises(NotFoundError):
        manager.public_key(ref)
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open() as session:
        assert list(session.get_objects({pkcs11.Attribute.LABEL: ref.key_id})) == []
    manager.retire(ref)  # retiring twice is harmless


def test_check_passes_with_the_right_pin(manager: Pkcs11KeyManager) -> None:
    manager.check()


def test_wrong_pin_is_permission_denied(softhsm: SoftHsm) -> None:
    m = Pkcs11KeyManager(module=softhsm.module, token_label=softhsm.other_label, pin="0000wrong")
    ref = KeyRef(backend="pkcs11", key_id="any", algorithm=KeyAlgorithm.EC_P256)
    try:
        with pytest.raises(PermissionDeniedError, match="rejected the pin: check pin, pinFile"):
            m.check()
        with pytest.raises(PermissionDeniedError, match="rejected the pin"):
            m.sign(ref, digest_for(ref.algorithm, b"x"))
        with pytest.raises(PermissionDeniedError):
            m.create_key(unique())
    finally:
        m.close()


def test_pin_from_file_and_from_environment(
    softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.other_pin + "\n")
    monkeypatch.setenv("TRUSTD_TEST_HSM_PIN", softhsm.other_pin)
    for kwargs in ({"pin_file": pin_file}, {"pin_env": "TRUSTD_TEST_HSM_PIN"}):
        m = Pkcs11KeyManager(module=softhsm.module, token_label=softhsm.other_label, **kwargs)
        try:
            m.check()
            ref = m.create_key(unique())
            digest = digest_for(ref.algorithm, b"x")
            verify(m.public_key(ref), ref.algorithm, m.sign(ref, digest), digest)
            m.retire(ref)
        finally:
            m.close()


def test_missing_module_is_a_config_error(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: install it"):
        Pkcs11KeyManager(module=tmp_path / "libmissing.so", token_label="x", pin=softhsm.pin)
    not_a_library = tmp_path / "libfake.so"
    not_a_library.write_text("not a shared object")
    with pytest.raises(ConfigError, match="cannot load pkcs11 module"):
        Pkcs11KeyManager(module=not_a_library, token_label="x", pin=softhsm.pin)


def test_unknown_token_label_is_a_config_error(softhsm: SoftHsm) -> None:
    m = Pkcs11KeyManager(module=softhsm.module, token_label="no-such-token", pin=softhsm.pin)
    try:
        with pytest.raises(ConfigError, match="no pkcs11 token labelled 'no-such-token'"):
            m.check()
    finally:
        m.close()


def test_slot_must_hold_the_labelled_token(softhsm: SoftHsm) -> None:
    lib = pkcs11.lib(str(softhsm.module))
    slots = {s.get_token().label: s.slot_id for s in lib.get_slots(token_present=True)}
    m = Pkcs11KeyManager(
        module=softhsm.module,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        slot=slots[softhsm.other_label],
    )
    try:
        with pytest.raises(ConfigError, match="fix slot or tokenLabel"):
            m.check()
    finally:
        m.close()
    right = Pkcs11KeyManager(
        module=softhsm.module,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        slot=slots[softhsm.token_label],
    )
    try:
        right.check()
    finally:
        right.close()
