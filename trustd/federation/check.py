"""The checks every foreign bundle passes before it is trusted (bootstrap or refreshed).

- it is a SPIFFE bundle document (a JWK set) with at least one key;
- every ``x509-svid`` authority is a CA certificate (basicConstraints cA=true),
  and one that names a trust domain (a SPIFFE URI SAN, as trustd's and SPIRE's
  CAs do) names the expected one: a bundle endpoint that serves another trust
  domain's bundle is refused;
- every ``jwt-svid`` key has a ``kid`` and an EC or RSA public key;
- its ``spiffe_sequence`` is not below the last good bundle's.
"""

from __future__ import annotations

import json

from cryptography import x509

from trustd import urisan
from trustd.bundle import Bundle
from trustd.federation.errors import (
    EMPTY,
    MALFORMED,
    NOT_CA,
    SEQUENCE_REGRESSED,
    WRONG_TRUST_DOMAIN,
    BundleRefusedError,
)
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain

MAX_BUNDLE_BYTES = 1024 * 1024  # far above any real bundle


def parse_bundle(trust_domain: TrustDomain, document: bytes | str) -> Bundle:
    """A SPIFFE bundle document (or PEM CA certificates) as a checked ``Bundle``."""
    raw = document.encode() if isinstance(document, str) else document
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleRefusedError(MALFORMED, f"the bundle of {trust_domain} is above 1 MiB")
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            certs = tuple(x509.load_pem_x509_certificates(raw))
        except ValueError:
            raise BundleRefusedError(
                MALFORMED, f"the bundle of {trust_domain} is not PEM certificates"
            ) from None
        bundle = Bundle(trust_domain=trust_domain, x509_authorities=certs, sequence=0)
    else:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("keys", []), list):
                raise ValueError("not a JWK set")
            seq = doc.get("spiffe_sequence", 0)
            hint = doc.get("spiffe_refresh_hint", 300)
            if not isinstance(seq, int) or seq < 0 or not isinstance(hint, int) or hint < 0:
                raise ValueError("spiffe_sequence and spiffe_refresh_hint must be integers >= 0")
            bundle = Bundle.from_spiffe(trust_domain, raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BundleRefusedError(
                MALFORMED,
                f"the bundle of {trust_domain} is not a SPIFFE bundle document "
                f"(a JWK set with spiffe_sequence): {str(exc)[:200]}",
            ) from None
    check_bundle(bundle)
    return bundle


def check_bundle(bundle: Bundle, previous: Bundle | None = None) -> None:
    """Raise ``BundleRefusedError`` unless ``bundle`` may replace ``previous``."""
    td = bundle.trust_domain
    if not bundle.x509_authorities and not bundle.jwt_authorities:
        raise BundleRefusedError(EMPTY, f"the bundle of {td} has no key")
    for cert in bundle.x509_authorities:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise BundleRefusedError(
                NOT_CA,
                f"an x509-svid authority in the bundle of {td} is not a CA certificate "
                f"(serial {cert.serial_number:x})",
            )
        for uri in urisan.uri_sans(cert):
            try:
                named = SpiffeId.parse(uri).trust_domain
            except InvalidSpiffeIdError:
                continue
            if named != td:
                raise BundleRefusedError(
                    WRONG_TRUST_DOMAIN,
                    f"the bundle for {td} holds a CA of trust domain {named}: "
                    "it is another trust domain's bundle",
                )
    if previous is not None and bundle.sequence < previous.sequence:
        raise BundleRefusedError(
            SEQUENCE_REGRESSED,
            f"the bundle of {td} has spiffe_sequence {bundle.sequence}, below the last good "
            f"{previous.sequence}: kept the last good bundle",
        )
