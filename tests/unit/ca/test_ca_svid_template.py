"""SVIDs built from the per-CA TBS template: byte for byte what the general encoder writes."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from ca_helpers import WEB, CaRig, issue, make_csr, make_rig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from trustd.ca import der
from trustd.ca.errors import SigningError
from trustd.ca.issuer import (
    BACKDATE,
    IssuedSvid,
    SigningAuthority,
    SvidTemplate,
    csr_spki,
    load_csr,
    new_serials,
)
from trustd.ca.kms.base import KeyAlgorithm
from trustd.spiffeid import SpiffeId

LeafKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_LEAF_KEYS: dict[str, LeafKey] = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def _csr(key: LeafKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _reference_tbs(signer: SigningAuthority, cert: x509.Certificate) -> bytes:
    """The TBSCertificate the general encoder (``TbsCertificate``, ``leaf_extensions``) writes
    for the issued certificate's serial, validity, key and SANs."""
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = san.get_values_for_type(x509.UniformResourceIdentifier)
    spki, key_id = der.spki_and_key_identifier(pub)
    return der.TbsCertificate(
        serial=cert.serial_number,
        signature_algorithm=signer.sig_alg,
        issuer=signer.issuer_der,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        subject=der.EMPTY_NAME,
        spki=spki,
        extensions=der.leaf_extensions(
            spiffe_id=uri,
            dns_names=san.get_values_for_type(x509.DNSName),
            subject_key_id=key_id,
            authority_key_id=signer.key_id,
            rsa_key=isinstance(pub, rsa.RSAPublicKey),
        ),
    ).encode()


def _assert_same_certificate_fields(built: x509.Certificate, reference: x509.Certificate) -> None:
    assert built.version is reference.version is x509.Version.v3
    assert built.serial_number == reference.serial_number
    assert built.issuer == reference.issuer
    assert built.subject == reference.subject == x509.Name([])
    assert built.not_valid_before_utc == reference.not_valid_before_utc
    assert built.not_valid_after_utc == reference.not_valid_after_utc
    assert built.public_key() == reference.public_key()
    assert built.signature_algorithm_oid == reference.signature_algorithm_oid
    assert [e.oid for e in built.extensions] == [e.oid for e in reference.extensions]
    for ext in reference.extensions:
        mine = built.extensions.get_extension_for_oid(ext.oid)
        assert mine.critical == ext.critical, ext.oid
        assert mine.value == ext.value, ext.oid


def _assert_svid_extensions(cert: x509.Certificate, signer: SigningAuthority) -> None:
    exts = cert.extensions
    assert [e.oid for e in exts] == [
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ]
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    is_rsa = isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert ku.value.key_encipherment is is_rsa
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = exts.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == signer.key_id
    assert aki.value.authority_cert_issuer is None
    san = exts.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty


@pytest.fixture(scope="module", params=list(KeyAlgorithm), ids=[a.value for a in KeyAlgorithm])
def ca(request: pytest.FixtureRequest) -> CaRig:
    return make_rig(key_algorithm=request.param)


@pytest.mark.parametrize("leaf", list(_LEAF_KEYS), ids=list(_LEAF_KEYS))
@pytest.mark.parametrize(
    ("spiffe_id", "dns_names"),
    [
        (WEB, ()),
        (WEB, ("web.shop.svc", "web")),
        (WEB + "/" + "x" * 300, ()),  # long-form DER lengths in the SAN and the TBS
    ],
    ids=["uri", "uri-and-dns", "long-id"],
)
def test_issued_svid_is_byte_for_byte_what_the_general_encoder_builds(
    ca: CaRig, leaf: str, spiffe_id: str, dns_names: tuple[str, ...]
) -> None:
    signer = ca.authorities.active_signer()
    svid = issue(ca, _csr(_LEAF_KEYS[leaf]), spiffe_id=spiffe_id, dns_names=dns_names, record=False)
    built = svid.certificate
    reference_tbs = _reference_tbs(signer, built)
    assert built.tbs_certificate_bytes == reference_tbs
    reference = x509.load_der_x509_certificate(
        der.assemble_certificate(
            reference_tbs,
            signer.sig_alg,
            ca.km.sign(signer.key_ref, der.digest(signer.key_ref.algorithm, reference_tbs)),
        )
    )
    reference.verify_directly_issued_by(signer.certificate)
    built.verify_directly_issued_by(signer.certificate)
    _assert_same_certificate_fields(built, reference)
    _assert_svid_extensions(built, signer)
    san = built.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]
    assert san.get_values_for_type(x509.DNSName) == list(dns_names)


def _sign_one(rig: CaRig, template: SvidTemplate) -> IssuedSvid:
    [svid] = rig.issuer.sign(rig.authorities.active_signer(), [template])
    return svid


@pytest.mark.parametrize("leaf", ["p256", "p384"])
def test_the_csr_own_key_bytes_give_the_same_certificate(leaf: str) -> None:
    rig = make_rig()
    signer = rig.authorities.active_signer()
    csr, pub = load_csr(_csr(_LEAF_KEYS[leaf]))
    spki = csr_spki(csr)
    assert spki == der.spki(pub)
    now = rig.clock.now()

    def template(spki: bytes | None) -> SvidTemplate:
        return SvidTemplate(
            spiffe_id=SpiffeId.parse(WEB),
            public_key=pub,
            not_before=now,
            not_after=now + dt.timedelta(hours=1),
            spki=spki,
        )

    from_csr = _sign_one(rig, template(spki)).certificate
    encoded = _sign_one(rig, template(None)).certificate
    assert from_csr.tbs_certificate_bytes == _reference_tbs(signer, from_csr)
    assert encoded.tbs_certificate_bytes == _reference_tbs(signer, encoded)
    assert from_csr.public_key() == encoded.public_key() == pub


