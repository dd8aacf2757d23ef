"""Regenerate the bad-peer-certificate fixtures: ``python tests/data/dataplane/make_fixtures.py``.

Everything is signed by ``ca.pem`` (trust domain ``trustd.local``) except
``other-td-ca.pem`` and ``untrusted-td.pem`` (trust domain ``evil.example``).
Leaves are valid 2025-01-01 to 2125-01-01 unless their name says otherwise.
Keys are written next to the certificates for the handshake tests; they are
throwaway test keys.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: dataplane_testing

from dataplane_testing import ThrowawayCA

HERE = Path(__file__).parent
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CENTURY = dt.timedelta(days=36500)
GOOD = "spiffe://trustd.local/ns/shop/sa/frontend"


def main() -> None:
    ca = ThrowawayCA("trustd.local", now=START, ttl=CENTURY)
    other = ThrowawayCA("evil.example", now=START, ttl=CENTURY)
    (HERE / "ca.pem").write_bytes(ca.cert_pem)
    (HERE / "other-td-ca.pem").write_bytes(other.cert_pem)
    cases = {
        "good": ca.issue(GOOD, not_before=START, ttl=CENTURY),
        "ca-leaf": ca.issue(GOOD, not_before=START, ttl=CENTURY, ca=True),
        "two-uri-sans": ca.issue(
            GOOD,
            not_before=START,
            ttl=CENTURY,
            extra_uris=["spiffe://trustd.local/ns/shop/sa/admin"],
        ),
        "dns-spiffe-san": ca.issue(
            GOOD,
            not_before=START,
            ttl=CENTURY,
            uri_san=False,
            dns_names=["spiffe://trustd.local/ns/shop/sa/admin"],
        ),
        "dns-spiffe-san-and-uri": ca.issue(
            GOOD,
            not_before=START,
            ttl=CENTURY,
            dns_names=["spiffe://trustd.local/ns/shop/sa/admin"],
        ),
        "expired": ca.issue(
            GOOD, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), ttl=dt.timedelta(days=1)
        ),
        "no-uri-san": ca.issue(
            GOOD, not_before=START, ttl=CENTURY, uri_san=False, dns_names=["frontend"]
        ),
        "server-only-eku": ca.issue(
            GOOD, not_before=START, ttl=CENTURY, eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
        "no-eku": ca.issue(GOOD, not_before=START, ttl=CENTURY, eku=None),
        "foreign-id": ca.issue(
            "spiffe://evil.example/ns/shop/sa/frontend", not_before=START, ttl=CENTURY
        ),
        "untrusted-td": other.issue(
            "spiffe://evil.example/ns/shop/sa/frontend", not_before=START, ttl=CENTURY
        ),
    }
    for name, svid in cases.items():
        (HERE / f"{name}.pem").write_bytes(svid.cert.public_bytes(serialization.Encoding.PEM))
        (HERE / f"{name}.key").write_bytes(svid.key_pem)


if __name__ == "__main__":
    main()
