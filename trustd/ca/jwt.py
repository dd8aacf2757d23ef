"""JWT-SVIDs: their signing keys, signing, and validation (SPIFFE JWT-SVID standard).

- ``JwtKeyring`` keeps the JWT signing keys, one slot set (prepared, active,
  old) in the store document ``jwt.keys``. Every key is created in the key
  manager, like the CA's, and signs there: no private key is ever held here.
  Its schedule is the CA's: the next key is prepared, and published in the
  bundle, at half the active key's life; it signs from the last sixth; an old
  key leaves the bundle once it expires, and no token outlives its key.
- ``JwtKeyring.sign`` makes a token: header ``alg``, ``kid`` and ``typ`` only;
  claims ``sub``, ``aud``, ``exp``, ``iat`` and ``jti``. The key manager signs
  the digest of the JWS signing input; the signature is checked before the
  token is handed out.
- ``validate_jwt_svid`` is what ``ValidateJWTSVID`` runs. It refuses a
  malformed token, an ``alg`` that is not an asymmetric JWS algorithm (``none``,
  ``HS256``), an ``alg`` that does not fit the key, an unknown ``kid``, a key
  of another trust domain than the subject's, a bad signature, an expired or
  not yet valid token and a token without the audience asked for.

A token is a bearer secret: it appears in no log line, audit event or error
message (``JwtSvid``'s repr leaves it out).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from trustd.bundle import Bundle, JwtAuthority, JwtPublicKey, public_jwk
from trustd.ca.errors import (
    ConcurrentRotationError,
    InvalidJwtSvidError,
    InvalidTtlError,
    NoActiveAuthorityError,
    SigningError,
)
from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef
from trustd.clock import Clock
from trustd.errors import InvalidArgumentError, TrustdError
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain
from trustd.store.base import Store

log = structlog.get_logger(__name__)

DOC = "jwt.keys"  # the store document holding the slot set
SEQUENCE_DOC = "bundle.sequence"  # shared with the CA slots: one spiffe_sequence per bundle

PREPARED = "prepared"
ACTIVE = "active"
OLD = "old"

MAX_TOKEN_CHARS = 16 * 1024  # far above any JWT-SVID; refused unparsed beyond this
MAX_AUDIENCES = 16
MAX_AUDIENCE_CHARS = 512
LEEWAY = dt.timedelta(seconds=30)  # clock skew allowed on exp and nbf (JWT-SVID appendix A)

# The JWS algorithms of RFC 7518 §3.3-3.5, the only ones JWT-SVID allows.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
SUPPORTED_ALGORITHMS = frozenset(f"{f}{n}" for f in ("RS", "ES", "PS") for n in _HASHES)
_EC_CURVE_OF_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_ALG_OF_KEY = {
    KeyAlgorithm.EC_P256: "ES256",
    KeyAlgorithm.EC_P384: "ES384",
    KeyAlgorithm.RSA_2048: "RS256",
    KeyAlgorithm.RSA_4096: "RS256",
}
_B64U_RE = re.compile(r"[A-Za-z0-9_-]*")
_MIN_RSA_BITS = 2048


def jws_algorithm(algorithm: KeyAlgorithm) -> str:
    """The JWS ``alg`` a key of this kind signs with (its digest is ``algorithm.hash_name``)."""
    return _ALG_OF_KEY[algorithm]


def key_id_of(pub: JwtPublicKey) -> str:
    """The ``kid``: the key's RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = public_jwk(pub)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64u(hashlib.sha256(canonical).digest())


