"""Local key manager: one encrypted key file per key, the embedded default.

Each key is a PKCS#8 DER private key sealed with AES-256-GCM under a
key-encryption key (KEK) that comes from a file or an environment variable,
with the key's name as associated data (so files cannot be swapped). Files
are 0600 in a 0700 directory. Keys are decrypted into process memory only.

With neither a KEK file nor an environment variable configured, ``trustd up``
creates a KEK file beside the keys; that protects against copying the key
directory alone, not against reading the whole data dir. Production setups
point ``kekFile`` at a separate mount or use a KMS backend.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.memory import PrivateKey, generate_private_key, sign_digest, sign_digests
from trustd.errors import AlreadyExistsError, ConfigError, NotFoundError, PermissionDeniedError

log = structlog.get_logger(__name__)

KEK_ENV = "TRUSTD_KEK"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _decode_kek(text: str, source: str) -> bytes:
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise ConfigError(f"the key-encryption key from {source} is not base64") from exc
    if len(kek) != 32:
        raise ConfigError(f"the key-encryption key from {source} must be 32 bytes (base64)")
    return kek


def load_kek(*, kek_file: Path | None, create: bool) -> bytes:
    """The KEK from ``TRUSTD_KEK``, else from ``kek_file`` (created 0600 when ``create``)."""
    env = os.environ.get(KEK_ENV)
    if env:
        return _decode_kek(env, f"${KEK_ENV}")
    if kek_file is None:
        raise ConfigError(f"no key-encryption key: set {KEK_ENV} or keyManager.kekFile")
    if kek_file.exists():
        return _decode_kek(kek_file.read_text(), str(kek_file))
    if not create:
        raise ConfigError(f"key-encryption key file {kek_file} does not exist")
    kek = secrets.token_bytes(32)
    kek_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(kek_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(kek).decode() + "\n")
    log.info("key-encryption key created", path=str(kek_file))
    return kek


class LocalKeyManager:
    kind = "local"
    signs_in_process = True  # see kms.base.signs_in_process

    def __init__(self, directory: Path, kek: bytes) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._dir, 0o700)
        self._aead = AESGCM(kek)
        self._cache: dict[str, PrivateKey] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        if not name or not set(name) <= _NAME_OK:
            raise ValueError(f"invalid key name {name!r}")
        return self._dir / f"{name}.key"

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        path = self._path(name)
        key = generate_private_key(algorithm)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, der, name.encode())
        doc = {
            "version": 1,
            "name": name,
            "algorithm": algorithm.value,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if path.exists():
                raise AlreadyExistsError(f"key {name!r} exists already")
            os.rename(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._cache[name] = key
        log.info("key created", backend=self.kind, key=name, algorithm=algorithm.value)
        return KeyRef(backend=self.kind, key_id=name, algorithm=algorithm)

    def _load(self, ref: KeyRef) -> PrivateKey:
        with self._lock:
            key = self._cache.get(ref.key_id)
        if key is not None:
            return key
        path = self._path(ref.key_id)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"key {ref.key_id!r} does not exist or was retired") from None
        except (OSError, ValueError):
            raise PermissionDeniedError(
                f"key file for {ref.key_id!r} cannot be read or is not a trustd key file"
            ) from None
        try:
            der = self._aead.decrypt(
                base64.b64decode(doc["nonce"]),
                base64.b64decode(doc["ciphertext"]),
                ref.key_id.encode(),
            )
        except (InvalidTag, KeyError, TypeError, ValueError):  # wrong KEK, or a damaged file
            raise PermissionDeniedError(
                f"key {ref.key_id!r} cannot be decrypted: wrong key-encryption key, "
                "or the file was altered"
            ) from None
        loaded = serialization.load_der_private_key(der, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise PermissionDeniedError(f"key {ref.key_id!r} has an unsupported type")
        with self._lock:
            self._cache[ref.key_id] = loaded
        return loaded

    def public_key(self, ref: KeyRef) -> PublicKey:
        return self._load(ref).public_key()

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return sign_digest(self._load(ref), ref.algorithm, digest)

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return sign_digests(self._load(ref), ref.algorithm, digests)

    def retire(self, ref: KeyRef) -> None:
        with self._lock:
            self._cache.pop(ref.key_id, None)
        path = self._path(ref.key_id)
        if path.exists():
            # Overwrite before unlinking; the sealed bytes are useless without the KEK anyway.
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
        log.info("key retired", backend=self.kind, key=ref.key_id)

    def check(self) -> None:
        if not os.access(self._dir, os.W_OK):
            from trustd.errors import UnavailableError

            raise UnavailableError(f"key directory {self._dir} is not writable")

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
