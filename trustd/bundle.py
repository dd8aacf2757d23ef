"""Trust bundles: the CA certificates and JWT keys a trust domain's peers are verified against.

Rendered as PEM (X.509 authorities only), or as a SPIFFE bundle: a JWK set whose
X.509 authorities are ``use: x509-svid`` keys with one CA certificate in
``x5c``, whose JWT authorities are ``use: jwt-svid`` keys with a ``kid``, plus
``spiffe_sequence`` and ``spiffe_refresh_hint``. ``to_jwks`` is the JWT bundle
of the Workload API: the ``jwt-svid`` keys alone.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.spiffeid import TrustDomain

JwtPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CURVES: dict[str, tuple[str, type[ec.EllipticCurve]]] = {
    "secp256r1": ("P-256", ec.SECP256R1),
    "secp384r1": ("P-384", ec.SECP384R1),
    "secp521r1": ("P-521", ec.SECP521R1),
}
_CURVE_BY_CRV = {crv: cls for crv, cls in _CURVES.values()}


def _b64u(n: int, length: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def _b64u_int(text: object) -> int:
    if not isinstance(text, str) or not text:
        raise ValueError("a JWK member is missing or not a base64url string")
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def public_jwk(pub: JwtPublicKey) -> dict[str, object]:
    """The public members of a JWK (RFC 7518 §6) for an EC or RSA key."""
    if isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = _CURVES[pub.curve.name][0]
        return {"kty": "EC", "crv": crv, "x": _b64u(nums.x, size), "y": _b64u(nums.y, size)}
    rnums = pub.public_numbers()
    return {
        "kty": "RSA",
        "n": _b64u(rnums.n, (rnums.n.bit_length() + 7) // 8),
        "e": _b64u(rnums.e, (rnums.e.bit_length() + 7) // 8),
    }


def public_key_from_jwk(jwk: dict[str, object]) -> JwtPublicKey:
    """The EC or RSA public key of a JWK; ValueError for anything else."""
    kty = jwk.get("kty")
    if kty == "EC":
        curve = _CURVE_BY_CRV.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError(f"unsupported JWK curve {jwk.get('crv')!r}")
        return ec.EllipticCurvePublicNumbers(
            _b64u_int(jwk.get("x")), _b64u_int(jwk.get("y")), curve()
        ).public_key()
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_b64u_int(jwk.get("e")), _b64u_int(jwk.get("n"))).public_key()
    raise ValueError(f"unsupported JWK key type {kty!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuthority:
    """A key that signs JWT-SVIDs for a trust domain."""

    key_id: str  # the JWS ``kid`` of the tokens it signs
    public_key: JwtPublicKey  # verifies their signatures

    def to_jwk(self) -> dict[str, object]:
        return {"use": "jwt-svid", "kid": self.key_id, **public_jwk(self.public_key)}


def _jwk(cert: x509.Certificate) -> dict[str, object]:
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("unsupported CA key type in bundle")
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return {"use": "x509-svid", **public_jwk(pub), "x5c": x5c}


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    trust_domain: TrustDomain  # whose bundle this is
    x509_authorities: tuple[x509.Certificate, ...]  # CA certificates, oldest first
    sequence: int  # bumped on every change (spiffe_sequence)
    refresh_hint_seconds: int = 300  # how often consumers should re-fetch (spiffe_refresh_hint)
    # hex SKIs of tainted CAs: agents reissue what they signed
    tainted_key_ids: frozenset[str] = frozenset()
    jwt_authorities: tuple[JwtAuthority, ...] = ()  # JWT-SVID signing keys, oldest first

    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    def to_der_list(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities]

    def to_spiffe_json(self) -> dict[str, object]:
        return {
            "keys": [_jwk(c) for c in self.x509_authorities]
            + [a.to_jwk() for a in self.jwt_authorities],
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_seconds,
        }

    def to_jwks(self) -> bytes:
        """The JWT bundle: a JWK set of the ``jwt-svid`` keys only (Workload API)."""
        doc = {"keys": [a.to_jwk() for a in self.jwt_authorities]}
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_spiffe(self) -> str:
        return json.dumps(self.to_spiffe_json(), indent=2)

    @classmethod
    def from_spiffe(cls, trust_domain: TrustDomain, text: str | bytes) -> Bundle:
        data = json.loads(text)
        certs = []
        jwt_keys = []
        for key in data.get("keys", []):
            if key.get("use") == "jwt-svid":
                kid = key.get("kid")
                if not isinstance(kid, str) or not kid:
                    raise ValueError("a jwt-svid key of the bundle has no kid")
                jwt_keys.append(JwtAuthority(key_id=kid, public_key=public_key_from_jwk(key)))
                continue
            if key.get("use") != "x509-svid":
                continue
            for b64 in key.get("x5c", [])[:1]:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(b64)))
        return cls(
            trust_domain=trust_domain,
            x509_authorities=tuple(certs),
            jwt_authorities=tuple(jwt_keys),
            sequence=int(data.get("spiffe_sequence", 0)),
            refresh_hint_seconds=int(data.get("spiffe_refresh_hint", 300)),
        )
