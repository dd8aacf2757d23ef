"""OpenBao / HashiCorp Vault transit as the CA's key manager (kind ``vault-transit``).

Every CA slot gets its own transit key, created non-exportable
(``exportable=false``, ``allow_plaintext_backup=false``), so the private key
never leaves Vault. trustd hashes the to-be-signed bytes itself and asks transit
to sign the digest (``prehashed=true``): ASN.1 DER for ECDSA, PKCS#1 v1.5 for
RSA, exactly the X.509 ``signatureValue``. ``sign_many`` uses transit's
``batch_input`` so one round trip signs up to ``batch_size`` digests.

Rotation: a new CA slot is a new named key (``create_key``); ``retire`` sets
``deletion_allowed`` and deletes the key, after which signing with it fails.
The token therefore needs, on ``<mount>/keys/<prefix>*``: create, read, update,
delete; on ``<mount>/keys/<prefix>*/config``: update; on
``<mount>/sign/<prefix>*``: update.

This module also holds ``VaultConnection``: auth (token, token file, AppRole),
TLS, namespace, timeout, one HTTP session per thread and the mapping from HTTP
failures to trustd errors. The ``vault-pki`` upstream authority reuses it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Required, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import hvac
import hvac.exceptions
import requests
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.errors import (
    KmsBadResponseError,
    KmsConfigError,
    KmsInvalidRequestError,
    KmsKeyExistsError,
    KmsKeyNotFoundError,
    KmsPermissionDeniedError,
    KmsTimeoutError,
    KmsUnavailableError,
)
from trustd.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TrustdError,
    UnavailableError,
)
from trustd.telemetry.metrics import VaultMetrics

if TYPE_CHECKING:
    from trustd.config import AppRoleConfig, VaultPkiConfig, VaultTransitConfig

log = structlog.get_logger(__name__)

T = TypeVar("T")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_SIGNATURE_RE = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/=]+)$")
_PROBE_KEY = "readiness-probe"  # a key name read (never created) by check()

_TRANSIT_KEY_TYPES: dict[KeyAlgorithm, str] = {
    KeyAlgorithm.EC_P256: "ecdsa-p256",
    KeyAlgorithm.EC_P384: "ecdsa-p384",
    KeyAlgorithm.RSA_2048: "rsa-2048",
    KeyAlgorithm.RSA_4096: "rsa-4096",
}
_TRANSIT_HASHES = {"sha256": "sha2-256", "sha384": "sha2-384"}
_DIGEST_SIZES = {"sha256": 32, "sha384": 48}


# --- shared Vault plumbing -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRole:
    role_id: str  # the AppRole role id (an identifier; useless without the secret id)
    secret_id: str | None = field(default=None, repr=False)  # the secret id inline
    secret_id_file: Path | None = None  # a file holding the secret id, re-read at every login
    mount: str = "approle"  # where the approle auth method is mounted


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultErrorClasses:
    """Which trustd error classes a ``VaultConnection`` raises, so each user keeps its own."""

    unavailable: type[UnavailableError]  # unreachable, sealed, 5xx
    timeout: type[DeadlineExceededError]  # no answer within the timeout
    permission: type[PermissionDeniedError]  # 401/403: bad token, AppRole or policy
    config: type[ConfigError]  # unusable settings: no such mount, unreadable token file
    not_found: type[NotFoundError]  # the named object does not exist
    invalid: type[InvalidArgumentError]  # Vault refused the request as malformed


KMS_ERRORS = VaultErrorClasses(
    unavailable=KmsUnavailableError,
    timeout=KmsTimeoutError,
    permission=KmsPermissionDeniedError,
    config=KmsConfigError,
    not_found=KmsKeyNotFoundError,
    invalid=KmsInvalidRequestError,
)


def _reason(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error text, on one line, without hvac's ``, on METHOD URL`` suffix."""
    errors = exc.errors
    if isinstance(errors, list) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = str(exc.args[0]) if exc.args and exc.args[0] else ""
    # Vault wraps multi-errors as "1 error occurred:\n\t* <text>\n\n".
    text = re.sub(r"\d+ errors? occurred:", "", text)
    text = " ".join(text.replace("*", " ").split())
    if not text or text == "None":
        return f"http {type(exc).__name__.lower()}"
    return text[:300]


