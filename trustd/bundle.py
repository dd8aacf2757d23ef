"""Trust bundles: the CA certificates a trust domain's peers are verified against.

Rendered as PEM, or as a SPIFFE bundle: a JWK set whose X.509 authorities are
``use: x509-svid`` keys with one CA certificate in ``x5c``, plus
``spiffe_sequence`` and ``spiffe_refresh_hint``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.spiffeid import TrustDomain


def _b64u(n: int, length: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def _jwk(cert: x509.Certificate) -> dict[str, object]:
    pub = cert.public_key()
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    if isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
        return {
            "use": "x509-svid",
            "kty": "EC",
            "crv": crv,
            "x": _b64u(nums.x, size),
            "y": _b64u(nums.y, size),
            "x5c": x5c,
        }
    if isinstance(pub, rsa.RSAPublicKey):
        rnums = pub.public_numbers()
        return {
            "use": "x509-svid",
            "kty": "RSA",
            "n": _b64u(rnums.n, (rnums.n.bit_length() + 7) // 8),
            "e": _b64u(rnums.e, (rnums.e.bit_length() + 7) // 8),
            "x5c": x5c,
        }
    raise ValueError("unsupported CA key type in bundle")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    trust_domain: TrustDomain  # whose bundle this is
    x509_authorities: tuple[x509.Certificate, ...]  # CA certificates, oldest first
    sequence: int  # bumped on every change (spiffe_sequence)
    refresh_hint_seconds: int = 300  # how often consumers should re-fetch (spiffe_refresh_hint)
    # hex SKIs of tainted CAs: agents reissue what they signed
    tainted_key_ids: frozenset[str] = frozenset()

    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    def to_der_list(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities]

    def to_spiffe_json(self) -> dict[str, object]:
        return {
            "keys": [_jwk(c) for c in self.x509_authorities],
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_seconds,
        }

    def to_spiffe(self) -> str:
        return json.dumps(self.to_spiffe_json(), indent=2)

    @classmethod
    def from_spiffe(cls, trust_domain: TrustDomain, text: str | bytes) -> Bundle:
        data = json.loads(text)
        certs = []
        for key in data.get("keys", []):
            if key.get("use") != "x509-svid":
                continue
            for b64 in key.get("x5c", [])[:1]:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(b64)))
        return cls(
            trust_domain=trust_domain,
            x509_authorities=tuple(certs),
            sequence=int(data.get("spiffe_sequence", 0)),
            refresh_hint_seconds=int(data.get("spiffe_refresh_hint", 300)),
        )
