"""Fetching a foreign trust domain's bundle from its bundle endpoint (SPIFFE Federation §5).

- ``https_spiffe``: the endpoint server is authenticated with the foreign trust
  domain's current bundle (the bootstrap bundle first, then each refreshed one)
  and must present exactly the configured endpoint SPIFFE ID; the hostname is
  not checked.
- ``https_web``: ordinary Web PKI: the system roots (or a configured CA file)
  and the URL's hostname.

The answer must be ``200`` with at most ``MAX_BUNDLE_BYTES``; what it is worth is
decided by ``trustd.federation.check``. Blocking: run it in the server's pool.
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from cryptography import x509

from trustd import urisan
from trustd.bundle import Bundle
from trustd.errors import InvalidArgumentError
from trustd.federation.check import MAX_BUNDLE_BYTES
from trustd.federation.errors import HTTP_STATUS, UNREACHABLE, WRONG_ENDPOINT_ID, EndpointFetchError
from trustd.federation.model import HTTPS_SPIFFE, Relationship
from trustd.spiffeid import SpiffeId

TIMEOUT = 10.0  # seconds for connect, handshake and the whole answer


def check_url(url: str) -> str:
    """An https URL with a host (InvalidArgumentError otherwise)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # never echoed: what precedes the '@' may be a password
        raise InvalidArgumentError(
            "a bundle endpoint url must not carry credentials (user:password@): the bundle "
            "is public"
        )
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgumentError(
            f"invalid bundle endpoint url {url[:200]!r}: use https://HOST[:PORT][/PATH]"
        )
    try:
        _ = parts.port
    except ValueError:
        raise InvalidArgumentError(f"invalid port in bundle endpoint url {url[:200]!r}") from None
    return url


def _context(rel: Relationship, current: Bundle, ca_file: str | None) -> ssl.SSLContext:
    if rel.profile == HTTPS_SPIFFE:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the endpoint is identified by its SPIFFE ID, checked below
        ctx.verify_mode = ssl.CERT_REQUIRED
        pem = current.to_pem()
        if not pem:
            raise EndpointFetchError(
                UNREACHABLE,
                f"the bundle of {rel.trust_domain} has no x509 authority to authenticate its "
                "bundle endpoint with",
            )
        ctx.load_verify_locations(cadata=pem.decode())
    else:
        ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def fetch_bundle_document(
    rel: Relationship, current: Bundle, *, ca_file: str | None = None, timeout: float = TIMEOUT
) -> bytes:
    """The document the endpoint serves (raises ``EndpointFetchError``)."""
    parts = urlsplit(rel.endpoint_url)
    host = parts.hostname or ""
    ctx = _context(rel, current, ca_file)
    conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout, context=ctx)
    where = f"the bundle endpoint of {rel.trust_domain} at {rel.endpoint_url}"
    try:
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise EndpointFetchError(
                UNREACHABLE, f"tls handshake with {where} failed: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise EndpointFetchError(
                UNREACHABLE, f"cannot connect to {where}: {exc.strerror or exc}"
            ) from None
        if rel.profile == HTTPS_SPIFFE:
            sock = conn.sock
            der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            presented = (
                urisan.spiffe_id_or_none(x509.load_der_x509_certificate(der)) if der else None
            )
            if presented != SpiffeId.parse(rel.endpoint_spiffe_id):
                raise EndpointFetchError(
                    WRONG_ENDPOINT_ID,
                    f"{where} presented spiffe id {presented}, not the configured "
                    f"{rel.endpoint_spiffe_id}",
                )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_BUNDLE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise EndpointFetchError(UNREACHABLE, f"{where} did not answer: {exc}") from None
        if resp.status != 200:
            raise EndpointFetchError(
                HTTP_STATUS, f"{where} answered http {resp.status} {resp.reason}"[:300]
            )
        return body
    finally:
        conn.close()
