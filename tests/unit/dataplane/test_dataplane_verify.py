"""The strict peer SVID check, against the checked-in bad certificates in tests/data/dataplane."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.dataplane.errors import PeerRejectedError
from trustd.dataplane.verify import PeerRole, check_peer_svid
from trustd.spiffeid import SpiffeId, TrustDomain

DATA = Path(__file__).resolve().parents[2] / "data" / "dataplane"
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
TD = TrustDomain.parse("trustd.local")
EVIL = TrustDomain.parse("evil.example")


def der(name: str) -> bytes:
    cert = x509.load_pem_x509_certificate((DATA / name).read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


CA = der("ca.pem")
OTHER_CA = der("other-td-ca.pem")
BUNDLES = {TD: (CA,)}


def check(
    name: str,
    *,
    role: PeerRole = PeerRole.CLIENT,
    anchor: bytes = CA,
    bundles: Any = None,
    now: dt.datetime = NOW,
) -> SpiffeId:
    return check_peer_svid(
        der(f"{name}.pem"),
        verified_chain_der=(der(f"{name}.pem"), anchor),
        bundles=BUNDLES if bundles is None else bundles,
        now=now,
        role=role,
    )


def test_a_good_svid_passes_both_ways() -> None:
    expected = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/frontend")
    assert check("good") == expected
    assert check("good", role=PeerRole.SERVER) == expected


@pytest.mark.parametrize(
    ("fixture", "code", "fragment"),
    [
        ("ca-leaf", "ca_leaf", "cA=true"),
        ("two-uri-sans", "uri_san_count", "2 URI SANs"),
        ("dns-spiffe-san", "spiffe_shaped_san", "DNSName shaped like a spiffe id"),
        ("dns-spiffe-san-and-uri", "spiffe_shaped_san", "only a URI SAN may carry one"),
        ("no-uri-san", "uri_san_count", "0 URI SANs"),
        ("expired", "expired", "has expired"),
        ("no-eku", "eku", "no extended key usage"),
        ("server-only-eku", "eku", "does not allow clientAuth"),
        ("foreign-id", "untrusted_trust_domain", "evil.example is not trusted"),
    ],
)
def test_bad_client_certificates_are_refused(fixture: str, code: str, fragment: str) -> None:
    with pytest.raises(PeerRejectedError) as err:
        check(fixture)
    assert err.value.code == code
    assert fragment in str(err.value)


def test_untrusted_trust_domain_is_refused() -> None:
    with pytest.raises(PeerRejectedError) as err:
        check("untrusted-td", anchor=OTHER_CA)
    assert err.value.code == "untrusted_trust_domain"


def test_a_ca_cannot_vouch_for_another_trust_domain() -> None:
    # Both trust domains are trusted, but trustd.local's CA signed an evil.example ID.
    bundles = {TD: (CA,), EVIL: (OTHER_CA,)}
    with pytest.raises(PeerRejectedError) as err:
        check("foreign-id", bundles=bundles, anchor=CA)
    assert err.value.code == "wrong_trust_domain_anchor"
    assert check("untrusted-td", bundles=bundles, anchor=OTHER_CA).trust_domain == EVIL


def test_server_eku_is_required_of_servers() -> None:
    assert check("server-only-eku", role=PeerRole.SERVER).path == "/ns/shop/sa/frontend"


def test_not_yet_valid_is_refused() -> None:
    with pytest.raises(PeerRejectedError) as err:
        check("good", now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert err.value.code == "not_yet_valid"


def test_no_certificate_and_garbage_are_refused() -> None:
    with pytest.raises(PeerRejectedError) as err:
        check_peer_svid(None, verified_chain_der=(), bundles=BUNDLES, now=NOW, role=PeerRole.CLIENT)
    assert err.value.code == "no_certificate"
    with pytest.raises(PeerRejectedError) as err:
        check_peer_svid(
            b"junk", verified_chain_der=(), bundles=BUNDLES, now=NOW, role=PeerRole.CLIENT
        )
    assert err.value.code == "bad_certificate"


def test_missing_verified_chain_is_refused() -> None:
    with pytest.raises(PeerRejectedError) as err:
        check_peer_svid(
            der("good.pem"), verified_chain_der=(), bundles=BUNDLES, now=NOW, role=PeerRole.CLIENT
        )
    assert err.value.code == "wrong_trust_domain_anchor"
