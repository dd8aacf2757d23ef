"""TLS plumbing shared by the agent API's two ends.

Python's ``ssl`` loads certificates and keys only from files. Keys stay off
disk by going through an anonymous in-memory file (``memfd_create``), read
once and closed. Peer SPIFFE IDs are checked inside the handshake by an
``SSLObject`` subclass, so a connection to the wrong identity never carries
a request.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd import urisan
from trustd.spiffeid import SpiffeId


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("trustd-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_identity(
    ctx: ssl.SSLContext,
    chain: list[x509.Certificate] | tuple[x509.Certificate, ...],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> None:
    """Install (or replace, for new handshakes) the certificate chain and key of ``ctx``."""
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with _memfile(chain_pem) as cert_path, _memfile(key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path)


spiffe_id_of = urisan.spiffe_id_or_none  # the SPIFFE ID of an X.509-SVID, or None


def peer_spiffe_id_checker(expected: Callable[[SpiffeId], bool]) -> type[ssl.SSLObject]:
    """An SSLObject class that fails the handshake unless the peer's SPIFFE ID passes ``expected``."""

    class _Checked(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            sid = spiffe_id_of(x509.load_der_x509_certificate(der)) if der else None
            if sid is None or not expected(sid):
                raise ssl.SSLError(
                    ssl.SSL_ERROR_SSL, f"peer presented spiffe id {sid}, which is not allowed here"
                )

    return _Checked


def client_context(bundle_pem: bytes, expected_server: SpiffeId) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the peer is identified by SPIFFE ID, checked in the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    ctx.sslobject_class = peer_spiffe_id_checker(lambda sid: sid == expected_server)
    return ctx


def server_context(bundle_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL  # Join has no client certificate yet; handlers check
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    ctx.options |= ssl.OP_NO_TICKET  # no resumption that could skip re-validation
    return ctx
