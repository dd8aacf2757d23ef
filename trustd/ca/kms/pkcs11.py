"""A PKCS#11 token (an HSM, or SoftHSM2) as the CA's key manager (kind ``pkcs11``).

Keys are generated on the token (``CKA_TOKEN``) as sensitive and
non-extractable private keys (``CKA_SENSITIVE=true``, ``CKA_EXTRACTABLE=false``)
whose ``CKA_LABEL`` and ``CKA_ID`` are the key's name; the private key value never
leaves the token. trustd hashes the to-be-signed bytes itself; the token signs
the digest with ``CKM_ECDSA`` (raw r||s, turned into DER here) or with
``CKM_RSA_PKCS`` over a DigestInfo (PKCS#1 v1.5).

One logged-in read/write session is shared behind a lock: PKCS#11 sessions
must not be used by two threads at once, and login state is per token and
process anyway. A session the token dropped is reopened on the next call.

Limitation: PKCS#11 login is per process and token. When another part of the
same process is already logged in to the token, the module answers
``CKR_USER_ALREADY_LOGGED_IN`` without checking this manager's PIN; trustd
then uses the existing login.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.errors import (
    KmsBadResponseError,
    KmsConfigError,
    KmsInvalidRequestError,
    KmsKeyExistsError,
    KmsKeyNotFoundError,
    KmsPermissionDeniedError,
    KmsUnavailableError,
)
from trustd.errors import (
    AlreadyExistsError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    TrustdError,
    UnavailableError,
)
from trustd.telemetry.metrics import Pkcs11Metrics

if TYPE_CHECKING:
    from trustd.config import Pkcs11Config

log = structlog.get_logger(__name__)

T = TypeVar("T")

# DER DigestInfo prefixes (RFC 8017 §9.2, note 1) for PKCS#1 v1.5 over a precomputed hash.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}
_DIGEST_SIZES = {"sha256": 32, "sha384": 48}
_CURVES = {KeyAlgorithm.EC_P256: "secp256r1", KeyAlgorithm.EC_P384: "secp384r1"}
_RSA_BITS = {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_4096: 4096}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

# Errors after which the session is useless and must be reopened.
_SESSION_LOST = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.DeviceError,
    p11e.DeviceMemory,
)


def _outcome(err: TrustdError) -> str:
    """The metric outcome label: ok, unavailable, denied, not_found, exists, invalid, config."""
    for cls, label in (
        (UnavailableError, "unavailable"),
        (PermissionDeniedError, "denied"),
        (NotFoundError, "not_found"),
        (AlreadyExistsError, "exists"),
        (ConfigError, "config"),
    ):
        if isinstance(err, cls):
            return label
    return "invalid"


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """PKCS#11's ECDSA signature (r||s, each the curve's byte size) as X9.62 DER."""
    if not raw or len(raw) % 2:
        raise KmsBadResponseError(f"the token sent an ecdsa signature of odd length {len(raw)}")
    half = len(raw) // 2
    r = int.from_bytes(raw[:half], "big")
    s = int.from_bytes(raw[half:], "big")
    return encode_dss_signature(r, s)


def rsa_digest_info(hash_name: str, digest: bytes) -> bytes:
    """The DER DigestInfo that CKM_RSA_PKCS pads and signs for PKCS#1 v1.5."""
    return _DIGEST_INFO[hash_name] + digest


