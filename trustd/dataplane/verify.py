"""The strict X.509-SVID check of a peer, run after every TLS handshake.

OpenSSL has already verified the chain against the union of the trust
bundles. This adds what OpenSSL does not know about SPIFFE:

- exactly one URI SAN, a valid SPIFFE ID, in a trust domain we hold a bundle
  for, and the chain OpenSSL built ends at an anchor of *that* trust domain's
  bundle (a CA of one trust domain cannot vouch for another's IDs);
- no DNS (or other) SAN shaped like ``spiffe://``: SAN type confusion;
- the leaf is not a CA (``cA=false`` or no basicConstraints) and cannot sign
  certificates or CRLs;
- the EKU is present and allows the peer's role: clientAuth for a client (the
  inbound side checks it), serverAuth for a server (the outbound side);
- NotBefore <= now <= NotAfter by the injected clock, on top of OpenSSL's
  own check.

Every failure raises :class:`PeerRejectedError` with a fixed ``code``.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from trustd.dataplane.errors import PeerRejectedError
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain


class PeerRole(enum.StrEnum):
    CLIENT = "client"  # the peer dialled us: inbound listeners
    SERVER = "server"  # we dialled the peer: outbound listeners


REJECT_CODES = (
    "no_certificate",
    "bad_certificate",
    "expired",
    "not_yet_valid",
    "ca_leaf",
    "key_usage",
    "uri_san_count",
    "spiffe_shaped_san",
    "invalid_spiffe_id",
    "untrusted_trust_domain",
    "wrong_trust_domain_anchor",
    "eku",
)


def _looks_like_spiffe(value: str) -> bool:
    v = value.strip().lower()
    return v.startswith("spiffe:") or "://" in v


@dataclass(frozen=True, slots=True)
class _Leaf:
    spiffe_id: SpiffeId  # the one URI SAN
    not_before: dt.datetime
    not_after: dt.datetime
    ekus: frozenset[x509.ObjectIdentifier] | None  # None: no EKU extension


@functools.lru_cache(maxsize=1024)
def _parse_leaf(leaf_der: bytes) -> _Leaf:
    """The checks that depend on the certificate alone (cached: peers reconnect often)."""
    try:
        cert = x509.load_der_x509_certificate(leaf_der)
    except ValueError:
        raise PeerRejectedError(
            "bad_certificate", "the peer certificate cannot be parsed"
        ) from None
    exts = cert.extensions
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise PeerRejectedError("ca_leaf", "the peer certificate is a CA (cA=true), not an svid")
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and (ku.key_cert_sign or ku.crl_sign):
        raise PeerRejectedError(
            "key_usage", "the peer certificate may sign certificates or CRLs: not an svid"
        )
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerRejectedError("uri_san_count", "the peer certificate has no URI SAN") from None
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            continue
        value = getattr(name, "value", None)
        if isinstance(value, str) and _looks_like_spiffe(value):
            raise PeerRejectedError(
                "spiffe_shaped_san",
                f"the peer certificate has a {type(name).__name__} shaped like a spiffe id: "
                "only a URI SAN may carry one",
            )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerRejectedError(
            "uri_san_count",
            f"the peer certificate has {len(uris)} URI SANs: an svid has exactly one",
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise PeerRejectedError(
            "invalid_spiffe_id", f"the peer URI SAN is invalid: {exc}"
        ) from None
    try:
        ekus: frozenset[x509.ObjectIdentifier] | None = frozenset(
            exts.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        ekus = None
    return _Leaf(
        spiffe_id=spiffe_id,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        ekus=ekus,
    )


def check_peer_svid(
    leaf_der: bytes | None,
    *,
    verified_chain_der: Sequence[bytes] | None,
    bundles: Mapping[TrustDomain, Sequence[bytes]],
    now: dt.datetime,
    role: PeerRole,
) -> SpiffeId:
    """The peer's SPIFFE ID, or PeerRejectedError saying why it is not acceptable."""
    if not leaf_der:
        raise PeerRejectedError("no_certificate", "the peer presented no certificate")
    leaf = _parse_leaf(leaf_der)
    if now < leaf.not_before:
        raise PeerRejectedError("not_yet_valid", "the peer certificate is not valid yet")
    if now > leaf.not_after:
        raise PeerRejectedError("expired", "the peer certificate has expired")
    spiffe_id = leaf.spiffe_id
    anchors = bundles.get(spiffe_id.trust_domain)
    if not anchors:
        raise PeerRejectedError(
            "untrusted_trust_domain",
            f"the peer's trust domain {spiffe_id.trust_domain} is not trusted here",
        )
    if not verified_chain_der or verified_chain_der[-1] not in anchors:
        raise PeerRejectedError(
            "wrong_trust_domain_anchor",
            f"the peer certificate does not chain to the bundle of {spiffe_id.trust_domain}",
        )
    if leaf.ekus is None:
        raise PeerRejectedError("eku", "the peer certificate has no extended key usage")
    need = (
        ExtendedKeyUsageOID.CLIENT_AUTH
        if role is PeerRole.CLIENT
        else ExtendedKeyUsageOID.SERVER_AUTH
    )
    if need not in leaf.ekus:
        what = "clientAuth" if role is PeerRole.CLIENT else "serverAuth"
        raise PeerRejectedError("eku", f"the peer certificate does not allow {what}")
    return spiffe_id
