"""The one reader of SPIFFE IDs out of certificates and CSRs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustd import urisan
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId

KEY = ec.generate_private_key(ec.SECP256R1())
WEB = "spiffe://trustd.local/ns/shop/sa/web"


def _cert(names: list[x509.GeneralName] | None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")]))
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if names is not None:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(KEY, hashes.SHA256())


def _csr(uris: list[str]) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return b.sign(KEY, hashes.SHA256())


def test_one_spiffe_uri_is_the_id_for_certificates_and_csrs() -> None:
    cert = _cert([x509.DNSName("web.local"), x509.UniformResourceIdentifier(WEB)])
    assert urisan.spiffe_id(cert) == SpiffeId.parse(WEB)
    assert urisan.spiffe_id(_csr([WEB])) == SpiffeId.parse(WEB)
    assert urisan.uri_sans(cert) == [WEB]


@pytest.mark.parametrize(
    ("names", "code", "words"),
    [
        (None, "uri_san_count", "has no URI SAN"),
        ([x509.DNSName("web.local")], "uri_san_count", "has no URI SAN"),
        (
            [x509.UniformResourceIdentifier(WEB), x509.UniformResourceIdentifier(WEB + "2")],
            "uri_san_count",
            "has 2 URI SANs",
        ),
        (
            [x509.UniformResourceIdentifier("https://trustd.local/x")],
            "not_spiffe",
            "not a SPIFFE ID",
        ),
        (
            [x509.UniformResourceIdentifier("spiffe://UPPER.local/x")],
            "not_spiffe",
            "not a SPIFFE ID",
        ),
    ],
)
def test_anything_else_is_refused_with_a_code(
    names: list[x509.GeneralName] | None, code: str, words: str
) -> None:
    cert = _cert(names)
    with pytest.raises(urisan.UriSanError, match=words) as err:
        urisan.spiffe_id(cert, what="the peer certificate")
    assert err.value.code == code
    assert isinstance(err.value, InvalidSpiffeIdError)  # an INVALID_ARGUMENT at the API edges
    assert "the peer certificate" in str(err.value)
    assert urisan.spiffe_id_or_none(cert) is None
