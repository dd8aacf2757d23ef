"""The hand-written DER encoder, checked against cryptography's parser and encoder."""

from __future__ import annotations

import datetime as dt

import pytest
from ca_helpers import WEB, issue, make_rig
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.ca import der


@pytest.mark.parametrize("n", [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 70000])
def test_lengths_are_minimal_der(n: int) -> None:
    body = b"\x00" * n
    encoded = der.tlv(0x04, body)
    tag, start, end = der.read_tlv(encoded, 0)
    assert (tag, end - start, end) == (0x04, n, len(encoded))
    if n < 0x80:
        assert encoded[1] == n
    else:
        count = encoded[1] & 0x7F
        assert encoded[2] != 0  # no leading zero octet in the length
        assert int.from_bytes(encoded[2 : 2 + count], "big") == n


@pytest.mark.parametrize("value", [0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**127, 2**159 - 1])
def test_integers_are_minimal_and_positive(value: int) -> None:
    encoded = der.integer(value)
    body = encoded[2:]
    assert int.from_bytes(body, "big", signed=True) == value
    assert body[0] < 0x80  # positive
    if len(body) > 1:
        assert not (body[0] == 0 and body[1] < 0x80)  # no redundant leading zero


def test_negative_integers_are_not_encoded() -> None:
    with pytest.raises(ValueError, match="negative"):
        der.integer(-1)


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        ("2.5.29.17", "0603551d11"),
        ("1.2.840.10045.4.3.2", "06082a8648ce3d040302"),
        ("1.3.6.1.5.5.7.3.1", "06082b06010505070301"),
    ],
)
def test_object_identifiers(dotted: str, expected: str) -> None:
    assert der.oid(dotted).hex() == expected


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    ],
    ids=["p256", "p384", "rsa2048"],
)
def test_spki_and_key_identifier_agree_with_the_slow_path(
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> None:
    spki, key_id = der.spki_and_key_identifier(key)
    assert spki == key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id == der.key_identifier(key)
    assert len(key_id) == 20


def test_certificate_pem_matches_cryptography() -> None:
    svid = issue(make_rig(), record=False)
    for d in svid.chain_der:
        cert = x509.load_der_x509_certificate(d)
        assert der.certificate_pem(d) == cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("when", "tag"),
    [
        (dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC), 0x17),  # UTCTime up to 2049
        (dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.UTC), 0x18),  # GeneralizedTime from 2050
        (dt.datetime(2026, 3, 1, 7, 5, 9, tzinfo=dt.timezone(dt.timedelta(hours=2))), 0x17),
    ],
)
def test_times_use_the_rfc5280_encoding(when: dt.datetime, tag: int) -> None:
    encoded = der._time(when)
    assert encoded[0] == tag
    text = encoded[2:].decode()
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    parsed = dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
    assert parsed == when


def test_svid_spanning_2050_has_the_right_validity() -> None:
    start = dt.datetime(2049, 12, 31, 23, 30, tzinfo=dt.UTC)
    rig = make_rig(start=start)
    cert = issue(rig, record=False).certificate
    assert cert.not_valid_before_utc.year == 2049
    assert cert.not_valid_after_utc == start + dt.timedelta(hours=1)
    assert cert.not_valid_after_utc.year == 2050


def test_long_spiffe_ids_need_long_form_lengths() -> None:
    long_id = WEB + "/" + "x" * 300
    cert = issue(make_rig(), spiffe_id=long_id, record=False).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [long_id]