class VaultAccess(TypedDict, total=False):
    """How to reach and log in to OpenBao/Vault: the keywords every Vault-backed component
    takes and hands to :class:`VaultConnection` as they are."""

    address: Required[str]
    token: str | None  # exactly one of token, token_file and app_role
    token_file: str | Path | None
    app_role: AppRole | None
    namespace: str | None
    ca_cert: str | Path | None
    tls_skip_verify: bool
    timeout: float


def vault_access(cfg: VaultTransitConfig | VaultPkiConfig) -> VaultAccess:
    """The connection part of a ``vault-transit`` or ``vault-pki`` config block."""
    return VaultAccess(
        address=cfg.address,
        token=cfg.token.get_secret_value() if cfg.token is not None else None,
        token_file=cfg.token_file,
        app_role=app_role_from_config(cfg.app_role),
        namespace=cfg.namespace,
        ca_cert=cfg.ca_cert,
        tls_skip_verify=cfg.tls_skip_verify,
        timeout=cfg.timeout,
    )


class VaultConnection:
    """One OpenBao/Vault server as trustd talks to it; safe to share between threads.

    Each thread gets its own ``hvac.Client`` (its own HTTP session); the token is
    shared. With ``app_role`` trustd logs in on first use and again when Vault
    rejects the token; with ``token_file`` the file is re-read when Vault
    rejects the token (Vault Agent rewrites it). No method logs or raises the
    token, the secret id or a response body that could carry either.
    """

    def __init__(
        self,
        *,
        engine: str,
        address: str,
        token: str | None = None,
        token_file: str | Path | None = None,
        app_role: AppRole | None = None,
        namespace: str | None = None,
        ca_cert: str | Path | None = None,
        tls_skip_verify: bool = False,
        timeout: float = 5.0,
        errors: VaultErrorClasses = KMS_ERRORS,
        metrics: VaultMetrics | None = None,
    ) -> None:
        self._errors = errors
        self._engine = engine
        self._metrics = metrics if metrics is not None else VaultMetrics()
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.config(
                f"vault address {address!r} is not an http(s) url: use e.g. https://vault:8200"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise errors.config("vault address must not carry credentials, a query or a fragment")
        self._address = address.rstrip("/")
        given = [x for x in (token, token_file, app_role) if x is not None]
        if len(given) != 1:
            raise errors.config("set exactly one of token, tokenFile or appRole for vault")
        if token is not None and not token.strip():
            raise errors.config("the vault token is empty: set token, tokenFile or appRole")
        if app_role is not None:
            if not app_role.role_id:
                raise errors.config("appRole needs a roleId")
            if (app_role.secret_id is None) == (app_role.secret_id_file is None):
                raise errors.config("appRole needs exactly one of secretId or secretIdFile")
        if not timeout > 0:
            raise errors.config("the vault timeout must be a positive number of seconds")
        verify: bool | str = True
        if ca_cert is not None:
            if tls_skip_verify:
                raise errors.config("set caCert or tlsSkipVerify for vault, not both")
            if not Path(ca_cert).is_file():
                raise errors.config(f"vault caCert {str(ca_cert)!r} is not a readable file")
            verify = str(ca_cert)
        elif tls_skip_verify:
            verify = False
            log.warning("vault tls verification disabled", address=self._address)
        self._verify = verify
        self._namespace = namespace or None
        self._timeout = float(timeout)
        self._static_token = token.strip() if token is not None else None
        self._token_file = Path(token_file) if token_file is not None else None
        self._app_role = app_role
        # (generation, token); replaced as a whole so readers never see a torn pair.
        self._auth: tuple[int, str | None] = (0, self._static_token)
        self._auth_lock = threading.Lock()
        if self._token_file is not None:
            self._auth = (0, self._read_token_file())
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._clients_lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def errors(self) -> VaultErrorClasses:
        return self._errors

    # -- secrets handling

    def _secrets(self) -> list[str]:
        out = [s for s in (self._auth[1], self._static_token) if s]
        if self._app_role is not None and self._app_role.secret_id:
            out.append(self._app_role.secret_id)
        return out

    def scrub(self, text: str) -> str:
        """``text`` with any credential trustd holds replaced (belt and braces for messages)."""
        for secret in self._secrets():
            text = text.replace(secret, "[redacted]")
        return text

    def _read_token_file(self) -> str:
        assert self._token_file is not None
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            raise self._errors.config(
                f"cannot read the vault token file {str(self._token_file)!r}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not token:
            raise self._errors.config(
                f"the vault token file {str(self._token_file)!r} is empty: write a token to it"
            )
        return token

    def _read_secret_id(self, role: AppRole) -> str:
        if role.secret_id is not None:
            return role.secret_id
        assert role.secret_id_file is not None
        try:
            secret = role.secret_id_file.read_text().strip()
        except OSError as exc:
            raise self._errors.config(
                f"cannot read the approle secret id file {str(role.secret_id_file)!r}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not secret:
            raise self._errors.config(
                f"the approle secret id file {str(role.secret_id_file)!r} is empty"
            )
        return secret

    # -- clients

    def _new_client(self) -> hvac.Client:
        # token="" stops hvac from picking up VAULT_TOKEN or ~/.vault-token by itself.
        return hvac.Client(
            url=self._address,
            token="",
            verify=self._verify,
            timeout=self._timeout,
            namespace=self._namespace,
        )

    def _client(self) -> hvac.Client:
        local = self._local
        client: hvac.Client | None = getattr(local, "client", None)
        if client is None:
            client = self._new_client()
            local.client = client
            local.generation = -1
            with self._clients_lock:
                self._clients.append(client)
        generation, token = self._auth
        if local.generation != generation:
            client.token = token or ""
            local.generation = generation
        return client

    def close(self) -> None:
        self._closed = True
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.adapter.close()
            except Exception:  # closing is best effort
                log.debug("vault session close failed", address=self._address)

    # -- auth

    def _login(self) -> None:
        """AppRole login; the caller holds ``_auth_lock``."""
        role = self._app_role
        assert role is not None
        secret_id = self._read_secret_id(role)
        client = self._new_client()
        try:
            resp = self._run(
                "login",
                lambda: client.auth.approle.login(
                    role_id=role.role_id,
                    secret_id=secret_id,
                    use_token=False,
                    mount_point=role.mount,
                ),
                what=f"approle login at auth/{role.mount}",
                login=True,
            )
        finally:
            client.adapter.close()
        try:
            token = str(resp["auth"]["client_token"])
        except (KeyError, TypeError):
            raise self._errors.unavailable(
                f"vault at {self._address} answered the approle login without a token"
            ) from None
        self._auth = (self._auth[0] + 1, token)
        log.info("vault approle login", address=self._address, mount=role.mount)

    def _ensure_auth(self) -> None:
        if self._app_role is not None and self._auth[1] is None:
            with self._auth_lock:
                if self._auth[1] is None:
                    self._login()

    def _refresh_auth(self, seen_generation: int) -> bool:
        """After a 403: get a fresher token if the source can give one. True if it did."""
        if self._app_role is None and self._token_file is None:
            return False
        with self._auth_lock:
            if self._auth[0] != seen_generation:
                return True  # another thread refreshed meanwhile
            if self._app_role is not None:
                if self._token_is_valid():
                    return False  # the policy, not the token, said no: do not pile up logins
                self._login()
                return True
            token = self._read_token_file()
            if token == self._auth[1]:
                return False
            self._auth = (self._auth[0] + 1, token)
            log.info("vault token file re-read", address=self._address)
            return True

    def _token_is_valid(self) -> bool:
        try:
            self._run(
                "token_lookup",
                self._client().auth.token.lookup_self,
                what="a token lookup",
            )
        except PermissionDeniedError:
            return False
        return True

    # -- requests

    def call(self, operation: str, fn: Callable[[hvac.Client], T], *, what: str) -> T:
        """Run ``fn`` with this thread's authenticated client, mapping failures.

        ``operation`` labels metrics; ``what`` completes error messages
        ("vault refused <what>: ...").
        """
        if self._closed:
            raise self._errors.unavailable(f"the vault client for {self._address} is closed")
        self._ensure_auth()
        generation = self._auth[0]
        try:
            return self._run(operation, lambda: fn(self._client()), what=what)
        except PermissionDeniedError:
            if not self._refresh_auth(generation):
                raise
        return self._run(operation, lambda: fn(self._client()), what=what)

    def call_unauthenticated(
        self, operation: str, fn: Callable[[hvac.Client], T], *, what: str
    ) -> T:
        if self._closed:
            raise self._errors.unavailable(f"the vault client for {self._address} is closed")
        return self._run(operation, lambda: fn(self._client()), what=what)

    def _run(self, operation: str, fn: Callable[[], T], *, what: str, login: bool = False) -> T:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return fn()
        except TrustdError as exc:
            outcome = _outcome(exc)
            raise
        except Exception as exc:
            err = self._translate(exc, what=what, login=login)
            outcome = _outcome(err)
            # A missing object is often the expected answer (exists? probes); log it quietly.
            emit = log.debug if outcome == "not_found" else log.warning
            emit(
                "vault request failed",
                address=self._address,
                engine=self._engine,
                operation=operation,
                outcome=outcome,
                error=str(err),
            )
            raise err from exc
        finally:
            self._metrics.requests.labels(self._engine, operation, outcome).inc()
            self._metrics.request_seconds.labels(self._engine, operation).observe(
                time.perf_counter() - start
            )

    def _translate(self, exc: Exception, *, what: str, login: bool) -> TrustdError:
        e = self._errors
        addr = self._address
        if isinstance(exc, requests.exceptions.Timeout) or (
            isinstance(exc, requests.exceptions.ConnectionError) and "timed out" in str(exc).lower()
        ):
            return e.timeout(
                f"vault at {addr} did not answer {what} within {self._timeout:g}s: "
                "check that it is up and not overloaded, or raise the timeout"
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return e.unavailable(
                f"tls with vault at {addr} failed: check caCert (the CA that signed vault's "
                "certificate) and that the address names the certificate's host"
            )
        if isinstance(exc, requests.exceptions.ConnectionError):
            refused = "refused" in str(exc).lower()
            cause = "connection refused" if refused else "connection failed"
            return e.unavailable(
                f"cannot reach vault at {addr} ({cause}): check that it is running and "
                "that the address is right"
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return e.unavailable(f"request to vault at {addr} failed: {type(exc).__name__}")
        if isinstance(exc, hvac.exceptions.ParamValidationError):
            return e.invalid(f"invalid request for {what}: {self.scrub(str(exc))}")
        if not isinstance(exc, hvac.exceptions.VaultError):
            return e.unavailable(
                f"unexpected failure talking to vault at {addr} for {what}: {type(exc).__name__}"
            )
        reason = self.scrub(_reason(exc))
        if isinstance(exc, hvac.exceptions.VaultDown):
            if "sealed" in reason.lower():
                return e.unavailable(
                    f"vault at {addr} is sealed: unseal it (bao operator unseal); "
                    "trustd retries by itself"
                )
            return e.unavailable(f"vault at {addr} is unavailable ({reason}): retry later")
        if isinstance(exc, hvac.exceptions.VaultNotInitialized):
            return e.unavailable(f"vault at {addr} is not initialised: initialise and unseal it")
        if login and isinstance(
            exc,
            hvac.exceptions.InvalidRequest
            | hvac.exceptions.Forbidden
            | hvac.exceptions.Unauthorized,
        ):
            return e.permission(
                f"vault rejected the approle login ({reason}): check appRole roleId and "
                "secretId or secretIdFile"
            )
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            return e.permission(
                f"vault rejected the token for {what} ({reason}): check token, tokenFile or "
                "appRole, and that the token's policy allows it"
            )
        if isinstance(exc, hvac.exceptions.RateLimitExceeded):
            return e.unavailable(f"vault at {addr} is rate-limiting trustd: retry later")
        if isinstance(exc, hvac.exceptions.InvalidPath):
            if "no handler for route" in reason:
                return e.config(
                    f"vault at {addr} has nothing mounted for {what}: enable the secrets "
                    "engine or fix the mount setting"
                )
            return e.not_found(f"vault has no object for {what}: it does not exist or was removed")
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            lowered = reason.lower()
            if "not found" in lowered or "no existing key" in lowered:
                return e.not_found(
                    f"vault refused {what}: {reason}: it does not exist or was removed"
                )
            return e.invalid(f"vault refused {what}: {reason}")
        return e.unavailable(f"vault at {addr} failed {what}: {reason}")

    def check_ready(self) -> None:
        """Raise when Vault is unreachable, uninitialised or sealed, or rejects the credential."""
        status: Any = self.call_unauthenticated(
            "seal_status", lambda c: c.sys.read_seal_status(), what="reading the seal status"
        )
        if not isinstance(status, dict):
            raise self._errors.unavailable(
                f"vault at {self._address} sent an unreadable seal status"
            )
        if status.get("initialized") is False:
            raise self._errors.unavailable(
                f"vault at {self._address} is not initialised: initialise and unseal it"
            )
        if status.get("sealed"):
            raise self._errors.unavailable(
                f"vault at {self._address} is sealed: unseal it (bao operator unseal); "
                "trustd retries by itself"
            )
        self.call("token_lookup", lambda c: c.auth.token.lookup_self(), what="a token lookup")


def _outcome(err: TrustdError) -> str:
    if isinstance(err, DeadlineExceededError):
        return "timeout"
    if isinstance(err, UnavailableError):
        return "unavailable"
    if isinstance(err, PermissionDeniedError):
        return "denied"
    if isinstance(err, NotFoundError):
        return "not_found"
    if isinstance(err, ConfigError):
        return "config"
    return "invalid"


def response_data(resp: Any) -> dict[str, Any]:
    """The ``data`` object of a JSON answer from hvac (a dict, or a Response for 204)."""
    if isinstance(resp, dict):
        data = resp.get("data")
        if isinstance(data, dict):
            return data
    return {}


# --- the key manager --------------------------------------------------------------------


class VaultTransitKeyManager:
    """CA keys in a transit engine; see the module docstring for the policy it needs."""

    kind = "vault-transit"
    signs_in_process = False  # every signature is verified under the CA key

    def __init__(
        self,
        *,
        mount: str = "transit",
        key_prefix: str = "trustd-",
        batch_size: int = 256,
        metrics: VaultMetrics | None = None,
        **access: Unpack[VaultAccess],
    ) -> None:
        mount = mount.strip("/")
        if not _MOUNT_RE.match(mount):
            raise KmsConfigError(f"transit mount {mount!r} is not a valid vault path")
        if key_prefix and not re.match(r"^[A-Za-z0-9._-]+$", key_prefix):
            raise KmsConfigError(f"key prefix {key_prefix!r} may hold only letters, digits, . _ -")
        if not 1 <= batch_size <= 10_000:
            raise KmsConfigError("the transit batch size must be between 1 and 10000")
        self._conn = VaultConnection(engine="transit", errors=KMS_ERRORS, metrics=metrics, **access)
        self._mount = mount
        self._prefix = key_prefix
        self._batch_size = batch_size
        self._public: dict[tuple[str, int], PublicKey] = {}
        self._public_lock = threading.Lock()

    @property
    def connection(self) -> VaultConnection:
        return self._conn

    def key_name(self, name: str) -> str:
        """The transit key name for a trustd key name (the prefix added)."""
        full = f"{self._prefix}{name}"
        if not name or not _NAME_RE.match(full):
            raise KmsInvalidRequestError(
                f"key name {name!r} is not usable in transit: use letters, digits, . _ -"
            )
        return full

    def _check_ref(self, ref: KeyRef) -> None:
        if ref.backend != self.kind:
            raise KmsInvalidRequestError(
                f"key {ref.key_id!r} belongs to the {ref.backend!r} key manager, not vault-transit"
            )

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        key_name = self.key_name(name)
        transit = self._mount
        what = f"creating transit key {key_name!r}"
        try:
            self._conn.call(
                "read_key",
                lambda c: c.secrets.transit.read_key(key_name, mount_point=transit),
                what=f"reading transit key {key_name!r}",
            )
        except KmsKeyNotFoundError:
            pass
        else:
            raise KmsKeyExistsError(
                f"transit key {key_name!r} exists already: pick another name or retire it"
            )
        resp = self._conn.call(
            "create_key",
            lambda c: c.secrets.transit.create_key(
                key_name,
                key_type=_TRANSIT_KEY_TYPES[algorithm],
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=transit,
            ),
            what=what,
        )
        data = response_data(resp)
        if not data:  # Vault answers 204 on create; OpenBao returns the key
            data = self._read_key(key_name)
        if data.get("type") != _TRANSIT_KEY_TYPES[algorithm]:
            raise KmsBadResponseError(
                f"transit key {key_name!r} has type {data.get('type')!r}, "
                f"not {_TRANSIT_KEY_TYPES[algorithm]!r}: retire it and create another"
            )
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            raise KmsBadResponseError(
                f"transit key {key_name!r} is exportable: someone created it beside trustd; "
                "delete it in vault and create another"
            )
        version = int(data.get("latest_version", 1))
        ref = KeyRef(backend=self.kind, key_id=key_name, version=version, algorithm=algorithm)
        self._remember_public(ref, data)
        log.info(
            "kms key created",
            backend=self.kind,
            key=key_name,
            version=version,
            algorithm=algorithm.value,
        )
        return ref

    def _read_key(self, key_name: str) -> dict[str, Any]:
        transit = self._mount
        return response_data(
            self._conn.call(
                "read_key",
                lambda c: c.secrets.transit.read_key(key_name, mount_point=transit),
                what=f"reading transit key {key_name!r}",
            )
        )

    def _remember_public(self, ref: KeyRef, data: dict[str, Any]) -> PublicKey:
        keys = data.get("keys")
        entry = keys.get(str(ref.version)) if isinstance(keys, dict) else None
        pem = entry.get("public_key") if isinstance(entry, dict) else None
        if not isinstance(pem, str) or not pem:
            raise KmsKeyNotFoundError(
                f"transit key {ref.key_id!r} has no version {ref.version} public key: "
                "it was rotated away or is not an asymmetric key"
            )
        try:
            public = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            raise KmsBadResponseError(
                f"vault sent an unreadable public key for {ref.key_id!r}"
            ) from None
        if not _matches(public, ref.algorithm):
            raise KmsBadResponseError(
                f"transit key {ref.key_id!r} is not a {ref.algorithm.value} key"
            )
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        with self._public_lock:
            self._public[(ref.key_id, ref.version)] = public
        return public

    def public_key(self, ref: KeyRef) -> PublicKey:
        self._check_ref(ref)
        with self._public_lock:
            cached = self._public.get((ref.key_id, ref.version))
        if cached is not None:
            return cached
        return self._remember_public(ref, self._read_key(ref.key_id))

    def _sign_params(self, ref: KeyRef) -> dict[str, Any]:
        params: dict[str, Any] = {
            "key_version": ref.version,
            "hash_algorithm": _TRANSIT_HASHES[ref.algorithm.hash_name],
            "prehashed": True,
            "mount_point": self._mount,
        }
        if ref.algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384):
            params["marshaling_algorithm"] = "asn1"
        else:
            params["signature_algorithm"] = "pkcs1v15"
        return params

    def _check_digest(self, ref: KeyRef, digest: bytes) -> str:
        size = _DIGEST_SIZES[ref.algorithm.hash_name]
        if len(digest) != size:
            raise KmsInvalidRequestError(
                f"a {ref.algorithm.value} key signs {size}-byte {ref.algorithm.hash_name} "
                f"digests, got {len(digest)} bytes"
            )
        return base64.b64encode(digest).decode()

    def _decode(self, ref: KeyRef, value: object) -> bytes:
        match = _SIGNATURE_RE.match(value) if isinstance(value, str) else None
        if match is None:
            raise KmsBadResponseError(f"vault sent a malformed signature for {ref.key_id!r}")
        if int(match.group(1)) != ref.version:
            raise KmsBadResponseError(
                f"vault signed with version {match.group(1)} of {ref.key_id!r}, "
                f"not version {ref.version}"
            )
        try:
            return base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            raise KmsBadResponseError(
                f"vault sent a signature for {ref.key_id!r} that is not base64"
            ) from None

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        self._check_ref(ref)
        encoded = self._check_digest(ref, digest)
        params = self._sign_params(ref)
        resp = self._conn.call(
            "sign",
            lambda c: c.secrets.transit.sign_data(ref.key_id, hash_input=encoded, **params),
            what=f"signing with transit key {ref.key_id!r}",
        )
        return self._decode(ref, response_data(resp).get("signature"))

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        self._check_ref(ref)
        encoded = [self._check_digest(ref, d) for d in digests]
        params = self._sign_params(ref)
        out: list[bytes] = []
        for start in range(0, len(encoded), self._batch_size):
            chunk = encoded[start : start + self._batch_size]
            batch = [{"input": item} for item in chunk]

            def send(c: hvac.Client, batch: list[dict[str, str]] = batch) -> Any:
                return c.secrets.transit.sign_data(ref.key_id, batch_input=batch, **params)

            resp = self._conn.call(
                "sign_batch", send, what=f"batch signing with transit key {ref.key_id!r}"
            )
            results = response_data(resp).get("batch_results")
            if not isinstance(results, list) or len(results) != len(chunk):
                raise KmsBadResponseError(
                    f"vault answered a batch of {len(chunk)} for {ref.key_id!r} with "
                    f"{len(results) if isinstance(results, list) else 'no'} results"
                )
            failed = [
                (start + i, str(r.get("error")))
                for i, r in enumerate(results)
                if not isinstance(r, dict) or r.get("error")
            ]
            if failed:
                index, error = failed[0]
                raise KmsInvalidRequestError(
                    f"vault refused {len(failed)} of {len(chunk)} digests in a batch for "
                    f"{ref.key_id!r} (first: digest {index}: {self._conn.scrub(error)})"
                )
            out.extend(self._decode(ref, r.get("signature")) for r in results)
        return out

    def retire(self, ref: KeyRef) -> None:
        self._check_ref(ref)
        transit = self._mount
        with self._public_lock:
            for cached in [k for k in self._public if k[0] == ref.key_id]:
                del self._public[cached]
        try:
            self._conn.call(
                "retire",
                lambda c: c.secrets.transit.update_key_configuration(
                    ref.key_id, deletion_allowed=True, mount_point=transit
                ),
                what=f"allowing deletion of transit key {ref.key_id!r}",
            )
            self._conn.call(
                "retire",
                lambda c: c.secrets.transit.delete_key(ref.key_id, mount_point=transit),
                what=f"deleting transit key {ref.key_id!r}",
            )
        except KmsKeyNotFoundError:
            log.info("kms key already gone", backend=self.kind, key=ref.key_id)
            return
        log.info("kms key retired", backend=self.kind, key=ref.key_id)

    def check(self) -> None:
        self._conn.check_ready()
        probe = f"{self._prefix}{_PROBE_KEY}"
        # Not found is the good answer: the mount exists and the token may read keys.
        with contextlib.suppress(KmsKeyNotFoundError):
            self._read_key(probe)

    def close(self) -> None:
        self._conn.close()


def _matches(public: object, algorithm: KeyAlgorithm) -> bool:
    if isinstance(public, ec.EllipticCurvePublicKey):
        want = {KeyAlgorithm.EC_P256: "secp256r1", KeyAlgorithm.EC_P384: "secp384r1"}
        return want.get(algorithm) == public.curve.name
    if isinstance(public, rsa.RSAPublicKey):
        size = {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_4096: 4096}
        return size.get(algorithm) == public.key_size
    return False


def app_role_from_config(cfg: AppRoleConfig | None) -> AppRole | None:
    """The ``appRole`` config block as an ``AppRole`` (None when absent)."""
    if cfg is None:
        return None
    return AppRole(
        role_id=cfg.role_id,
        secret_id=cfg.secret_id.get_secret_value() if cfg.secret_id is not None else None,
        secret_id_file=Path(cfg.secret_id_file) if cfg.secret_id_file is not None else None,
        mount=cfg.mount,
    )


def from_config(
    cfg: VaultTransitConfig, metrics: VaultMetrics | None = None
) -> VaultTransitKeyManager:
    """The ``keyManager: {kind: vault-transit, ...}`` block as a key manager."""
    return VaultTransitKeyManager(
        mount=cfg.mount, key_prefix=cfg.key_prefix, metrics=metrics, **vault_access(cfg)
    )
