"""Where the proxy's SVID and trust bundles come from: the IdentitySource seam.

The proxy reads :meth:`IdentitySource.current` for every new connection, so a
new SVID or bundle applies to new connections as soon as the source has it,
and open connections keep the one they started with. Implementations:

- :class:`trustd.dataplane.sds.SdsIdentitySource`: Envoy SDS v3 from the local
  agent (the default of ``trustd proxy``);
- :class:`FileIdentitySource`: PEM files, re-read when they change;
- :class:`StaticIdentitySource`: in memory, set by the caller (tests, embedding).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trustd.dataplane.errors import InvalidIdentityError
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain

log = structlog.get_logger(__name__)

IdentityListener = Callable[["Identity"], None]


@dataclass(frozen=True, kw_only=True)
class Identity:
    """The proxy's own X.509-SVID and the trust bundles it verifies peers against."""

    spiffe_id: SpiffeId  # from the SVID's URI SAN
    cert_chain_pem: bytes  # leaf first, then intermediates
    private_key_pem: bytes = field(repr=False)  # PKCS#8 PEM; never logged or shown
    bundles: Mapping[TrustDomain, tuple[bytes, ...]]  # DER trust anchors per trust domain
    not_after: dt.datetime  # the leaf's NotAfter
    version: str  # changes whenever the chain or a bundle changes (not derived from the key)
    serial: int  # the leaf's serial number, for logs

    @classmethod
    def from_pem(
        cls,
        *,
        cert_chain_pem: bytes,
        private_key_pem: bytes,
        bundles_pem: Mapping[TrustDomain, bytes] | None = None,
    ) -> Identity:
        """Validate and build. Without ``bundles_pem`` nothing is trusted.

        Raises InvalidIdentityError: no certificate, not exactly one SPIFFE URI
        SAN, or a key that does not match the leaf.
        """
        try:
            chain = x509.load_pem_x509_certificates(cert_chain_pem)
        except ValueError:
            raise InvalidIdentityError("the svid is not a PEM certificate chain") from None
        leaf = chain[0]
        spiffe_id = _single_spiffe_id(leaf)
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError):
            raise InvalidIdentityError(
                "the svid private key is not an unencrypted PEM key"
            ) from None
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise InvalidIdentityError("the svid private key type is not supported: use EC or RSA")
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(
            serialization.Encoding.DER, pub
        ) != leaf.public_key().public_bytes(serialization.Encoding.DER, pub):
            raise InvalidIdentityError("the svid private key does not match its certificate")
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        bundles: dict[TrustDomain, tuple[bytes, ...]] = {}
        for td, pem in (bundles_pem or {}).items():
            try:
                certs = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise InvalidIdentityError(f"the bundle of {td} is not PEM certificates") from None
            bundles[td] = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        h = hashlib.sha256(chain_pem)
        for td in sorted(bundles):
            h.update(td.name.encode())
            for der in bundles[td]:
                h.update(der)
        return cls(
            spiffe_id=spiffe_id,
            cert_chain_pem=chain_pem,
            private_key_pem=pkcs8,
            bundles=bundles,
            not_after=leaf.not_valid_after_utc,
            version=h.hexdigest()[:16],
            serial=leaf.serial_number,
        )

    def bundle_pem(self) -> str:
        """Every trust anchor of every trust domain, as one PEM text (for OpenSSL)."""
        out = []
        for td in sorted(self.bundles):
            for der in self.bundles[td]:
                cert = x509.load_der_x509_certificate(der)
                out.append(cert.public_bytes(serialization.Encoding.PEM).decode())
        return "".join(out)

    def with_bundles(self, bundles_pem: Mapping[TrustDomain, bytes]) -> Identity:
        return Identity.from_pem(
            cert_chain_pem=self.cert_chain_pem,
            private_key_pem=self.private_key_pem,
            bundles_pem=bundles_pem,
        )


def _single_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidIdentityError("the svid has no URI SAN: it is not an X.509-SVID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidIdentityError(
            f"the svid has {len(uris)} URI SANs: an X.509-SVID has exactly one"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise InvalidIdentityError(f"the svid URI SAN is not a SPIFFE ID: {exc}") from None


class IdentitySource(Protocol):
    """Supplies the current Identity and says when it changes."""

    async def start(self) -> None:
        """Begin fetching (idempotent). Returns once fetching runs, not when it succeeded."""
        ...

    def current(self) -> Identity | None:
        """The newest valid identity, or None before the first one arrived."""
        ...

    def subscribe(self, listener: IdentityListener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) with every new identity; returns an unsubscribe."""
        ...

    async def close(self) -> None: ...


class _Listeners:
    def __init__(self) -> None:
        self._items: dict[int, IdentityListener] = {}
        self._next = 0

    def add(self, listener: IdentityListener) -> Callable[[], None]:
        key = self._next
        self._next += 1
        self._items[key] = listener

        def remove() -> None:
            self._items.pop(key, None)

        return remove

    def fire(self, ident: Identity) -> None:
        for listener in list(self._items.values()):
            try:
                listener(ident)
            except Exception:  # a faulty listener must not stop the others
                log.exception("identity listener failed")


class StaticIdentitySource:
    """An identity set by the caller; :meth:`set` replaces it (a rotation)."""

    def __init__(self, identity: Identity | None = None) -> None:
        self._identity = identity
        self._listeners = _Listeners()

    async def start(self) -> None:
        return None

    def current(self) -> Identity | None:
        return self._identity

    def set(self, identity: Identity) -> None:
        self._identity = identity
        log.info(
            "identity updated",
            spiffe_id=str(identity.spiffe_id),
            serial=identity.serial,
            not_after=identity.not_after.isoformat(),
            version=identity.version,
        )
        self._listeners.fire(identity)

    def subscribe(self, listener: IdentityListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    async def close(self) -> None:
        return None


class FileIdentitySource(StaticIdentitySource):
    """PEM files on disk (chain, key, bundle), re-read when any of them changes.

    For hosts without an agent and for benchmarks. The key file should be 0600.
    """

    def __init__(
        self,
        *,
        cert_file: str | Path,
        key_file: str | Path,
        bundle_file: str | Path,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self._files = (Path(cert_file), Path(key_file), Path(bundle_file))
        self._poll = poll_interval
        self._stamp: tuple[float, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    def _stamps(self) -> tuple[float, ...]:
        return tuple(p.stat().st_mtime_ns for p in self._files)

    def load(self) -> bool:
        """Read the files now; True when a new identity was taken."""
        try:
            stamp = self._stamps()
        except OSError as exc:
            log.warning("identity files unreadable", error=exc.strerror)
            return False
        if stamp == self._stamp:
            return False
        cert, key, bundle = (p.read_bytes() for p in self._files)
        try:
            first = x509.load_pem_x509_certificates(cert)[0]
            td = _single_spiffe_id(first).trust_domain
            ident = Identity.from_pem(
                cert_chain_pem=cert, private_key_pem=key, bundles_pem={td: bundle}
            )
        except (InvalidIdentityError, ValueError) as exc:
            log.error("identity files rejected, keeping the previous identity", error=str(exc))
            self._stamp = stamp
            return False
        self._stamp = stamp
        self.set(ident)
        return True

    async def start(self) -> None:
        self.load()
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="identity-files")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            self.load()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def bundles_from_pem(items: Iterable[tuple[str | TrustDomain, bytes]]) -> dict[TrustDomain, bytes]:
    out: dict[TrustDomain, bytes] = {}
    for td, pem in items:
        key = td if isinstance(td, TrustDomain) else TrustDomain.parse(td)
        out[key] = out.get(key, b"") + pem
    return out
