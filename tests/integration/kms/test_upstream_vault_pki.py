"""VaultPkiUpstream against a real `bao server -dev` with a generated PKI root."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kms_peers import BaoDevServer

from trustd.ca.upstream import UpstreamAuthority, UpstreamResult
from trustd.ca.upstream.vault_pki import VaultPkiUpstream
from trustd.errors import ConfigError, InvalidArgumentError, PermissionDeniedError, UnavailableError

pytestmark = pytest.mark.integration

SPIFFE_TD = "spiffe://trustd.local"


def make_csr(key: ec.EllipticCurvePrivateKey, uri: str = SPIFFE_TD) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def spki(public: object) -> bytes:
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def mount_root(bao: BaoDevServer, mount: str = "pki") -> x509.Certificate:
    pem = bao.client().secrets.pki.read_ca_certificate(mount_point=mount)
    return x509.load_pem_x509_certificate(pem.encode())


@pytest.fixture
def upstream(bao: BaoDevServer) -> Iterator[VaultPkiUpstream]:
    u = VaultPkiUpstream(address=bao.address, token=bao.root_token)
    yield u
    u.close()


def test_upstream_satisfies_the_protocol(upstream: VaultPkiUpstream) -> None:
    assert isinstance(upstream, UpstreamAuthority)
    assert upstream.kind == "vault-pki"


def test_signs_trustd_intermediate_with_csr_key_and_spiffe_id(
    bao: BaoDevServer, upstream: VaultPkiUpstream
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    result = upstream.sign_intermediate(make_csr(key), dt.timedelta(hours=2))
    assert isinstance(result, UpstreamResult)
    cert = result.certificate
    assert result.chain == (cert,)  # signed directly by the mount's root
    assert spki(cert.public_key()) == spki(key.public_key())
    assert uri_sans(cert) == [SPIFFE_TD]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is True and bc.critical
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "trustd"
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=50) < lifetime <= dt.timedelta(hours=2, minutes=1)
    root = mount_root(bao)
    assert result.roots == (root,)
    cert.verify_directly_issued_by(root)


def test_chain_includes_an_upstream_intermediate_but_not_the_root(bao: BaoDevServer) -> None:
    """pki (root) -> pki-int (intermediate mount) -> trustd's CA."""
    root_client = bao.client()
    mounts = root_client.sys.list_mounted_secrets_engines()["data"]
    if "pki-int/" not in mounts:
        root_client.sys.enable_secrets_engine("pki", path="pki-int")
        root_client.sys.tune_mount_configuration("pki-int", max_lease_ttl="43800h")
        csr = root_client.secrets.pki.generate_intermediate(
            "internal",
            "trustd upstream test intermediate",
            extra_params={"key_type": "ec", "key_bits": 256},
            mount_point="pki-int",
        )["data"]["csr"]
        signed = root_client.secrets.pki.sign_intermediate(
            csr,
            "trustd upstream test intermediate",
            extra_params={"ttl": "43800h", "format": "pem_bundle"},
            mount_point="pki",
        )["data"]["certificate"]
        root_client.secrets.pki.set_signed_intermediate(signed, mount_point="pki-int")
    u = VaultPkiUpstream(address=bao.address, token=bao.root_token, mount="pki-int")
    try:
        u.check()
        key = ec.generate_private_key(ec.SECP256R1())
        result = u.sign_intermediate(make_csr(key), dt.timedelta(hours=1))
    finally:
        u.close()
    root = mount_root(bao, "pki")
    intermediate = mount_root(bao, "pki-int")
    assert len(result.chain) == 2
    assert result.chain[1] == intermediate
    assert result.roots == (root,)
    result.chain[0].verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert spki(result.certificate.public_key()) == spki(key.public_key())
    assert uri_sans(result.certificate) == [SPIFFE_TD]


def test_renewal_signs_a_new_certificate_for_a_new_key(upstream: VaultPkiUpstream) -> None:
    first_key = ec.generate_private_key(ec.SECP256R1())
    second_key = ec.generate_private_key(ec.SECP256R1())
    first = upstream.sign_intermediate(make_csr(first_key), dt.timedelta(hours=1))
    second = upstream.sign_intermediate(make_csr(second_key), dt.timedelta(hours=1))
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.roots == second.roots
    assert spki(second.certificate.public_key()) == spki(second_key.public_key())