def test_rsa_and_compressed_point_csrs_have_their_key_encoded_by_the_issuer() -> None:
    rsa_csr, _ = load_csr(_csr(_LEAF_KEYS["rsa2048"]))
    assert csr_spki(rsa_csr) is None
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    alg = der.seq(der.oid("1.2.840.10045.2.1"), der.oid("1.2.840.10045.3.1.7"))
    info = der.seq(der.integer(0), der.EMPTY_NAME, der.seq(alg, der.bit_string(point)), b"\xa0\x00")
    sig = key.sign(info, ec.ECDSA(hashes.SHA256()))
    csr, pub = load_csr(der.seq(info, der.seq(der.OID_ECDSA_SHA256), der.bit_string(sig)))
    assert csr_spki(csr) is None
    rig = make_rig()
    now = rig.clock.now()
    svid = _sign_one(
        rig,
        SvidTemplate(
            spiffe_id=SpiffeId.parse(WEB),
            public_key=pub,
            not_before=now,
            not_after=now + dt.timedelta(hours=1),
            spki=csr_spki(csr),
        ),
    )
    assert svid.certificate.public_key() == key.public_key()
    assert svid.certificate.tbs_certificate_bytes == _reference_tbs(
        rig.authorities.active_signer(), svid.certificate
    )


def test_svid_spanning_2050_matches_the_general_encoder() -> None:
    rig = make_rig(start=dt.datetime(2049, 12, 31, 23, 30, tzinfo=dt.UTC))
    cert = issue(rig, make_csr(), record=False).certificate
    assert cert.not_valid_after_utc.year == 2050
    assert cert.tbs_certificate_bytes == _reference_tbs(rig.authorities.active_signer(), cert)


def test_a_batch_with_different_validities_and_ids_keeps_each_its_own() -> None:
    rig = make_rig()
    signer = rig.authorities.active_signer()
    now = rig.clock.now()
    templates = []
    for i in range(6):
        _, pub = load_csr(make_csr())
        templates.append(
            SvidTemplate(
                spiffe_id=SpiffeId.parse(f"{WEB}-{i % 3}"),
                public_key=pub,
                not_before=now,
                not_after=now + dt.timedelta(minutes=10 * (1 + i % 2)),
                dns_names=(f"n{i}.example",) if i % 2 else (),
            )
        )
    svids = rig.issuer.sign(signer, templates)
    assert len({s.serial for s in svids}) == len(templates)
    for t, svid in zip(templates, svids, strict=True):
        cert = svid.certificate
        assert cert.tbs_certificate_bytes == _reference_tbs(signer, cert)
        assert cert.public_key() == t.public_key
        assert cert.not_valid_after_utc == t.not_after
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(t.spiffe_id)]
        assert san.get_values_for_type(x509.DNSName) == list(t.dns_names)
        assert svid.chain_pem() == b"".join(der.certificate_pem(d) for d in svid.chain_der)


def test_batched_serials_are_random_positive_and_at_most_20_octets() -> None:
    serials = new_serials(512)
    assert len(serials) == len(set(serials)) == 512
    for s in serials:
        assert 0 < s < 2**127
        assert len(der.integer(s)) - 2 <= 20
    assert max(s.bit_length() for s in serials) > 120


def _validity_reference(
    authority: SigningAuthority, now: dt.datetime, ttl: dt.timedelta
) -> tuple[dt.datetime, dt.datetime] | None:
    not_before = max(now - BACKDATE, authority.not_before)
    not_after = min(now + ttl, authority.not_after)
    if not_after <= now:
        return None
    return not_before.replace(microsecond=0), not_after.replace(microsecond=0)


def test_validity_is_the_backdated_capped_window_in_whole_seconds() -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=2))
    signer = rig.authorities.active_signer()
    rng = random.Random(5280)
    ttls = [dt.timedelta(hours=1), dt.timedelta(seconds=1), dt.timedelta(microseconds=1)]
    ttls += [dt.timedelta(seconds=rng.randrange(1, 86400), microseconds=rng.randrange(10**6))]
    moments = [signer.not_before, signer.not_before - dt.timedelta(seconds=3), signer.not_after]
    moments += [signer.not_after - dt.timedelta(microseconds=1)]
    for _ in range(300):
        span = (signer.not_after - signer.not_before).total_seconds() + 60
        offset = dt.timedelta(seconds=rng.uniform(-30, span), microseconds=rng.randrange(10**6))
        moments.append(signer.not_before + offset)
    for now in moments:
        for ttl in ttls:
            expected = _validity_reference(signer, now, ttl)
            if expected is None:
                with pytest.raises(SigningError, match="the active CA has expired"):
                    rig.issuer.validity(signer, now, ttl)
            else:
                assert rig.issuer.validity(signer, now, ttl) == expected, (now, ttl)
