"""Why a federation operation or a bundle refresh failed.

A refresh failure carries a fixed ``reason`` (one of ``REASONS``): the label of
``trustd_federation_refresh_failures_total`` and the ``details.reason`` of the
audit event that alarms it.
"""

from __future__ import annotations

from trustd.errors import FailedPreconditionError, UnavailableError

UNREACHABLE = "unreachable"  # connect, TLS handshake or HTTP failed
WRONG_ENDPOINT_ID = "wrong_endpoint_id"  # https_spiffe: the endpoint is another SPIFFE ID
HTTP_STATUS = "http_status"  # the endpoint answered something but 200
MALFORMED = "malformed"  # not a SPIFFE bundle document
EMPTY = "empty"  # no key at all
NOT_CA = "not_ca"  # an x509-svid authority is not a CA certificate
WRONG_TRUST_DOMAIN = "wrong_trust_domain"  # an authority names another trust domain
SEQUENCE_REGRESSED = "sequence_regressed"  # spiffe_sequence below the last good one
REASONS = (
    UNREACHABLE,
    WRONG_ENDPOINT_ID,
    HTTP_STATUS,
    MALFORMED,
    EMPTY,
    NOT_CA,
    WRONG_TRUST_DOMAIN,
    SEQUENCE_REGRESSED,
)


class BundleRefusedError(FailedPreconditionError):
    """A bundle (bootstrap or fetched) does not pass the checks; nothing was changed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of REASONS


class EndpointFetchError(UnavailableError):
    """The bundle endpoint could not be fetched from (down, TLS, wrong identity, HTTP)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of REASONS