def resolve_pin(*, pin: str | None, pin_file: str | Path | None, pin_env: str | None) -> str:
    """The user PIN from exactly one of ``pin``, ``pin_file`` or the variable ``pin_env``."""
    if sum(x is not None for x in (pin, pin_file, pin_env)) != 1:
        raise KmsConfigError("set exactly one of pin, pinFile or pinEnv for the pkcs11 token")
    if pin is not None:
        value = pin
    elif pin_file is not None:
        try:
            value = Path(pin_file).read_text().strip()
        except OSError as exc:
            raise KmsConfigError(
                f"cannot read the pkcs11 pin file {str(pin_file)!r}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
    else:
        assert pin_env is not None
        env = os.environ.get(pin_env)
        if env is None:
            raise KmsConfigError(
                f"environment variable {pin_env} (pinEnv) is not set: export the token pin in it"
            )
        value = env.strip()
    if not value:
        raise KmsConfigError("the pkcs11 pin is empty: check pin, pinFile or pinEnv")
    return value


class Pkcs11KeyManager:
    """CA keys on a PKCS#11 token; see the module docstring."""

    kind = "pkcs11"
    signs_in_process = False  # every signature is verified under the CA key

    def __init__(
        self,
        *,
        module: str | Path,
        token_label: str,
        pin: str | None = None,
        pin_file: str | Path | None = None,
        pin_env: str | None = None,
        slot: int | None = None,
        metrics: Pkcs11Metrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else Pkcs11Metrics()
        self._pin_source = (pin, pin_file, pin_env)
        resolve_pin(pin=pin, pin_file=pin_file, pin_env=pin_env)  # fail early on a bad source
        # A pin the token refused is never sent again (HSMs lock the pin after a few
        # failures); a changed pinFile or pinEnv is tried once more.
        self._rejected_pin: str | None = None
        self._module_path = str(module)
        if not token_label:
            raise KmsConfigError("set tokenLabel for the pkcs11 key manager")
        self._token_label = token_label
        self._slot = slot
        if not Path(self._module_path).is_file():
            raise KmsConfigError(
                f"pkcs11 module {self._module_path!r} does not exist: install it "
                "(softhsm2 gives /usr/lib/softhsm/libsofthsm2.so) or fix keyManager.module"
            )
        try:
            self._lib = pkcs11.lib(self._module_path)
        except (p11e.PKCS11Error, OSError) as exc:
            raise KmsConfigError(
                f"cannot load pkcs11 module {self._module_path!r} ({type(exc).__name__}): "
                "check that it is a pkcs11 library for this machine"
            ) from None
        self._lock = threading.RLock()
        self._session: pkcs11.Session | None = None
        self._closed = False

    # -- session

    def _find_token(self) -> pkcs11.Token:
        try:
            if self._slot is not None:
                for slot in self._lib.get_slots(token_present=True):
                    if slot.slot_id == self._slot:
                        token = slot.get_token()
                        if token.label != self._token_label:
                            raise KmsConfigError(
                                f"slot {self._slot} holds token {token.label!r}, not "
                                f"{self._token_label!r}: fix slot or tokenLabel"
                            )
                        return token
                raise KmsConfigError(
                    f"pkcs11 slot {self._slot} has no token: fix slot or insert the token"
                )
            return self._lib.get_token(token_label=self._token_label)
        except p11e.NoSuchToken:
            raise KmsConfigError(
                f"no pkcs11 token labelled {self._token_label!r} in {self._module_path}: "
                "initialise it (softhsm2-util --init-token) or fix tokenLabel"
            ) from None
        except p11e.MultipleTokensReturned:
            raise KmsConfigError(
                f"several pkcs11 tokens are labelled {self._token_label!r}: set slot"
            ) from None

    def _open(self) -> pkcs11.Session:
        """The shared session, logged in; the caller holds the lock."""
        if self._closed:
            raise KmsUnavailableError("the pkcs11 key manager is closed")
        if self._session is not None:
            return self._session
        pin_value, pin_file, pin_env = self._pin_source
        pin = resolve_pin(pin=pin_value, pin_file=pin_file, pin_env=pin_env)
        if pin == self._rejected_pin:
            raise self._pin_refused()
        token = self._find_token()
        try:
            session = token.open(rw=True, user_pin=pin)
        except p11e.UserAlreadyLoggedIn:
            # Login is per process and token: another session of ours is logged in.
            # python-pkcs11 does not hand back the session whose C_Login said so.
            session = token.open(rw=True)
            log.info("pkcs11 token already logged in", hsm_label=self._token_label)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            self._rejected_pin = pin
            log.warning("pkcs11 pin rejected", hsm_label=self._token_label)
            raise self._pin_refused() from None
        except (p11e.PinLocked, p11e.PinExpired):
            raise KmsPermissionDeniedError(
                f"the pin of pkcs11 token {self._token_label!r} is locked or expired: "
                "reset it with the security officer pin"
            ) from None
        except p11e.UserPinNotInitialized:
            raise KmsConfigError(
                f"pkcs11 token {self._token_label!r} has no user pin: initialise it"
            ) from None
        self._session = session
        log.info("pkcs11 session opened", hsm_label=self._token_label, module=self._module_path)
        return session

    def _pin_refused(self) -> KmsPermissionDeniedError:
        return KmsPermissionDeniedError(
            f"the pkcs11 token {self._token_label!r} rejected the pin: check pin, pinFile or "
            "pinEnv (trustd does not retry a refused pin, so the token does not lock it)"
        )

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except p11e.PKCS11Error:
                log.debug("pkcs11 session close failed", hsm_label=self._token_label)

    def _run(self, operation: str, fn: Callable[[pkcs11.Session], T]) -> T:
        """Run ``fn`` on the shared session under the lock, mapping token errors.

        A session the token dropped is reopened once and the operation retried.
        """
        start = time.perf_counter()
        outcome = "ok"
        try:
            with self._lock:
                for attempt in (1, 2):
                    session = self._open()
                    try:
                        return fn(session)
                    except _SESSION_LOST as exc:
                        self._drop_session()
                        if attempt == 2:
                            raise KmsUnavailableError(
                                f"the pkcs11 token {self._token_label!r} is not usable "
                                f"({type(exc).__name__}): check that it is present and retry"
                            ) from None
                        log.warning(
                            "pkcs11 session lost, reopening",
                            hsm_label=self._token_label,
                            error=type(exc).__name__,
                        )
                raise AssertionError("unreachable")  # pragma: no cover
        except TrustdError as exc:
            outcome = _outcome(exc)
            raise
        except p11e.PKCS11Error as exc:
            outcome = "unavailable"
            raise KmsUnavailableError(
                f"the pkcs11 token {self._token_label!r} failed {operation} ({type(exc).__name__})"
            ) from None
        finally:
            self._metrics.operations.labels(operation, outcome).inc()
            self._metrics.operation_seconds.labels(operation).observe(time.perf_counter() - start)

    # -- objects

    @staticmethod
    def _objects(session: pkcs11.Session, cls: ObjectClass, label: str) -> list[Any]:
        return list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))

    def _one(self, session: pkcs11.Session, cls: ObjectClass, ref: KeyRef) -> Any:
        found = self._objects(session, cls, ref.key_id)
        if not found:
            raise KmsKeyNotFoundError(
                f"pkcs11 key {ref.key_id!r} does not exist on token "
                f"{self._token_label!r} or was retired"
            )
        if len(found) > 1:
            raise KmsBadResponseError(
                f"several pkcs11 objects are labelled {ref.key_id!r}: remove the extra ones"
            )
        return found[0]

    def _check_ref(self, ref: KeyRef) -> None:
        if ref.backend != self.kind:
            raise KmsInvalidRequestError(
                f"key {ref.key_id!r} belongs to the {ref.backend!r} key manager, not pkcs11"
            )

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        if not name or not set(name) <= _NAME_OK or len(name) > 128:
            raise KmsInvalidRequestError(
                f"key name {name!r} is not usable: use letters, digits, . _ -"
            )
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {
            Attribute.TOKEN: True,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }
        flags = MechanismFlag.SIGN | MechanismFlag.VERIFY

        def generate(session: pkcs11.Session) -> None:
            if self._objects(session, ObjectClass.PRIVATE_KEY, name) or self._objects(
                session, ObjectClass.PUBLIC_KEY, name
            ):
                raise KmsKeyExistsError(
                    f"pkcs11 key {name!r} exists on token {self._token_label!r}: "
                    "pick another name or retire it"
                )
            if algorithm in _CURVES:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[algorithm])},
                    local=True,
                )
                _, private = params.generate_keypair(
                    id=name.encode(),
                    label=name,
                    store=True,
                    capabilities=flags,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                _, private = session.generate_keypair(
                    KeyType.RSA,
                    _RSA_BITS[algorithm],
                    id=name.encode(),
                    label=name,
                    store=True,
                    capabilities=flags,
                    public_template=public_template,
                    private_template=private_template,
                )
            if private[Attribute.EXTRACTABLE] or not private[Attribute.SENSITIVE]:
                for obj in self._objects(session, ObjectClass.PRIVATE_KEY, name):
                    obj.destroy()
                for obj in self._objects(session, ObjectClass.PUBLIC_KEY, name):
                    obj.destroy()
                raise KmsBadResponseError(
                    f"pkcs11 token {self._token_label!r} made key {name!r} extractable: "
                    "use a token that honours CKA_EXTRACTABLE=false"
                )

        self._run("create_key", generate)
        ref = KeyRef(backend=self.kind, key_id=name, algorithm=algorithm)
        log.info(
            "kms key created",
            backend=self.kind,
            key=name,
            algorithm=algorithm.value,
            hsm_label=self._token_label,
        )
        return ref

    def public_key(self, ref: KeyRef) -> PublicKey:
        self._check_ref(ref)

        def read(session: pkcs11.Session) -> PublicKey:
            obj = self._one(session, ObjectClass.PUBLIC_KEY, ref)
            if ref.algorithm in _CURVES:
                loaded = serialization.load_der_public_key(encode_ec_public_key(obj))
                if (
                    not isinstance(loaded, ec.EllipticCurvePublicKey)
                    or loaded.curve.name != _CURVES[ref.algorithm]
                ):
                    raise KmsBadResponseError(
                        f"pkcs11 key {ref.key_id!r} is not a {ref.algorithm.value} key"
                    )
                return loaded
            numbers = rsa.RSAPublicNumbers(
                int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(obj[Attribute.MODULUS], "big"),
            )
            public = numbers.public_key()
            if public.key_size != _RSA_BITS[ref.algorithm]:
                raise KmsBadResponseError(
                    f"pkcs11 key {ref.key_id!r} is not a {ref.algorithm.value} key"
                )
            return public

        return self._run("public_key", read)

    def _payload(self, ref: KeyRef, digest: bytes) -> bytes:
        size = _DIGEST_SIZES[ref.algorithm.hash_name]
        if len(digest) != size:
            raise KmsInvalidRequestError(
                f"a {ref.algorithm.value} key signs {size}-byte {ref.algorithm.hash_name} "
                f"digests, got {len(digest)} bytes"
            )
        if ref.algorithm in _CURVES:
            return digest
        return rsa_digest_info(ref.algorithm.hash_name, digest)

    def _sign_with(self, key: Any, ref: KeyRef, payload: bytes) -> bytes:
        if ref.algorithm in _CURVES:
            return ecdsa_raw_to_der(bytes(key.sign(payload, mechanism=Mechanism.ECDSA)))
        return bytes(key.sign(payload, mechanism=Mechanism.RSA_PKCS))

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return self.sign_many(ref, [digest])[0]

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        self._check_ref(ref)
        payloads = [self._payload(ref, d) for d in digests]

        def sign_all(session: pkcs11.Session) -> list[bytes]:
            key = self._one(session, ObjectClass.PRIVATE_KEY, ref)
            return [self._sign_with(key, ref, p) for p in payloads]

        return self._run("sign", sign_all)

    def retire(self, ref: KeyRef) -> None:
        self._check_ref(ref)

        def destroy(session: pkcs11.Session) -> int:
            count = 0
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._objects(session, cls, ref.key_id):
                    obj.destroy()
                    count += 1
            return count

        count = self._run("retire", destroy)
        log.info("kms key retired", backend=self.kind, key=ref.key_id, objects=count)

    def check(self) -> None:
        # Opening (and logging in) proves the module, the token and the pin; the
        # search proves the session answers.
        self._run(
            "check",
            lambda s: self._objects(s, ObjectClass.PRIVATE_KEY, "trustd-readiness-probe"),
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_session()


def from_config(cfg: Pkcs11Config, metrics: Pkcs11Metrics | None = None) -> Pkcs11KeyManager:
    """The ``keyManager: {kind: pkcs11, ...}`` block as a key manager."""
    return Pkcs11KeyManager(
        module=cfg.module,
        token_label=cfg.token_label,
        pin=cfg.pin.get_secret_value() if cfg.pin is not None else None,
        pin_file=cfg.pin_file,
        pin_env=cfg.pin_env,
        slot=cfg.slot,
        metrics=metrics,
    )
