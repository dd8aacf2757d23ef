"""The URI SANs of a certificate or CSR, and the one SPIFFE ID an X.509-SVID carries.

Every place that reads a SPIFFE ID out of an X.509 object does it here: the
agent checking what the server signed, the server naming an agent from its
client certificate, the Vault PKI upstream, the proxy checking a peer. The
rule (SPIFFE X.509-SVID §2) is one URI SAN, and it parses as a SPIFFE ID;
:class:`UriSanError` says which half failed, with a fixed ``code`` callers use
for metrics and their own error class.
"""

from __future__ import annotations

from cryptography import x509

from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId

X509Object = x509.Certificate | x509.CertificateSigningRequest


class UriSanError(InvalidSpiffeIdError):
    """The object does not carry exactly one URI SAN that is a SPIFFE ID."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "uri_san_count" | "not_spiffe"


def uri_sans(obj: X509Object) -> list[str]:
    """Every URI SAN of ``obj``, in order; [] when it has no SAN extension."""
    try:
        san = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id(obj: X509Object, *, what: str = "the certificate") -> SpiffeId:
    """The SPIFFE ID of an X.509-SVID (or of a CSR asking for one). Raises UriSanError."""
    uris = uri_sans(obj)
    if len(uris) != 1:
        has = "no URI SAN" if not uris else f"{len(uris)} URI SANs"
        raise UriSanError("uri_san_count", f"{what} has {has}: an X.509-SVID has exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise UriSanError(
            "not_spiffe", f"the URI SAN of {what} is not a SPIFFE ID: {exc}"
        ) from None


def spiffe_id_or_none(obj: X509Object) -> SpiffeId | None:
    """:func:`spiffe_id`, or None for anything that is not an X.509-SVID."""
    try:
        return spiffe_id(obj)
    except UriSanError:
        return None
