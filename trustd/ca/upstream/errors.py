"""Errors raised by upstream authorities (vault-pki).

Messages name the upstream, the mount and what to do; never a token, a secret
id or key material.
"""

from __future__ import annotations

from trustd.errors import (
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)


class UpstreamUnavailableError(UnavailableError):
    """The upstream CA cannot sign now: unreachable, sealed, failing; retrying later may work."""


class UpstreamTimeoutError(DeadlineExceededError):
    """The upstream CA did not answer within the configured timeout."""


class UpstreamPermissionDeniedError(PermissionDeniedError):
    """The upstream CA rejected trustd's credential or its policy forbids the request."""


class UpstreamConfigError(ConfigError):
    """The upstream authority's settings are unusable (no such mount, no issuer, bad address)."""


class UpstreamNotFoundError(NotFoundError):
    """The named upstream object (issuer) does not exist."""


class UpstreamInvalidRequestError(InvalidArgumentError):
    """The upstream CA refused the request as sent (bad CSR, TTL beyond the issuer's life)."""


class UpstreamBadResponseError(FailedPreconditionError):
    """The upstream CA returned a certificate trustd must not use (wrong key, SAN, not a CA)."""
