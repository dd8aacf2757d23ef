"""X.509-SVIDs as SPEC §4 and the SPIFFE X.509-SVID rules say, checked by parsing what is issued."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from ca_helpers import (
    CSR_FIXTURES,
    WEB,
    CaRig,
    aki_of,
    issue,
    leaf_pem,
    make_csr,
    make_rig,
    openssl_verify,
    ski_of,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from trustd.ca import der
from trustd.ca.errors import InvalidCsrError, InvalidTtlError, SigningError
from trustd.ca.issuer import (
    BACKDATE,
    MAX_CSR_BYTES,
    SigningAuthority,
    SvidTemplate,
    X509Issuer,
    load_csr,
)
from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.errors import InvalidArgumentError
from trustd.spiffeid import SpiffeId


@pytest.fixture(scope="module")
def rig() -> CaRig:
    return make_rig()


@pytest.fixture(scope="module")
def svid_cert(rig: CaRig) -> x509.Certificate:
    return issue(rig, record=False).certificate


def _fixture(name: str) -> bytes:
    return (CSR_FIXTURES / name).read_bytes()


# -- the shape of an X.509-SVID ---------------------------------------------------------


def test_exactly_one_uri_san_and_it_is_the_entry_id(svid_cert: x509.Certificate) -> None:
    san = svid_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert len(list(san)) == 1


def test_subject_is_empty_so_the_san_is_critical(svid_cert: x509.Certificate) -> None:
    assert svid_cert.subject == x509.Name([])
    assert svid_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_basic_constraints_ca_false_and_critical(svid_cert: x509.Certificate) -> None:
    ext = svid_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca is False
    assert ext.value.path_length is None


def _usage(cert: x509.Certificate) -> dict[str, bool]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ]
    return {n: getattr(ku, n) for n in names if getattr(ku, n)}


def test_key_usage_is_digital_signature_only_for_ec_keys(svid_cert: x509.Certificate) -> None:
    assert svid_cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert _usage(svid_cert) == {"digital_signature": True}


def test_key_usage_adds_key_encipherment_for_rsa_keys(rig: CaRig) -> None:
    cert = issue(rig, _fixture("rsa-2048.pem"), record=False).certificate
    assert _usage(cert) == {"digital_signature": True, "key_encipherment": True}


def test_eku_is_server_and_client_auth(svid_cert: x509.Certificate) -> None:
    eku = svid_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert len(list(eku)) == 2


def test_aki_is_the_ca_ski_and_ski_is_the_leaf_key_hash(
    rig: CaRig, svid_cert: x509.Certificate
) -> None:
    ca = rig.authorities.active_signer().certificate
    assert aki_of(svid_cert) == ski_of(ca)
    point = svid_cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert ski_of(svid_cert) == hashlib.sha1(point, usedforsecurity=False).digest()


def test_only_the_six_svid_extensions(svid_cert: x509.Certificate) -> None:
    assert {e.oid for e in svid_cert.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }


def test_signed_by_the_active_ca_with_ecdsa_sha256(rig: CaRig, svid_cert: x509.Certificate) -> None:
    ca = rig.authorities.active_signer().certificate
    svid_cert.verify_directly_issued_by(ca)
    assert svid_cert.issuer == ca.subject
    assert svid_cert.signature_hash_algorithm is not None
    assert svid_cert.signature_hash_algorithm.name == "sha256"
    assert svid_cert.version is x509.Version.v3


def test_not_before_is_backdated_and_default_ttl_is_one_hour() -> None:
    rig = make_rig()
    now = rig.clock.now()
    cert = issue(rig, record=False).certificate
    assert cert.not_valid_before_utc == now - BACKDATE
    assert dt.timedelta(seconds=10) == BACKDATE
    assert cert.not_valid_after_utc == now + dt.timedelta(hours=1)


def test_entry_ttl_is_used() -> None:
    rig = make_rig()
    cert = issue(rig, ttl=dt.timedelta(minutes=5), record=False).certificate
    assert cert.not_valid_after_utc == rig.clock.now() + dt.timedelta(minutes=5)


def test_configured_default_ttl_is_used() -> None:
    rig = make_rig(default_ttl=dt.timedelta(minutes=20))
    cert = issue(rig, record=False).certificate
    assert cert.not_valid_after_utc == rig.clock.now() + dt.timedelta(minutes=20)


def test_svid_never_outlives_its_ca() -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=2))
    ca = rig.authorities.active_signer().certificate
    rig.clock.advance(dt.timedelta(hours=1, minutes=30))
    cert = issue(rig, ttl=dt.timedelta(hours=1), record=False).certificate
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    assert rig.clock.now() + dt.timedelta(hours=1) > ca.not_valid_after_utc


def test_not_before_never_precedes_the_ca() -> None:
    rig = make_rig()
    ca = rig.authorities.active_signer().certificate
    cert = issue(rig, record=False).certificate  # CA made this very second
    assert cert.not_valid_before_utc >= ca.not_valid_before_utc


def test_expired_ca_signs_nothing() -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=2))
    rig.clock.advance(dt.timedelta(hours=3))
    with pytest.raises(SigningError, match="expired"):
        issue(rig, record=False)


@pytest.mark.parametrize(
    "ttl",
    [dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(hours=-2)],
    ids=["zero", "minus-1s", "minus-2h"],
)
def test_non_positive_ttl_is_refused(rig: CaRig, ttl: dt.timedelta) -> None:
    with pytest.raises(InvalidTtlError, match="ttl must be positive"):
        issue(rig, ttl=ttl, record=False)


def test_ttl_above_the_maximum_is_refused(rig: CaRig) -> None:
    with pytest.raises(InvalidTtlError) as err:
        issue(rig, ttl=dt.timedelta(hours=24, seconds=1), record=False)
    assert "above the server maximum 1d" in str(err.value)
    assert isinstance(err.value, InvalidArgumentError)
    issue(rig, ttl=dt.timedelta(hours=24), record=False)  # exactly the maximum is fine


def test_serials_are_random_positive_and_at_most_20_octets(rig: CaRig) -> None:
    serials = [issue(rig, record=False).certificate.serial_number for _ in range(50)]
    assert len(set(serials)) == 50
    assert all(0 < s < 2**159 for s in serials)
    assert max(s.bit_length() for s in serials) > 100  # random, not a counter


# -- what third parties make of it ------------------------------------------------------


def test_openssl_verifies_it_strictly_against_the_bundle(
    rig: CaRig, svid_cert: x509.Certificate, tmp_path: Path
) -> None:
    bundle = rig.authorities.bundle().to_pem()
    leaf = svid_cert.public_bytes(serialization.Encoding.PEM)
    for purpose in ("sslclient", "sslserver"):
        result = openssl_verify(
            tmp_path, bundle, leaf, at=rig.clock.now(), extra=["-purpose", purpose]
        )
        assert result.returncode == 0, result.stderr + result.stdout
        assert result.stdout.strip().endswith(": OK")


def test_openssl_refuses_it_after_expiry(
    rig: CaRig, svid_cert: x509.Certificate, tmp_path: Path
) -> None:
    result = openssl_verify(
        tmp_path,
        rig.authorities.bundle().to_pem(),
        svid_cert.public_bytes(serialization.Encoding.PEM),
        at=svid_cert.not_valid_after_utc + dt.timedelta(minutes=1),
    )
    assert result.returncode != 0
    assert "expired" in (result.stdout + result.stderr)


def test_openssl_x509_text_parses_it(svid_cert: x509.Certificate) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-text"],
        input=svid_cert.public_bytes(serialization.Encoding.PEM),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert f"URI:{WEB}" in out
    assert "CA:FALSE" in out
    assert "Digital Signature" in out
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in out
    assert "Certificate Sign" not in out


def test_cryptography_client_verifier_accepts_it(rig: CaRig, svid_cert: x509.Certificate) -> None:
    store = verification.Store(list(rig.authorities.bundle().x509_authorities))
    verifier = (
        verification.PolicyBuilder().store(store).time(rig.clock.now()).build_client_verifier()
    )
    verified = verifier.verify(svid_cert, [])
    assert verified.subjects == [x509.UniformResourceIdentifier(WEB)]


def test_chain_pem_is_what_cryptography_writes(rig: CaRig) -> None:
    svid = issue(rig, record=False)
    expected = b"".join(
        x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM)
        for d in svid.chain_der
    )
    assert svid.chain_pem() == expected
    chain = x509.load_pem_x509_certificates(svid.chain_pem())
    assert chain[0] == svid.certificate
    assert chain[1] == rig.authorities.active_signer().certificate


@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048], ids=["ca-p384", "ca-rsa2048"]
)
def test_other_ca_key_types_issue_verifiable_svids(algorithm: KeyAlgorithm, tmp_path: Path) -> None:
    rig = make_rig(key_algorithm=algorithm)
    cert = issue(rig, record=False).certificate
    cert.verify_directly_issued_by(rig.authorities.active_signer().certificate)
    result = openssl_verify(
        tmp_path, rig.authorities.bundle().to_pem(), leaf_pem_of(cert), at=rig.clock.now()
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert cert.signature_hash_algorithm is not None
    expected_hash = "sha384" if algorithm is KeyAlgorithm.EC_P384 else "sha256"
    assert cert.signature_hash_algorithm.name == expected_hash


def leaf_pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_leaf_aki_follows_a_ca_ski_made_another_way(tmp_path: Path) -> None:
    """An upstream CA (Vault PKI) may compute its SKI differently: leaves must still chain."""
    rig = make_rig()
    km = rig.km
    ref = km.create_key("odd-ski-ca", KeyAlgorithm.EC_P256)
    pub = km.public_key(ref)
    odd_ski = hashlib.sha256(der.spki(pub)).digest()[:20]  # not RFC 5280 method 1
    assert odd_ski != der.key_identifier(pub)
    now = rig.clock.now()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "odd ca")]).public_bytes()
    sig_alg = der.signature_algorithm(ref.algorithm)
    tbs = der.TbsCertificate(
        serial=1234,
        signature_algorithm=sig_alg,
        issuer=name,
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(hours=2),
        subject=name,
        spki=der.spki(pub),
        extensions=der.ca_extensions(
            trust_domain_id="spiffe://trustd.local", subject_key_id=odd_ski, authority_key_id=None
        ),
    ).encode()
    sig = km.sign(ref, der.digest(ref.algorithm, tbs))
    ca = x509.load_der_x509_certificate(der.assemble_certificate(tbs, sig_alg, sig))
    signer = SigningAuthority.build(
        authority_id="odd", key_ref=ref, certificate=ca, upstream_chain=()
    )
    _, leaf_pub = load_csr(make_csr())
    [svid] = rig.issuer.sign(
        signer,
        [
            SvidTemplate(
                spiffe_id=SpiffeId.parse(WEB),
                public_key=leaf_pub,
                not_before=now,
                not_after=now + dt.timedelta(hours=1),
            )
        ],
    )
    assert aki_of(svid.certificate) == odd_ski
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    result = openssl_verify(tmp_path, ca_pem, leaf_pem(svid), at=now)
    assert result.returncode == 0, result.stderr + result.stdout


# -- the identity comes from the entry, never from the CSR ------------------------------


def test_csr_asking_for_another_identity_ca_powers_and_extras_gets_none_of_it(rig: CaRig) -> None:
    csr_pem = _fixture("ec-p256-asks-for-everything.pem")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert len(list(csr.extensions)) == 5  # the fixture really asks for all of it
    cert = issue(rig, csr_pem, record=False).certificate
    assert cert.public_key() == csr.public_key()  # only the key came through
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert _usage(cert) == {"digital_signature": True}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CODE_SIGNING not in eku
    assert len(list(cert.extensions)) == 6
    assert b"evil" not in cert.public_bytes(serialization.Encoding.DER)


def test_entry_dns_names_follow_the_one_uri_san(rig: CaRig) -> None:
    cert = issue(rig, dns_names=("web.shop.svc", "web"), record=False).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert san.get_values_for_type(x509.DNSName) == ["web.shop.svc", "web"]


def test_p384_and_der_csrs_are_accepted(rig: CaRig) -> None:
    cert = issue(rig, _fixture("ec-p384.pem"), record=False).certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    der_csr = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)
    _, pub = load_csr(der_csr)
    assert isinstance(pub, ec.EllipticCurvePublicKey)


# -- refused CSRs: each its own case ----------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "why"),
    [
        ("rsa-1024.pem", "RSA key is 1024 bits; use at least 2048"),
        ("ec-p192.pem", "curve secp192r1; use P-256"),
        ("ec-p224.pem", "curve secp224r1; use P-256"),
        ("ec-p521.pem", "curve secp521r1; use P-256"),
        ("ec-secp256k1.pem", "curve secp256k1; use P-256"),
        ("ed25519.pem", "Ed25519PublicKey is not supported; use ECDSA P-256"),
    ],
)
def test_weak_or_unsupported_keys_are_refused_with_a_clear_error(fixture: str, why: str) -> None:
    with pytest.raises(InvalidCsrError) as err:
        load_csr(_fixture(fixture))
    assert why in str(err.value)


def test_garbage_pem_csr_is_refused() -> None:
    with pytest.raises(InvalidCsrError, match="not a valid PKCS#10 request"):
        load_csr(_fixture("garbage.pem"))


def test_garbage_binary_csr_is_refused() -> None:
    with pytest.raises(InvalidCsrError, match="not a valid PKCS#10 request"):
        load_csr(_fixture("garbage.der"))


def test_empty_csr_is_refused() -> None:
    with pytest.raises(InvalidCsrError, match="empty"):
        load_csr(b"")


def test_a_certificate_is_not_a_csr(svid_cert: x509.Certificate) -> None:
    with pytest.raises(InvalidCsrError, match="not a valid PKCS#10 request"):
        load_csr(svid_cert.public_bytes(serialization.Encoding.PEM))


def _big_but_valid_csr(size: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x00" * size
            ),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_csr_over_64_kib_is_refused_before_parsing() -> None:
    big = _big_but_valid_csr(MAX_CSR_BYTES)
    assert len(big) > MAX_CSR_BYTES
    x509.load_der_x509_csr(big)  # it is a well-formed request: only its size is wrong
    with pytest.raises(InvalidCsrError, match=f"the limit is {MAX_CSR_BYTES}"):
        load_csr(big)


def test_csr_just_under_the_limit_is_accepted() -> None:
    csr = _big_but_valid_csr(MAX_CSR_BYTES - 400)
    assert len(csr) <= MAX_CSR_BYTES
    load_csr(csr)


def test_csr_with_a_flipped_signature_byte_is_refused() -> None:
    good = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)
    load_csr(good)
    bad = bytearray(good)
    bad[-1] ^= 0x01
    with pytest.raises(InvalidCsrError, match="signature does not verify"):
        load_csr(bytes(bad))


def test_checked_in_badly_signed_csr_is_refused() -> None:
    with pytest.raises(InvalidCsrError, match="signature does not verify"):
        load_csr(_fixture("ec-p256-bad-signature.pem"))


def test_csr_with_a_changed_body_is_refused() -> None:
    """Swapping the public key for another one breaks the self-signature."""
    csr_a = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    point_a = (
        x509.load_der_x509_csr(csr_a)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    point_b = other.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    swapped = csr_a.replace(point_a, point_b)
    assert swapped != csr_a
    with pytest.raises(InvalidCsrError, match="signature does not verify"):
        load_csr(swapped)


def test_sha1_signed_csr_is_refused() -> None:
    with pytest.raises(InvalidCsrError, match="signed with sha1; sign it with SHA-256"):
        load_csr(_fixture("ec-p256-sha1.pem"))


# -- every certificate is verified against the CA key -----------------------------------


class WrongSignatureKeyManager:
    """A key manager that signs with the wrong key (a broken or hostile KMS)."""

    kind = "memory"

    def __init__(self, real: MemoryKeyManager, *, bad_index: int | None = None) -> None:
        self.real = real
        self.other = ec.generate_private_key(ec.SECP256R1())
        self.bad_index = bad_index  # in sign_many; None: every signature is wrong

    def _wrong(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils

        return self.other.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        return self.real.create_key(name, algorithm)

    def public_key(self, ref: KeyRef) -> PublicKey:
        return self.real.public_key(ref)

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return self._wrong(digest)

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        out = self.real.sign_many(ref, digests)
        for i in range(len(out)):
            if self.bad_index is None or i == self.bad_index:
                out[i] = self._wrong(digests[i])
        return out

    def retire(self, ref: KeyRef) -> None:
        self.real.retire(ref)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


def _templates(n: int, now: dt.datetime) -> list[SvidTemplate]:
    out = []
    for _ in range(n):
        _, pub = load_csr(make_csr())
        out.append(
            SvidTemplate(
                spiffe_id=SpiffeId.parse(WEB),
                public_key=pub,
                not_before=now,
                not_after=now + dt.timedelta(hours=1),
            )
        )
    return out


def test_wrong_signature_from_the_key_manager_is_a_signing_error() -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    issuer = X509Issuer(
        key_manager=WrongSignatureKeyManager(real),
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    signer = rig.authorities.active_signer()
    result: object = "untouched"
    with pytest.raises(SigningError, match="does not verify under the CA key; nothing was issued"):
        result = issuer.sign(signer, _templates(1, rig.clock.now()))
    assert result == "untouched"


def test_one_wrong_signature_in_a_batch_fails_the_whole_batch() -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    issuer = X509Issuer(
        key_manager=WrongSignatureKeyManager(real, bad_index=2),
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    with pytest.raises(SigningError):
        issuer.sign(rig.authorities.active_signer(), _templates(4, rig.clock.now()))


class ShortBatchKeyManager(WrongSignatureKeyManager):
    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return self.real.sign_many(ref, digests)[:-1]


def test_wrong_number_of_signatures_is_a_signing_error() -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    issuer = X509Issuer(
        key_manager=ShortBatchKeyManager(real),
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    with pytest.raises(SigningError, match="wrong number of signatures"):
        issuer.sign(rig.authorities.active_signer(), _templates(3, rig.clock.now()))


class GarbageSignatureKeyManager(WrongSignatureKeyManager):
    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return b"\x30\x03\x02\x01\x01"


def test_malformed_signature_from_the_key_manager_is_a_signing_error() -> None:
    real = MemoryKeyManager()
    rig = make_rig(km=real)
    issuer = X509Issuer(
        key_manager=GarbageSignatureKeyManager(real),
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    with pytest.raises(SigningError):
        issuer.sign(rig.authorities.active_signer(), _templates(1, rig.clock.now()))