def test_ttl_beyond_the_mount_limit_is_capped_and_logged(
    bao: BaoDevServer, upstream: VaultPkiUpstream
) -> None:
    """Vault caps the TTL to the mount's max lease TTL (10 years here).

    It may even sign an intermediate a few seconds past its root's end, so
    ``not_after`` is the earliest end of the whole chain.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    with structlog.testing.capture_logs() as logs:
        result = upstream.sign_intermediate(make_csr(key), dt.timedelta(days=365 * 20))
    lifetime = result.certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert lifetime <= dt.timedelta(hours=87600, minutes=1)
    assert result.not_after <= mount_root(bao).not_valid_after_utc
    assert result.not_after <= result.certificate.not_valid_after_utc
    assert any(e["event"] == "upstream shortened the ca certificate" for e in logs)


def test_garbage_csr_is_refused_before_vault_is_asked(upstream: VaultPkiUpstream) -> None:
    with pytest.raises(InvalidArgumentError, match="not a pem csr"):
        upstream.sign_intermediate(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", dt.timedelta(1))


def test_check_passes_and_reports_a_mount_without_root(bao: BaoDevServer) -> None:
    good = VaultPkiUpstream(address=bao.address, token=bao.root_token)
    root_client = bao.client()
    if "pki-empty/" not in root_client.sys.list_mounted_secrets_engines()["data"]:
        root_client.sys.enable_secrets_engine("pki", path="pki-empty")
    empty = VaultPkiUpstream(address=bao.address, token=bao.root_token, mount="pki-empty")
    missing = VaultPkiUpstream(address=bao.address, token=bao.root_token, mount="pki-missing")
    try:
        good.check()
        with pytest.raises(ConfigError):
            empty.check()
        with pytest.raises(ConfigError, match="nothing mounted"):
            missing.check()
    finally:
        good.close()
        empty.close()
        missing.close()


def test_wrong_token_is_permission_denied(bao: BaoDevServer) -> None:
    u = VaultPkiUpstream(address=bao.address, token="not-a-valid-token")
    try:
        with pytest.raises(PermissionDeniedError, match="vault rejected the token"):
            u.check()
        with pytest.raises(PermissionDeniedError, match="vault rejected the token"):
            u.sign_intermediate(
                make_csr(ec.generate_private_key(ec.SECP256R1())), dt.timedelta(hours=1)
            )
    finally:
        u.close()


def test_token_that_may_not_sign_intermediates_fails_check(bao: BaoDevServer) -> None:
    root = bao.client()
    root.sys.create_or_update_policy(
        name="pki-read-only", policy='path "pki/cert/*" { capabilities = ["read"] }'
    )
    token = root.auth.token.create(policies=["pki-read-only"], ttl="1h")["auth"]["client_token"]
    u = VaultPkiUpstream(address=bao.address, token=token)
    try:
        with pytest.raises(PermissionDeniedError, match="may not sign intermediates"):
            u.check()
        with pytest.raises(PermissionDeniedError):
            u.sign_intermediate(
                make_csr(ec.generate_private_key(ec.SECP256R1())), dt.timedelta(hours=1)
            )
    finally:
        u.close()


def test_sealed_vault_is_unavailable_with_a_clear_reason(bao_private: BaoDevServer) -> None:
    bao_private.seal()
    u = VaultPkiUpstream(address=bao_private.address, token=bao_private.root_token)
    try:
        with pytest.raises(UnavailableError, match="is sealed: unseal it"):
            u.check()
        with pytest.raises(UnavailableError, match="is sealed"):
            u.sign_intermediate(
                make_csr(ec.generate_private_key(ec.SECP256R1())), dt.timedelta(hours=1)
            )
    finally:
        u.close()


def test_role_setting_is_refused_with_the_reason(bao: BaoDevServer) -> None:
    with pytest.raises(ConfigError, match="without a role"):
        VaultPkiUpstream(address=bao.address, token=bao.root_token, role="trustd")
