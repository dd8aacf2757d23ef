"""JWT-SVIDs: signing keys in the key manager and their rotation, signing, and every refusal."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from spiffe import JwtBundle, JwtSvid
from spiffe import TrustDomain as SpiffeTrustDomain

from trustd.bundle import Bundle, JwtAuthority
from trustd.ca.errors import ConcurrentRotationError, InvalidJwtSvidError, SigningError
from trustd.ca.jwt import (
    LEEWAY,
    JwtKeyRecord,
    JwtKeyring,
    JwtSchedule,
    check_audience,
    key_id_of,
    validate_jwt_svid,
)
from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.errors import InvalidArgumentError, UnavailableError
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.sqlite import SqliteStore

TD = TrustDomain.parse("trustd.local")
OTHER_TD = TrustDomain.parse("partner.example")
WEB = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/web")
START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
FIVE_MIN = dt.timedelta(minutes=5)


@dataclass
class SpyKeyManager(MemoryKeyManager):
    """A memory key manager that counts signatures and can return a broken one."""

    signs: int = 0
    corrupt: bool = False
    retired: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        MemoryKeyManager.__init__(self)

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        self.signs += 1
        sig = super().sign(ref, digest)
        if self.corrupt:
            r, s = utils.decode_dss_signature(sig)
            return utils.encode_dss_signature(r, s ^ 1)
        return sig

    def retire(self, ref: KeyRef) -> None:
        self.retired.append(ref.key_id)
        super().retire(ref)


@dataclass
class Rig:
    clock: FakeClock
    store: SqliteStore
    km: SpyKeyManager
    keys: JwtKeyring
    events: list[tuple[str, str]]  # (event, kid) as handed to the recorder

    def record(self, event: str, rec: JwtKeyRecord) -> None:
        self.events.append((event, rec.key_id))

    def bundle(self, td: TrustDomain = TD) -> Bundle:
        return Bundle(
            trust_domain=td,
            x509_authorities=(),
            sequence=1,
            jwt_authorities=self.keys.authorities(),
        )

    def sign(
        self,
        audience: Sequence[str] = ("backend",),
        ttl: dt.timedelta = FIVE_MIN,
        spiffe_id: SpiffeId = WEB,
    ) -> str:
        return self.keys.sign(spiffe_id=spiffe_id, audience=audience, ttl=ttl).token

    def validate(self, token: str, audience: str = "backend", **kw: Any) -> Any:
        bundles = kw.pop("bundles", None) or {TD: self.bundle()}
        return validate_jwt_svid(token, audience, bundles=bundles, now=self.clock.now(), **kw)


def make_rig(
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
    key_ttl: dt.timedelta = dt.timedelta(hours=24),
    start: dt.datetime = START,
) -> Rig:
    clock = FakeClock(start)
    store = SqliteStore(":memory:")
    km = SpyKeyManager()
    keys = JwtKeyring(
        store=store,
        key_manager=km,
        trust_domain=TD,
        clock=clock,
        schedule=JwtSchedule(key_ttl=key_ttl, key_algorithm=algorithm),
    )
    rig = Rig(clock=clock, store=store, km=km, keys=keys, events=[])
    keys.ensure_active(rig.record)
    return rig


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return json.loads(_unb64u(h)), json.loads(_unb64u(p))


def _forge(header: dict[str, Any], claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    """An ES256 token signed by ``key`` with exactly this header and these claims."""
    signing_input = f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(claims).encode())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    return f"{signing_input}.{_b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _claims(rig: Rig, **over: Any) -> dict[str, Any]:
    now = int(rig.clock.now().timestamp())
    doc: dict[str, Any] = {"sub": str(WEB), "aud": "backend", "exp": now + 300, "iat": now}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def _refused(rig: Rig, token: str, why: str, audience: str = "backend", **kw: Any) -> None:
    with pytest.raises(InvalidJwtSvidError) as err:
        rig.validate(token, audience, **kw)
    assert why in str(err.value), str(err.value)
    assert token not in str(err.value)


# ---------------------------------------------------------------------- keys and rotation


def test_first_key_is_made_in_the_key_manager_and_signs() -> None:
    rig = make_rig()
    [rec] = rig.keys.records()
    assert rec.state == "active"
    assert rec.key_ref.backend == "memory" and rec.key_ref.key_id.startswith("jwt-")
    assert rec.public_key == rig.km.public_key(rec.key_ref)
    assert rec.key_id == key_id_of(rec.public_key)
    assert rec.not_after - rec.not_before == dt.timedelta(hours=24)
    assert rig.events == [("activated", rec.key_id)]
    assert rig.store.get_doc("bundle.sequence") == "1"
    stored = rig.store.get_doc("jwt.keys") or ""
    assert "PRIVATE" not in stored and "d" not in json.loads(stored)["keys"][0]
    assert rig.keys.ensure_active(rig.record) is None  # one is enough


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 §3.1 example key, and the thumbprint it gives
    jwk: dict[str, object] = {
        "e": "AQAB",
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhA"
        "I4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    from trustd.bundle import public_key_from_jwk

    pub = public_key_from_jwk(jwk)
    assert key_id_of(pub) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_next_key_is_published_at_half_life_and_signs_from_the_last_sixth() -> None:
    rig = make_rig()
    [first] = rig.keys.records()
    rig.clock.set(START + dt.timedelta(hours=12) - dt.timedelta(seconds=1))
    assert rig.keys.rotate(rig.record) is None
    rig.clock.set(START + dt.timedelta(hours=12))
    assert rig.keys.rotate(rig.record) == "prepared"
    assert {r.state for r in rig.keys.records()} == {"active", "prepared"}
    assert next(a.key_id for a in rig.keys.authorities()) == first.key_id
    assert len(rig.keys.authorities()) == 2  # both published before the new one signs
    assert _parts(rig.sign())[0]["kid"] == first.key_id

    rig.clock.set(START + dt.timedelta(hours=20) - dt.timedelta(minutes=1))
    assert rig.keys.rotate(rig.record) is None
    before = rig.sign()
    rig.clock.set(START + dt.timedelta(hours=20))
    assert rig.keys.rotate(rig.record) == "activated"
    [second] = [r for r in rig.keys.records() if r.state == "active"]
    assert second.key_id != first.key_id
    assert _parts(rig.sign())[0]["kid"] == second.key_id
    assert {a.key_id for a in rig.keys.authorities()} == {first.key_id, second.key_id}
    rig.validate(before)  # a token of the old key still validates

    rig.clock.set(START + dt.timedelta(hours=24))  # the first expires; the second is half-way
    assert rig.keys.rotate(rig.record) == "prepared"
    assert rig.keys.rotate(rig.record) == "pruned"
    assert first.key_id not in {a.key_id for a in rig.keys.authorities()}
    assert next(a.key_id for a in rig.keys.authorities()) == second.key_id
    assert first.key_ref.key_id in rig.km.retired
    assert [e for e, _ in rig.events] == [
        "activated",
        "prepared",
        "activated",
        "prepared",
        "pruned",
    ]
    assert int(rig.store.get_doc("bundle.sequence") or 0) == 5


def test_token_never_outlives_its_key() -> None:
    rig = make_rig(key_ttl=dt.timedelta(hours=1))
    rig.clock.set(START + dt.timedelta(minutes=58))
    _, claims = _parts(rig.sign(ttl=dt.timedelta(minutes=30)))
    assert claims["exp"] == int((START + dt.timedelta(hours=1)).timestamp())


def test_a_rotation_that_cannot_be_recorded_does_not_happen() -> None:
    rig = make_rig()
    rig.clock.set(START + dt.timedelta(hours=13))
    before = rig.store.get_doc("jwt.keys")

    def fail(event: str, rec: JwtKeyRecord) -> None:
        raise UnavailableError("audit log is down")

    with pytest.raises(UnavailableError):
        rig.keys.rotate(fail)
    assert rig.store.get_doc("jwt.keys") == before
    assert len(rig.km.retired) == 1  # the key made for it is retired again


def test_a_concurrent_rotation_elsewhere_wins_and_ours_is_discarded() -> None:
    rig = make_rig()
    rig.clock.set(START + dt.timedelta(hours=13))

    def another_server_meanwhile(event: str, rec: JwtKeyRecord) -> None:
        rig.store.put_doc("jwt.keys", json.dumps({"keys": []}))

    with pytest.raises(ConcurrentRotationError):
        rig.keys.rotate(another_server_meanwhile)
    assert len(rig.km.retired) == 1


# ---------------------------------------------------------------------- signing


def test_token_has_only_the_spiffe_header_and_the_claims() -> None:
    rig = make_rig()
    svid = rig.keys.sign(spiffe_id=WEB, audience=["backend"], ttl=FIVE_MIN)
    header, claims = _parts(svid.token)
    [rec] = rig.keys.records()
    assert header == {"alg": "ES256", "kid": rec.key_id, "typ": "JWT"}
    assert set(claims) == {"sub", "aud", "exp", "iat", "jti"}
    assert claims["sub"] == str(WEB) and claims["aud"] == "backend"
    assert claims["iat"] == int(START.timestamp())
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"] == svid.jti and svid.key_id == rec.key_id
    assert svid.expires_at == START + FIVE_MIN
    assert rig.km.signs == 1  # signed by the key manager
    assert svid.token not in repr(svid)


def test_several_audiences_are_a_list() -> None:
    rig = make_rig()
    _, claims = _parts(rig.sign(audience=["a", "b", "a"]))
    assert claims["aud"] == ["a", "b"]
    assert rig.validate(rig.sign(audience=["a", "b"]), "b").spiffe_id == WEB


@pytest.mark.parametrize(
    ("algorithm", "alg"),
    [
        (KeyAlgorithm.EC_P256, "ES256"),
        (KeyAlgorithm.EC_P384, "ES384"),
        (KeyAlgorithm.RSA_2048, "RS256"),
    ],
)
def test_each_key_type_signs_tokens_others_accept(algorithm: KeyAlgorithm, alg: str) -> None:
    rig = make_rig(algorithm=algorithm)
    token = rig.sign()
    assert _parts(token)[0]["alg"] == alg
    assert rig.validate(token).spiffe_id == WEB
    # two independent validators: PyJWT with the published key, and py-spiffe's
    bundle = rig.bundle()
    [authority] = bundle.jwt_authorities
    pem = authority.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = pyjwt.decode(
        token,
        pem,
        algorithms=[alg],
        audience="backend",
        options={"verify_iat": False, "verify_exp": False},
    )
    assert claims["sub"] == str(WEB)
    jwt_bundle = JwtBundle.parse(SpiffeTrustDomain(str(TD)), bundle.to_jwks())
    assert jwt_bundle.get_jwt_authority(authority.key_id) is not None


def test_a_signature_the_key_manager_got_wrong_is_never_handed_out() -> None:
    rig = make_rig()
    rig.km.corrupt = True
    with pytest.raises(SigningError):
        rig.sign()


def test_audience_is_required() -> None:
    rig = make_rig()
    for bad in ([], [""], ["  "]):
        with pytest.raises(InvalidArgumentError):
            rig.sign(audience=bad)
    with pytest.raises(InvalidArgumentError):
        check_audience([f"a{i}" for i in range(17)])


def test_bundle_publishes_jwt_keys_as_jwt_svid_jwks() -> None:
    rig = make_rig()
    bundle = rig.bundle()
    doc = json.loads(bundle.to_jwks())
    [key] = doc["keys"]
    assert key["use"] == "jwt-svid" and key["kid"] == rig.keys.records()[0].key_id
    assert key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key
    parsed = Bundle.from_spiffe(TD, bundle.to_spiffe())
    assert parsed.jwt_authorities == bundle.jwt_authorities


# ---------------------------------------------------------------------- validation: refusals


def test_validates_a_good_token() -> None:
    rig = make_rig()
    found = rig.validate(rig.sign())
    assert found.spiffe_id == WEB
    assert found.claims["aud"] == "backend" and found.claims["sub"] == str(WEB)


def test_refuses_a_wrong_audience() -> None:
    rig = make_rig()
    _refused(rig, rig.sign(audience=["backend"]), "not for the audience", audience="frontend")


def test_refuses_an_expired_token() -> None:
    rig = make_rig()
    token = rig.sign()
    rig.clock.advance(FIVE_MIN + LEEWAY)
    _refused(rig, token, "expired")


def test_accepts_a_token_expired_within_the_leeway() -> None:
    rig = make_rig()
    token = rig.sign()
    rig.clock.advance(FIVE_MIN + LEEWAY - dt.timedelta(seconds=1))
    assert rig.validate(token).spiffe_id == WEB


def test_refuses_alg_none() -> None:
    rig = make_rig()
    header, claims = _parts(rig.sign())
    unsigned = (
        f"{_b64u(json.dumps({**header, 'alg': 'none'}).encode())}."
        f"{_b64u(json.dumps(claims).encode())}."
    )
    _refused(rig, unsigned, "alg 'none' is not allowed")


def test_refuses_hs256_signed_with_the_public_key() -> None:
    # the classic confusion: the published public key used as an HMAC secret
    rig = make_rig()
    [rec] = rig.keys.records()
    secret = rec.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": rec.key_id, "typ": "JWT"}
    signing_input = (
        f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(_claims(rig)).encode())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    _refused(rig, f"{signing_input}.{_b64u(mac)}", "alg 'HS256' is not allowed")


def test_refuses_an_unknown_kid() -> None:
    rig = make_rig()
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = _forge({"alg": "ES256", "kid": "no-such-key", "typ": "JWT"}, _claims(rig), stranger)
    _refused(rig, token, "kid 'no-such-key' is not a key of trust domain trustd.local")


def test_refuses_a_token_without_kid() -> None:
    rig = make_rig()
    stranger = ec.generate_private_key(ec.SECP256R1())
    _refused(rig, _forge({"alg": "ES256"}, _claims(rig), stranger), "no kid")


def test_refuses_a_token_of_a_trust_domain_without_bundle() -> None:
    rig = make_rig()
    other_key = ec.generate_private_key(ec.SECP256R1())
    kid = key_id_of(other_key.public_key())
    claims = _claims(rig, sub="spiffe://partner.example/ns/x/sa/y")
    token = _forge({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims, other_key)
    _refused(rig, token, "trust domain partner.example, whose jwt bundle this agent does not have")


def test_refuses_a_token_signed_by_another_trust_domains_key() -> None:
    # a partner's key signing a token that claims one of our identities
    rig = make_rig()
    other_key = ec.generate_private_key(ec.SECP256R1())
    kid = key_id_of(other_key.public_key())
    partner = Bundle(
        trust_domain=OTHER_TD,
        x509_authorities=(),
        sequence=1,
        jwt_authorities=(JwtAuthority(key_id=kid, public_key=other_key.public_key()),),
    )
    token = _forge({"alg": "ES256", "kid": kid, "typ": "JWT"}, _claims(rig), other_key)
    bundles = {TD: rig.bundle(), OTHER_TD: partner}
    _refused(rig, token, "signed by a key of trust domain partner.example", bundles=bundles)
    # the same token is fine for the partner's own identities only
    own = _forge(
        {"alg": "ES256", "kid": kid},
        _claims(rig, sub="spiffe://partner.example/ns/x/sa/y"),
        other_key,
    )
    assert rig.validate(own, bundles=bundles).spiffe_id.trust_domain == OTHER_TD


def test_refuses_a_tampered_payload() -> None:
    rig = make_rig()
    h, _, s = rig.sign().split(".")
    forged = _b64u(json.dumps(_claims(rig, sub="spiffe://trustd.local/ns/shop/sa/admin")).encode())
    _refused(rig, f"{h}.{forged}.{s}", "signature does not verify")


def test_refuses_an_alg_that_does_not_fit_the_key() -> None:
    rig = make_rig()
    [rec] = rig.keys.records()
    _, p, s = rig.sign().split(".")
    h = _b64u(json.dumps({"alg": "ES384", "kid": rec.key_id, "typ": "JWT"}).encode())
    _refused(rig, f"{h}.{p}.{s}", "does not fit the key")
    h = _b64u(json.dumps({"alg": "RS256", "kid": rec.key_id, "typ": "JWT"}).encode())
    _refused(rig, f"{h}.{p}.{s}", "does not fit the key")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "required"),
        ("abc", "compact serialization"),
        ("a.b", "compact serialization"),
        ("a.b.c.d", "compact serialization"),
        ("!!!.e30.AA", "header is not base64url"),
        (f"{_b64u(b'not json')}.e30.AA", "header is not a JSON object"),
        (f"{_b64u(b'[1]')}.e30.AA", "header is not a JSON object"),
        (_b64u(b'{"alg":"ES256","alg":"none"}') + ".e30.AA", "duplicate member"),
        ("eyJhbGciOiJFUzI1NiJ9.e30=.AA", "payload is not base64url"),
        ("é.e30.AA", "ASCII"),
        ("a" * 20000, "at most"),
    ],
)
def test_refuses_a_malformed_token(token: str, why: str) -> None:
    rig = make_rig()
    with pytest.raises(InvalidArgumentError) as err:
        rig.validate(token)
    assert why in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"exp": None}, "no exp"),
        ({"exp": "tomorrow"}, "exp claim is not a number"),
        ({"exp": True}, "exp claim is not a number"),
        ({"aud": None}, "aud claim is missing"),
        ({"aud": []}, "aud claim is missing"),
        ({"aud": [1]}, "aud claim is missing"),
        ({"sub": None}, "no sub"),
        ({"sub": "web"}, "is not a spiffe id"),
        ({"sub": "spiffe://trustd.local/ns/../x"}, "is not a spiffe id"),
    ],
)
def test_refuses_missing_or_bad_claims(over: dict[str, Any], why: str) -> None:
    rig = make_rig()
    [rec] = rig.keys.records()
    token = _sign_claims(rig, rec, _claims(rig, **over))
    _refused(rig, token, why)


def test_refuses_a_token_not_valid_yet() -> None:
    rig = make_rig()
    [rec] = rig.keys.records()
    nbf = int((rig.clock.now() + dt.timedelta(minutes=2)).timestamp())
    _refused(rig, _sign_claims(rig, rec, _claims(rig, nbf=nbf)), "not valid before")


def test_refuses_other_header_types_and_critical_extensions() -> None:
    rig = make_rig()
    [rec] = rig.keys.records()
    claims = _claims(rig)
    _refused(rig, _sign_claims(rig, rec, claims, typ="secevent+jwt"), "neither JWT nor JOSE")
    _refused(rig, _sign_claims(rig, rec, claims, crit=["exp"]), "critical extensions")


def _sign_claims(rig: Rig, rec: JwtKeyRecord, claims: dict[str, Any], **header: Any) -> str:
    """Claims as given, signed by the ring's own key through the key manager."""
    head = {"alg": "ES256", "kid": rec.key_id, "typ": "JWT", **header}
    signing_input = f"{_b64u(json.dumps(head).encode())}.{_b64u(json.dumps(claims).encode())}"
    der = rig.km.sign(rec.key_ref, hashlib.sha256(signing_input.encode()).digest())
    r, s = utils.decode_dss_signature(der)
    return f"{signing_input}.{_b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_py_spiffe_validates_our_tokens_and_refuses_a_wrong_audience() -> None:
    rig = make_rig(start=dt.datetime.now(dt.UTC))  # py-spiffe checks exp by the real clock
    token = rig.sign()
    jwt_bundle = JwtBundle.parse(SpiffeTrustDomain(str(TD)), rig.bundle().to_jwks())
    svid = JwtSvid.parse_and_validate(token, jwt_bundle, {"backend"})
    assert str(svid.spiffe_id) == str(WEB)
    with pytest.raises(Exception, match=r"(?i)audience"):
        JwtSvid.parse_and_validate(token, jwt_bundle, {"frontend"})
