"""The UpstreamAuthority seam: who signs trustd's CA certificate.

With no upstream authority the CA is a self-signed root. With one, the CA core
makes a CSR for the slot's key (subject, the trust domain's SPIFFE ID as URI
SAN, CA:true), asks ``sign_intermediate`` for a certificate, serves ``chain``
to workloads and puts ``roots`` in the trust bundle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResult:
    # trustd's signed CA certificate first, then the upstream intermediates above it,
    # leaf-to-root order, without the root
    chain: tuple[x509.Certificate, ...]
    # the upstream trust anchors to put in the trust bundle (usually one self-signed root)
    roots: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        """trustd's own CA certificate, as the upstream signed it."""
        return self.chain[0]

    @property
    def not_after(self) -> dt.datetime:
        """When the chain stops validating: the earliest notAfter of chain and roots.

        Vault may sign an intermediate that outlives its own issuer; use this, not
        ``certificate.not_valid_after_utc``, to plan renewal and cap SVID TTLs.
        """
        return min(c.not_valid_after_utc for c in (*self.chain, *self.roots))


@runtime_checkable
class UpstreamAuthority(Protocol):
    """Signs trustd's CA CSRs. Blocking: async callers run it in a thread pool.

    Every method may raise ``UnavailableError`` (upstream down, sealed or slow,
    bounded by a timeout) or ``PermissionDeniedError`` (credential rejected),
    with a message that names no secret.
    """

    kind: str  # "vault-pki"

    def sign_intermediate(self, csr_pem: bytes, ttl: dt.timedelta) -> UpstreamResult:
        """Sign ``csr_pem`` as an intermediate CA valid for ``ttl`` (the upstream may cap it).

        The result is checked before it is returned: it carries the CSR's public
        key and URI SANs, is a CA certificate and chains to ``roots``.
        """
        ...

    def check(self) -> None:
        """Raise UnavailableError (or PermissionDeniedError) when signing cannot work now."""
        ...

    def close(self) -> None: ...
