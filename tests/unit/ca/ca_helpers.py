"""A real CA for tests: SQLite store, in-memory key manager, fake clock, and ways to check its output."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.issuer import IssuedSvid, SvidTemplate, X509Issuer, load_csr
from trustd.ca.kms.base import KeyAlgorithm, KeyManager
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import LedgerRecord
from trustd.store.sqlite import SqliteStore

CSR_FIXTURES = Path(__file__).resolve().parents[2] / "data" / "csr"
TD = TrustDomain.parse("trustd.local")
WEB = "spiffe://trustd.local/ns/shop/sa/web"
START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@dataclass
class CaRig:
    clock: FakeClock  # moves only when a test says so
    store: SqliteStore  # in memory unless a path was given
    km: KeyManager  # holds the CA keys
    authorities: AuthorityManager  # the slots
    issuer: X509Issuer  # signs leaves with the active slot


def make_rig(
    *,
    ca_ttl: dt.timedelta = dt.timedelta(hours=24),
    key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
    km: KeyManager | None = None,
    default_ttl: dt.timedelta = dt.timedelta(hours=1),
    max_ttl: dt.timedelta = dt.timedelta(hours=24),
    store_path: str | Path = ":memory:",
    start: dt.datetime = START,
    activate: bool = True,
) -> CaRig:
    clock = FakeClock(start)
    store = SqliteStore(store_path)
    km = km if km is not None else MemoryKeyManager()
    authorities = AuthorityManager(
        store=store,
        key_manager=km,
        trust_domain=TD,
        schedule=RotationSchedule(ca_ttl=ca_ttl, key_algorithm=key_algorithm),
        clock=clock,
    )
    if activate:
        authorities.ensure_active()
    issuer = X509Issuer(key_manager=km, default_ttl=default_ttl, max_ttl=max_ttl)
    return CaRig(clock=clock, store=store, km=km, authorities=authorities, issuer=issuer)


def make_csr(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A plain PEM CSR with an empty subject, as an agent sends it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def issue(
    rig: CaRig,
    csr: bytes | None = None,
    *,
    spiffe_id: str = WEB,
    ttl: dt.timedelta | None = None,
    dns_names: Sequence[str] = (),
    entry_id: str | None = "entry-web",
    record: bool = True,
) -> IssuedSvid:
    """CSR to SVID the way ServerCore does it, and (by default) written to the ledger."""
    signer = rig.authorities.active_signer()
    now = rig.clock.now()
    _, pub = load_csr(csr if csr is not None else make_csr())
    not_before, not_after = rig.issuer.validity(signer, now, ttl)
    [svid] = rig.issuer.sign(
        signer,
        [
            SvidTemplate(
                spiffe_id=SpiffeId.parse(spiffe_id),
                public_key=pub,
                not_before=not_before,
                not_after=not_after,
                dns_names=tuple(dns_names),
            )
        ],
    )
    if record:
        rig.store.record_issued(
            LedgerRecord(
                serial=svid.serial,
                spiffe_id=str(svid.spiffe_id),
                not_after=svid.not_after,
                authority_id=svid.authority_id,
                caller="test",
                entry_id=entry_id,
                issued_at=now,
            )
        )
    return svid


def leaf_pem(svid: IssuedSvid) -> bytes:
    return svid.certificate.public_bytes(serialization.Encoding.PEM)


def openssl_verify(
    tmp_path: Path,
    bundle_pem: bytes,
    leaf: bytes,
    *,
    at: dt.datetime,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``openssl verify -x509_strict`` of a leaf against a bundle, at a given time."""
    bundle_file = tmp_path / "bundle.pem"
    leaf_file = tmp_path / "leaf.pem"
    bundle_file.write_bytes(bundle_pem)
    leaf_file.write_bytes(leaf)
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-attime",
            str(int(at.timestamp())),
            *extra,
            "-CAfile",
            str(bundle_file),
            str(leaf_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def ski_of(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def aki_of(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