def check_audience(audience: Iterable[str]) -> tuple[str, ...]:
    """The audience values of a request, in order and without repeats; at least one."""
    out: list[str] = []
    for value in audience:
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(
                "an audience value is empty: name the service the token is for, e.g. "
                "--audience spiffe://trustd.local/ns/shop/sa/backend"
            )
        if len(value) > MAX_AUDIENCE_CHARS or not value.isprintable():
            raise InvalidArgumentError(
                f"an audience value is longer than {MAX_AUDIENCE_CHARS} characters or not printable"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise InvalidArgumentError("an audience is required: name the service the token is for")
    if len(out) > MAX_AUDIENCES:
        raise InvalidArgumentError(f"at most {MAX_AUDIENCES} audience values per token")
    return tuple(out)


# ---------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKeyRecord:
    """One JWT signing key slot, as the store keeps it."""

    key_id: str  # the kid of the tokens it signs (RFC 7638 thumbprint of its public key)
    state: str  # "prepared" | "active" | "old"
    key_ref: KeyRef  # where its private key lives (never the key itself)
    public_key: JwtPublicKey  # published in the bundle
    not_before: dt.datetime  # when it was created
    not_after: dt.datetime  # no token it signs outlives this
    activated_at: dt.datetime | None = None  # when it started signing

    def authority(self) -> JwtAuthority:
        return JwtAuthority(key_id=self.key_id, public_key=self.public_key)

    def to_json(self) -> dict[str, object]:
        spki = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "kid": self.key_id,
            "state": self.state,
            "key_ref": self.key_ref.to_json(),
            "public_key": base64.b64encode(spki).decode(),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JwtKeyRecord:
        pub = serialization.load_der_public_key(base64.b64decode(data["public_key"]))
        if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("a jwt key of the store is neither EC nor RSA")
        activated = data.get("activated_at")
        return cls(
            key_id=str(data["kid"]),
            state=str(data["state"]),
            key_ref=KeyRef.from_json(data["key_ref"]),
            public_key=pub,
            not_before=dt.datetime.fromisoformat(data["not_before"]),
            not_after=dt.datetime.fromisoformat(data["not_after"]),
            activated_at=dt.datetime.fromisoformat(activated) if activated else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSchedule:
    """Lifetime and kind of the JWT signing keys."""

    key_ttl: dt.timedelta = dt.timedelta(hours=24)  # lifetime of each signing key
    key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256  # ES256 by default


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSvid:
    """A signed JWT-SVID. ``token`` is a bearer secret: keep it out of logs and audit."""

    spiffe_id: SpiffeId  # the ``sub`` claim
    audience: tuple[str, ...]  # the ``aud`` claim
    token: str = field(repr=False)  # JWS compact serialization
    key_id: str  # the ``kid`` that signed it
    jti: str  # the ``jti`` claim: what audit events and logs name it by
    issued_at: dt.datetime  # ``iat``
    expires_at: dt.datetime  # ``exp``


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatedJwtSvid:
    """What ``validate_jwt_svid`` found in a token that passed."""

    spiffe_id: SpiffeId  # the subject
    claims: dict[str, Any]  # every claim of the payload, as sent
    key_id: str  # the key that signed it
    expires_at: dt.datetime


# ---------------------------------------------------------------------- keyring

Recorder = Callable[[str, JwtKeyRecord], None]


class JwtKeyring:
    """The JWT signing key slots: rotation and signing, with the keys in the key manager."""

    def __init__(
        self,
        *,
        store: Store,
        key_manager: KeyManager,
        trust_domain: TrustDomain,
        clock: Clock,
        schedule: JwtSchedule | None = None,
    ) -> None:
        self._store = store
        self._km = key_manager
        self._td = trust_domain
        self._clock = clock
        self.schedule = schedule or JwtSchedule()
        self._lock = threading.RLock()
        self._parsed: tuple[str | None, tuple[JwtKeyRecord, ...]] = (None, ())

    # -- reading -------------------------------------------------------------
    def _read(self) -> tuple[str | None, tuple[JwtKeyRecord, ...]]:
        raw = self._store.get_doc(DOC)
        cached_raw, cached = self._parsed
        if raw == cached_raw:
            return raw, cached
        records: tuple[JwtKeyRecord, ...] = ()
        if raw:
            records = tuple(JwtKeyRecord.from_json(d) for d in json.loads(raw)["keys"])
        self._parsed = (raw, records)
        return raw, records

    def records(self) -> tuple[JwtKeyRecord, ...]:
        return self._read()[1]

    def authorities(self) -> tuple[JwtAuthority, ...]:
        """Every key a valid token may be signed with, oldest first: what the bundle carries."""
        return tuple(r.authority() for r in sorted(self.records(), key=lambda r: r.not_before))

    def active(self) -> JwtKeyRecord:
        active = next((r for r in self.records() if r.state == ACTIVE), None)
        if active is None:
            raise NoActiveAuthorityError(
                "no active jwt signing key: the server is starting or its key manager is "
                "unavailable"
            )
        return active

    # -- rotation ------------------------------------------------------------
    def ensure_active(self, record: Recorder) -> str | None:
        """At start-up: a key that signs, creating the first one if there is none."""
        with self._lock:
            raw, records = self._read()
            if any(r.state == ACTIVE for r in records):
                return None
            prepared = next((r for r in records if r.state == PREPARED), None)
            if prepared is not None:
                self._activate(raw, records, prepared, record)
                return "activated"
            now = self._clock.now()
            new = replace(self._create(now), state=ACTIVE, activated_at=now)
            self._commit_new(raw, (*records, new), "activated", new, record)
            return "activated"

    def rotate(self, record: Recorder) -> str | None:
        """One tick of automatic rotation: "prepared", "activated", "pruned" or None."""
        with self._lock:
            now = self._clock.now()
            raw, records = self._read()
            active = next((r for r in records if r.state == ACTIVE), None)
            if active is None:
                return self.ensure_active(record)
            prepared = next((r for r in records if r.state == PREPARED), None)
            life = active.not_after - active.not_before
            if prepared is None and now >= active.not_before + life / 2:
                new = self._create(now)
                self._commit_new(raw, (*records, new), "prepared", new, record)
                return "prepared"
            if prepared is not None and now >= active.not_after - life / 6:
                self._activate(raw, records, prepared, record)
                return "activated"
            for r in records:
                if r.state == OLD and now >= r.not_after:
                    self._commit(raw, tuple(x for x in records if x is not r), "pruned", r, record)
                    self._retire(r, "could not retire an expired jwt key")
                    return "pruned"
            return None

    def _activate(
        self,
        raw: str | None,
        records: Sequence[JwtKeyRecord],
        prepared: JwtKeyRecord,
        record: Recorder,
    ) -> None:
        activated = replace(prepared, state=ACTIVE, activated_at=self._clock.now())
        new = tuple(
            activated if r is prepared else replace(r, state=OLD) if r.state == ACTIVE else r
            for r in records
        )
        self._commit(raw, new, "activated", activated, record)

    def _create(self, now: dt.datetime) -> JwtKeyRecord:
        """A new key in the key manager; nothing is stored here."""
        algorithm = self.schedule.key_algorithm
        ref = self._km.create_key(f"jwt-{uuid.uuid4().hex[:16]}", algorithm)
        try:
            pub = self._km.public_key(ref)
        except BaseException:
            self._retire_ref(ref, "could not retire an unused jwt key")
            raise
        return JwtKeyRecord(
            key_id=key_id_of(pub),
            state=PREPARED,
            key_ref=ref,
            public_key=pub,
            not_before=now,
            not_after=now + self.schedule.key_ttl,
        )

    def _commit_new(
        self,
        raw: str | None,
        records: Sequence[JwtKeyRecord],
        event: str,
        subject: JwtKeyRecord,
        record: Recorder,
    ) -> None:
        try:
            self._commit(raw, records, event, subject, record)
        except BaseException:
            self._retire(subject, "could not retire an unused jwt key")
            raise

    def _commit(
        self,
        raw: str | None,
        records: Sequence[JwtKeyRecord],
        event: str,
        subject: JwtKeyRecord,
        record: Recorder,
    ) -> None:
        """Record the change (the audit log), then write the slots if nobody changed them.

        The store has no hook inside its document write, so the record comes first: a
        change that cannot be recorded is not made. When another server sharing the store
        changed the keys in between, nothing is written and ConcurrentRotationError says so.
        """
        record(event, subject)
        doc = json.dumps({"keys": [r.to_json() for r in records]}, sort_keys=True)
        if not self._store.put_doc(DOC, doc, expect=raw):
            raise ConcurrentRotationError(
                "another server changed the jwt keys at the same time; nothing was changed here"
            )
        self._store.bump_counter(SEQUENCE_DOC)  # atomic: two servers never both write N+1
        log.info(
            "jwt key " + event,
            trust_domain=str(self._td),
            kid=subject.key_id,
            not_after=subject.not_after.isoformat(),
            algorithm=subject.key_ref.algorithm.value,
        )

    def _retire(self, rec: JwtKeyRecord, why: str) -> None:
        self._retire_ref(rec.key_ref, why)

    def _retire_ref(self, ref: KeyRef, why: str) -> None:
        try:
            self._km.retire(ref)
        except TrustdError as exc:
            log.warning(why, key=ref.key_id, error=str(exc))

    # -- signing -------------------------------------------------------------
    def sign(
        self,
        *,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> JwtSvid:
        """A token for ``spiffe_id``, signed by the active key; ``exp`` never outlives it."""
        if ttl <= dt.timedelta(0):
            raise InvalidTtlError("a jwt-svid ttl must be positive, e.g. 5m")
        aud = check_audience(audience)
        key = self.active()
        now = now or self._clock.now()
        iat = int(now.timestamp())
        exp = int(min(now + ttl, key.not_after).timestamp())
        if exp <= iat:
            raise NoActiveAuthorityError(
                "the active jwt signing key has expired: the server's rotation is behind; "
                "check its key manager"
            )
        alg = jws_algorithm(key.key_ref.algorithm)
        jti = uuid.uuid4().hex
        header = {"alg": alg, "kid": key.key_id, "typ": "JWT"}
        claims = {
            "aud": aud[0] if len(aud) == 1 else list(aud),
            "exp": exp,
            "iat": iat,
            "jti": jti,
            "sub": str(spiffe_id),
        }
        signing_input = f"{_b64u(_json(header))}.{_b64u(_json(claims))}".encode()
        digest = hashlib.new(key.key_ref.algorithm.hash_name, signing_input).digest()
        der_or_raw = self._km.sign(key.key_ref, digest)
        try:
            signature = _jws_signature(key.public_key, der_or_raw)
            _verify(key.public_key, alg, signing_input, signature)
        except (InvalidSignature, ValueError):
            raise SigningError(
                "the key manager returned a signature that does not verify under the jwt key; "
                "nothing was issued"
            ) from None
        return JwtSvid(
            spiffe_id=spiffe_id,
            audience=aud,
            token=f"{signing_input.decode()}.{_b64u(signature)}",
            key_id=key.key_id,
            jti=jti,
            issued_at=dt.datetime.fromtimestamp(iat, dt.UTC),
            expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
        )


def _json(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jws_signature(pub: JwtPublicKey, sig: bytes) -> bytes:
    """A key manager's signature in JWS form: ECDSA as fixed-size r || s (RFC 7518 §3.4)."""
    if isinstance(pub, rsa.RSAPublicKey):
        return sig
    r, s = utils.decode_dss_signature(sig)
    size = (pub.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _verify(pub: JwtPublicKey, alg: str, signing_input: bytes, signature: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is ``alg`` over the input by ``pub``."""
    hash_alg = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        size = (pub.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise InvalidSignature
        der = utils.encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        pub.verify(der, signing_input, ec.ECDSA(hash_alg))
        return
    if not isinstance(pub, rsa.RSAPublicKey):
        raise InvalidSignature
    if alg.startswith("RS"):
        pub.verify(signature, signing_input, padding.PKCS1v15(), hash_alg)
        return
    pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    pub.verify(signature, signing_input, pss, hash_alg)


# ---------------------------------------------------------------------- validation


def _refuse(why: str) -> InvalidJwtSvidError:
    return InvalidJwtSvidError(f"the jwt-svid is not valid: {why}")


def _shown(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _b64u_decode(part: str, what: str) -> bytes:
    if not _B64U_RE.fullmatch(part) or len(part) % 4 == 1:
        raise _refuse(f"its {what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _refuse(f"its {what} is not base64url without padding") from None


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(f"its {what} is not a JSON object ({exc})") from None
    if not isinstance(doc, dict):
        raise _refuse(f"its {what} is not a JSON object")
    return doc


def _numeric_date(claims: Mapping[str, Any], name: str) -> dt.datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"its {name} claim is not a number of seconds")
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise _refuse(f"its {name} claim is out of range") from None


def validate_jwt_svid(
    token: str,
    audience: str,
    *,
    bundles: Mapping[TrustDomain, Bundle],
    now: dt.datetime,
    leeway: dt.timedelta = LEEWAY,
) -> ValidatedJwtSvid:
    """Validate a JWT-SVID for ``audience`` against the JWT keys of ``bundles``.

    The subject's trust domain picks the bundle; the ``kid`` picks the key in it.
    Raises ``InvalidJwtSvidError`` (INVALID_ARGUMENT) saying why, never echoing the token.
    """
    if not audience:
        raise InvalidArgumentError("an audience is required to validate a jwt-svid")
    if not isinstance(token, str) or not token:
        raise InvalidArgumentError("a jwt-svid to validate is required")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise _refuse(f"it is not a JWS of at most {MAX_TOKEN_CHARS} ASCII characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise _refuse("it is not a JWS in compact serialization (header.payload.signature)")
    header = _json_object(_b64u_decode(parts[0], "header"), "header")
    claims = _json_object(_b64u_decode(parts[1], "payload"), "payload")
    signature = _b64u_decode(parts[2], "signature")

    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _refuse("its header has no alg")
    if alg.lower() == "none" or alg.upper().startswith("HS"):
        raise _refuse(
            f"alg {_shown(alg)} is not allowed: jwt-svids are signed with an asymmetric key "
            "(RS*, ES*, PS*)"
        )
    if alg not in SUPPORTED_ALGORITHMS:
        raise _refuse(f"alg {_shown(alg)} is not one jwt-svids may use (RS*, ES*, PS*)")
    if "crit" in header:
        raise _refuse("its header has critical extensions, which jwt-svids may not use")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise _refuse(f"typ {_shown(typ)} is neither JWT nor JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refuse("its header has no kid naming the key that signed it")

    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _refuse("it has no sub claim")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except InvalidSpiffeIdError:
        raise _refuse(f"its sub {_shown(sub)} is not a spiffe id") from None
    td = spiffe_id.trust_domain
    bundle = bundles.get(td)
    if bundle is None:
        raise _refuse(f"it is for trust domain {td}, whose jwt bundle this agent does not have")
    key = next((a for a in bundle.jwt_authorities if a.key_id == kid), None)
    if key is None:
        other = next(
            (
                b.trust_domain
                for b in bundles.values()
                if b.trust_domain != td and any(a.key_id == kid for a in b.jwt_authorities)
            ),
            None,
        )
        if other is not None:
            raise _refuse(
                f"it was signed by a key of trust domain {other}, not of {td}, its subject's"
            )
        raise _refuse(f"kid {_shown(kid)} is not a key of trust domain {td}")
    pub = key.public_key
    if alg.startswith("ES"):
        if not isinstance(pub, ec.EllipticCurvePublicKey) or (
            pub.curve.name != _EC_CURVE_OF_ALG[alg]
        ):
            raise _refuse(f"alg {alg} does not fit the key {_shown(kid)}")
    elif not isinstance(pub, rsa.RSAPublicKey) or pub.key_size < _MIN_RSA_BITS:
        raise _refuse(f"alg {alg} does not fit the key {_shown(kid)}")
    try:
        _verify(pub, alg, f"{parts[0]}.{parts[1]}".encode(), signature)
    except InvalidSignature:
        raise _refuse("its signature does not verify") from None

    expires_at = _numeric_date(claims, "exp")
    if expires_at is None:
        raise _refuse("it has no exp claim")
    if now >= expires_at + leeway:
        raise _refuse(f"it expired at {expires_at.isoformat()}")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and now + leeway < not_before:
        raise _refuse(f"it is not valid before {not_before.isoformat()}")
    _numeric_date(claims, "iat")
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v for v in values)
    ):
        raise _refuse("its aud claim is missing or not a string or a list of strings")
    if audience not in values:
        raise _refuse(f"it is not for the audience {_shown(audience)}")
    return ValidatedJwtSvid(spiffe_id=spiffe_id, claims=claims, key_id=kid, expires_at=expires_at)


__all__ = [
    "JwtKeyRecord",
    "JwtKeyring",
    "JwtSchedule",
    "JwtSvid",
    "ValidatedJwtSvid",
    "check_audience",
    "jws_algorithm",
    "key_id_of",
    "validate_jwt_svid",
]
