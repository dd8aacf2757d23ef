"""Workload keys: made here, kept in memory, never written anywhere.

The agent sends the server only a CSR. What comes back is checked against the
key and the entry before it is served.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from trustd.agent.errors import BadSvidError
from trustd.spiffeid import SpiffeId
from trustd.urisan import uri_sans


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (SPEC §4 default)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A DER CSR carrying the SPIFFE ID as a hint; the server ignores everything but the key."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True, kw_only=True)
class Svid:
    """An X.509-SVID with its key, as the agent holds it in memory."""

    entry_id: str  # the registration entry it was issued for
    spiffe_id: SpiffeId  # the identity in its URI SAN
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)  # never logged, never on disk
    not_before: dt.datetime  # the leaf's NotBefore (UTC)
    not_after: dt.datetime  # the leaf's NotAfter (UTC)
    renew_at: dt.datetime  # when the agent asks for the next one (half life minus jitter)
    chain_pem: bytes  # PEM of ``chain``, for SDS
    chain_der: bytes  # concatenated DER of ``chain``, for the Workload API
    key_pkcs8_pem: bytes = field(repr=False)  # PKCS#8 PEM of the key, for SDS
    key_pkcs8_der: bytes = field(repr=False)  # PKCS#8 DER of the key, for the Workload API

    @property
    def serial(self) -> int:
        return self.chain[0].serial_number

    @property
    def issuer_key_ids(self) -> frozenset[bytes]:
        """Subject and authority key ids along the chain, to find SVIDs of a tainted CA."""
        out: set[bytes] = set()
        for cert in self.chain:
            for ext_cls in (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier):
                try:
                    ext = cert.extensions.get_extension_for_class(ext_cls)
                except x509.ExtensionNotFound:
                    continue
                value = ext.value
                if isinstance(value, x509.SubjectKeyIdentifier):
                    if cert is not self.chain[0]:
                        out.add(value.digest)
                elif isinstance(value, x509.AuthorityKeyIdentifier) and value.key_identifier:
                    out.add(value.key_identifier)
        return frozenset(out)


def build_svid(
    *,
    entry_id: str,
    spiffe_id: SpiffeId,
    key: ec.EllipticCurvePrivateKey,
    chain_der: tuple[bytes, ...],
    renew_fraction: float,
) -> Svid:
    """Check what the server signed and wrap it for serving.

    ``renew_fraction`` is the share of the lifetime after which the agent renews.
    """
    if not chain_der:
        raise BadSvidError(f"server returned an empty chain for entry {entry_id}; check the server")
    try:
        chain = tuple(x509.load_der_x509_certificate(d) for d in chain_der)
    except ValueError as exc:
        raise BadSvidError(
            f"server returned an unreadable certificate for entry {entry_id}; check the server"
        ) from exc
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise BadSvidError(
            f"server returned a certificate for another key for entry {entry_id}; check the server"
        )
    uris = uri_sans(leaf)
    if uris != [str(spiffe_id)]:
        raise BadSvidError(
            f"server returned a certificate for {uris!r} instead of {spiffe_id} "
            f"for entry {entry_id}; check the server"
        )
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise BadSvidError(f"server returned a CA certificate as SVID for entry {entry_id}")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = set(eku)
    except x509.ExtensionNotFound:
        usages = set()
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages:
        raise BadSvidError(
            f"server returned an SVID without serverAuth and clientAuth for entry {entry_id}"
        )
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    lifetime = not_after - not_before
    return Svid(
        entry_id=entry_id,
        spiffe_id=spiffe_id,
        chain=chain,
        private_key=key,
        not_before=not_before,
        not_after=not_after,
        renew_at=not_before + lifetime * renew_fraction,
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        chain_der=b"".join(chain_der),
        key_pkcs8_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key_pkcs8_der=key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
