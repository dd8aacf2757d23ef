"""The local key manager: one AES-GCM sealed key file per CA key, under a key-encryption key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef
from trustd.ca.kms.local import KEK_ENV, LocalKeyManager, load_kek
from trustd.errors import AlreadyExistsError, ConfigError, NotFoundError, PermissionDeniedError

KEK = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_kek_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEK_ENV, raising=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plaintext(path: Path, kek: bytes, name: str) -> bytes:
    """Open a sealed key file independently of LocalKeyManager, as an attacker with the KEK could."""
    doc = json.loads(path.read_text())
    return AESGCM(kek).decrypt(
        base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), name.encode()
    )


def test_it_is_a_key_manager(tmp_path: Path) -> None:
    assert isinstance(LocalKeyManager(tmp_path / "keys", KEK), KeyManager)


def test_key_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)
    km = LocalKeyManager(keys, KEK)
    km.create_key("ca-1")
    assert _mode(keys) == 0o700
    assert _mode(keys / "ca-1.key") == 0o600
    assert sorted(p.name for p in keys.iterdir()) == ["ca-1.key"]  # no temp file left behind


@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048]
)
def test_file_holds_no_key_in_the_clear(tmp_path: Path, algorithm: KeyAlgorithm) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1", algorithm)
    raw = (tmp_path / "keys" / "ca-1.key").read_bytes()
    pkcs8 = _plaintext(tmp_path / "keys" / "ca-1.key", KEK, "ca-1")
    key = serialization.load_der_private_key(pkcs8, password=None)
    assert key.public_key() == km.public_key(ref)  # the file really holds this key, sealed
    assert pkcs8 not in raw
    assert base64.b64encode(pkcs8) not in raw
    assert b"PRIVATE KEY" not in raw and b"-----BEGIN" not in raw
    assert pkcs8[:16] not in raw  # the PKCS#8 header: version and AlgorithmIdentifier
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
        assert scalar not in raw
        assert scalar.hex().encode() not in raw
        assert base64.b64encode(scalar) not in raw
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        d = key.private_numbers().d
        assert d.to_bytes((d.bit_length() + 7) // 8, "big") not in raw


def test_signatures_verify_under_the_public_key(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ec_ref = km.create_key("ec", KeyAlgorithm.EC_P256)
    rsa_ref = km.create_key("rsa", KeyAlgorithm.RSA_2048)
    digest = hashlib.sha256(b"tbs").digest()
    ec_pub = km.public_key(ec_ref)
    assert isinstance(ec_pub, ec.EllipticCurvePublicKey)
    ec_pub.verify(km.sign(ec_ref, digest), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    rsa_pub = km.public_key(rsa_ref)
    assert isinstance(rsa_pub, rsa.RSAPublicKey)
    for sig in km.sign_many(rsa_ref, [digest, digest]):
        rsa_pub.verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_keys_survive_a_restart_with_the_same_kek(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1")
    pub = km.public_key(ref)
    km.close()
    again = LocalKeyManager(tmp_path / "keys", KEK)
    assert again.public_key(ref) == pub
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    digest = hashlib.sha256(b"x").digest()
    pub.verify(again.sign(ref, digest), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_wrong_kek_is_permission_denied_and_leaks_nothing(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1")
    pkcs8 = _plaintext(tmp_path / "keys" / "ca-1.key", KEK, "ca-1")
    wrong_kek = bytes(32)
    other = LocalKeyManager(tmp_path / "keys", wrong_kek)
    with pytest.raises(PermissionDeniedError) as err:
        other.sign(ref, hashlib.sha256(b"x").digest())
    message = str(err.value)
    assert "wrong key-encryption key" in message
    for secret in (KEK, wrong_kek, pkcs8):
        assert secret.hex() not in message
        assert base64.b64encode(secret).decode() not in message
    assert err.value.__cause__ is None and err.value.__context__ is not None  # raised "from None"
    assert err.value.__suppress_context__


def test_key_files_cannot_be_swapped(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    a = km.create_key("ca-a")
    km.create_key("ca-b")
    km.close()  # forget the cached keys
    (tmp_path / "keys" / "ca-b.key").replace(tmp_path / "keys" / "ca-a.key")
    with pytest.raises(PermissionDeniedError):
        LocalKeyManager(tmp_path / "keys", KEK).public_key(a)


@pytest.mark.parametrize(
    "content", [b"", b"not json", b"{}", b'{"nonce": 1, "ciphertext": 2}', b"[1, 2]"]
)
def test_a_damaged_key_file_is_permission_denied(tmp_path: Path, content: bytes) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1")
    km.close()
    (tmp_path / "keys" / "ca-1.key").write_bytes(content)
    with pytest.raises(PermissionDeniedError):
        km.public_key(ref)


def test_retire_removes_the_file_and_the_key(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1")
    km.retire(ref)
    assert not (tmp_path / "keys" / "ca-1.key").exists()
    with pytest.raises(NotFoundError, match="does not exist or was retired"):
        km.sign(ref, hashlib.sha256(b"x").digest())
    km.retire(ref)  # retiring twice is harmless


def test_unknown_key_is_not_found(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    with pytest.raises(NotFoundError):
        km.public_key(KeyRef(backend="local", key_id="never-made"))


def test_duplicate_key_name_is_refused(tmp_path: Path) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    ref = km.create_key("ca-1")
    pub = km.public_key(ref)
    with pytest.raises(AlreadyExistsError):
        km.create_key("ca-1")
    km.close()
    assert LocalKeyManager(tmp_path / "keys", KEK).public_key(ref) == pub  # untouched


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "name with space"])
def test_key_names_cannot_leave_the_directory(tmp_path: Path, name: str) -> None:
    km = LocalKeyManager(tmp_path / "keys", KEK)
    with pytest.raises(ValueError, match="invalid key name"):
        km.create_key(name)
    assert list((tmp_path / "keys").iterdir()) == []


# -- the key-encryption key ---------------------------------------------------------------


def test_kek_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "d" / "kek"
    kek = load_kek(kek_file=path, create=True)
    assert len(kek) == 32
    assert _mode(path) == 0o600
    assert load_kek(kek_file=path, create=False) == kek


def test_missing_kek_file_is_a_config_error_when_not_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_kek(kek_file=tmp_path / "kek", create=False)
    with pytest.raises(ConfigError, match=KEK_ENV):
        load_kek(kek_file=None, create=False)


def test_kek_from_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kek"
    file_kek = load_kek(kek_file=path, create=True)
    env_kek = os.urandom(32)
    monkeypatch.setenv(KEK_ENV, base64.b64encode(env_kek).decode())
    assert load_kek(kek_file=path, create=False) == env_kek != file_kek
    assert load_kek(kek_file=None, create=False) == env_kek
    # and it really is the key that seals the files
    km = LocalKeyManager(tmp_path / "keys", load_kek(kek_file=None, create=False))
    km.create_key("ca-1")
    assert _plaintext(tmp_path / "keys" / "ca-1.key", env_kek, "ca-1")


@pytest.mark.parametrize(
    "value",
    ["not base64 !!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(64)).decode()],
)
def test_bad_kek_in_the_environment_is_a_config_error_without_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(KEK_ENV, value)
    with pytest.raises(ConfigError) as err:
        load_kek(kek_file=None, create=False)
    assert value not in str(err.value)
    assert f"${KEK_ENV}" in str(err.value)


def test_bad_kek_file_is_a_config_error_without_the_value(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    value = base64.b64encode(b"sixteen byte kek").decode()
    path.write_text(value + "\n")
    with pytest.raises(ConfigError, match="must be 32 bytes") as err:
        load_kek(kek_file=path, create=False)
    assert value not in str(err.value)
