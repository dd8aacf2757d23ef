"""Chain building and answer checks of the vault-pki upstream, on certificates made here.
(Kept beside the KMS unit tests because both share the Vault plumbing; the real
OpenBao behaviour is in tests/integration/kms/test_upstream_vault_pki.py.)"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustd.ca.upstream.errors import UpstreamBadResponseError
from trustd.ca.upstream.vault_pki import VaultPkiUpstream, build_chain
from trustd.errors import ConfigError, FailedPreconditionError

NOW = dt.datetime.now(dt.UTC)


def make_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = True,
    uri: str | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=1))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, x509.Certificate]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    int_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "root": make_cert("root", root_key),
        "int": make_cert("int", int_key, ("root", root_key)),
        "leaf": make_cert("trustd", leaf_key, ("int", int_key), uri="spiffe://trustd.local"),
        "other": make_cert("other", other_key),
        # same subject as the real intermediate, different key: must not be picked
        "impostor": make_cert("int", other_key, ("root", root_key)),
    }


def test_chain_is_ordered_by_signature_and_root_split_off(pki: dict[str, x509.Certificate]) -> None:
    chain, roots = build_chain(
        pki["leaf"], [pki["other"], pki["root"], pki["impostor"], pki["int"], pki["leaf"]]
    )
    assert chain == (pki["leaf"], pki["int"])
    assert roots == (pki["root"],)


def test_leaf_signed_by_root_has_a_chain_of_one(pki: dict[str, x509.Certificate]) -> None:
    chain, roots = build_chain(pki["int"], [pki["root"]])
    assert chain == (pki["int"],)
    assert roots == (pki["root"],)


def test_chain_without_root_trusts_its_top_certificate(pki: dict[str, x509.Certificate]) -> None:
    chain, roots = build_chain(pki["leaf"], [pki["int"]])
    assert chain == (pki["leaf"],)
    assert roots == (pki["int"],)


def test_no_issuer_at_all_is_a_bad_response(pki: dict[str, x509.Certificate]) -> None:
    with pytest.raises(FailedPreconditionError, match="no certificate that signed"):
        build_chain(pki["leaf"], [pki["other"]])


def _upstream() -> VaultPkiUpstream:
    return VaultPkiUpstream(address="http://127.0.0.1:1", token="t")


def _csr(key: ec.EllipticCurvePrivateKey, uri: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def test_answer_for_another_key_is_refused() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("trustd", other, uri="spiffe://trustd.local")
    with pytest.raises(UpstreamBadResponseError, match="another public key"):
        _upstream()._verify(cert, _csr(key, "spiffe://trustd.local"), ["spiffe://trustd.local"])


def test_answer_that_is_not_a_ca_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("trustd", key, ca=False, uri="spiffe://trustd.local")
    with pytest.raises(UpstreamBadResponseError, match="not a ca"):
        _upstream()._verify(cert, _csr(key, "spiffe://trustd.local"), ["spiffe://trustd.local"])


def test_answer_with_other_uri_sans_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("trustd", key, uri="spiffe://evil.example")
    with pytest.raises(UpstreamBadResponseError, match="uri sans"):
        _upstream()._verify(cert, _csr(key, "spiffe://trustd.local"), ["spiffe://trustd.local"])


def test_matching_answer_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("trustd", key, uri="spiffe://trustd.local")
    _upstream()._verify(cert, _csr(key, "spiffe://trustd.local"), ["spiffe://trustd.local"])


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="without a role"):
        VaultPkiUpstream(address="http://127.0.0.1:1", token="t", role="r")
    with pytest.raises(ConfigError, match="not a valid vault path"):
        VaultPkiUpstream(address="http://127.0.0.1:1", token="t", mount="a b")
    with pytest.raises(ConfigError, match="not a valid issuer"):
        VaultPkiUpstream(address="http://127.0.0.1:1", token="t", issuer="../x")
    assert (
        VaultPkiUpstream(address="http://127.0.0.1:1", token="t", issuer="next").sign_path
        == "pki/issuer/next/sign-intermediate"
    )
    assert _upstream().sign_path == "pki/root/sign-intermediate"


def test_result_not_after_is_the_earliest_end_in_the_chain() -> None:
    from trustd.ca.upstream import UpstreamResult

    root_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = make_cert("root", root_key)  # ends in 1h
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trustd")]))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(hours=5))
        .sign(root_key, hashes.SHA256())
    )
    result = UpstreamResult(chain=(leaf,), roots=(root,))
    assert result.certificate == leaf
    assert result.not_after == root.not_valid_after_utc
