"""Pkcs11KeyManager pieces that need no token: signature encoding, DigestInfo, PIN sources,
module checks. The token behaviour is in tests/integration/kms/test_kms_pkcs11.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from trustd.ca.kms.errors import KmsBadResponseError
from trustd.ca.kms.pkcs11 import Pkcs11KeyManager, ecdsa_raw_to_der, resolve_pin, rsa_digest_info
from trustd.errors import ConfigError


@pytest.mark.parametrize(
    ("curve", "size", "hash_alg"),
    [(ec.SECP256R1(), 32, hashes.SHA256()), (ec.SECP384R1(), 48, hashes.SHA384())],
)
def test_raw_ecdsa_signature_becomes_der_that_verifies(
    curve: ec.EllipticCurve, size: int, hash_alg: hashes.HashAlgorithm
) -> None:
    key = ec.generate_private_key(curve)
    digest = hashlib.new(hash_alg.name, b"tbs").digest()
    for _ in range(20):  # r or s with a leading zero byte shows up within a few tries
        der = key.sign(digest, ec.ECDSA(utils.Prehashed(hash_alg)))
        r, s = utils.decode_dss_signature(der)
        raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")  # what CKM_ECDSA returns
        converted = ecdsa_raw_to_der(raw)
        assert converted == der
        key.public_key().verify(converted, digest, ec.ECDSA(utils.Prehashed(hash_alg)))


@pytest.mark.parametrize("raw", [b"", b"\x01\x02\x03"])
def test_odd_or_empty_raw_signature_is_refused(raw: bytes) -> None:
    with pytest.raises(KmsBadResponseError):
        ecdsa_raw_to_der(raw)


@pytest.mark.parametrize(("hash_name", "hash_alg"), [("sha256", hashes.SHA256())])
def test_digest_info_is_what_pkcs1v15_signs(hash_name: str, hash_alg: hashes.HashAlgorithm) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    digest = hashlib.new(hash_name, b"tbs").digest()
    signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hash_alg))
    # Undo the RSA operation with the public key: EM = 0x00 01 FF.. 00 || DigestInfo.
    numbers = key.public_key().public_numbers()
    em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert em.endswith(b"\x00" + rsa_digest_info(hash_name, digest))


def test_sha384_digest_info_prefix() -> None:
    # DigestInfo ::= SEQ { SEQ { OID 2.16.840.1.101.3.4.2.2, NULL }, OCTET STRING (48) }
    info = rsa_digest_info("sha384", b"\x00" * 48)
    assert info.startswith(bytes.fromhex("3041300d0609608648016503040202050004"))
    assert len(info) == 0x41 + 2


def test_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    monkeypatch.setenv("UNIT_PIN", "from-env")
    assert resolve_pin(pin="inline", pin_file=None, pin_env=None) == "inline"
    assert resolve_pin(pin=None, pin_file=pin_file, pin_env=None) == "from-file"
    assert resolve_pin(pin=None, pin_file=None, pin_env="UNIT_PIN") == "from-env"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pin": None, "pin_file": None, "pin_env": None},
        {"pin": "a", "pin_file": "/x", "pin_env": None},
    ],
)
def test_exactly_one_pin_source(kwargs: dict[str, str | None]) -> None:
    with pytest.raises(ConfigError, match="exactly one of pin, pinFile or pinEnv"):
        resolve_pin(**kwargs)


def test_missing_pin_env_and_file_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNIT_PIN_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"UNIT_PIN_MISSING .* is not set"):
        resolve_pin(pin=None, pin_file=None, pin_env="UNIT_PIN_MISSING")
    with pytest.raises(ConfigError, match="cannot read the pkcs11 pin file"):
        resolve_pin(pin=None, pin_file=tmp_path / "nope", pin_env=None)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="pin is empty"):
        resolve_pin(pin=None, pin_file=empty, pin_env=None)


def test_pin_never_appears_in_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Pkcs11KeyManager(module=tmp_path / "missing.so", token_label="t", pin="s3cr3t-pin")
    assert "s3cr3t-pin" not in str(info.value)


def test_missing_module_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: install it"):
        Pkcs11KeyManager(module=tmp_path / "libnone.so", token_label="t", pin="1")


def test_empty_token_label_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set tokenLabel"):
        Pkcs11KeyManager(module=tmp_path / "libnone.so", token_label="", pin="1")
