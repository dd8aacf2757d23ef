"""Errors of the CA: bad CSRs, bad TTLs, missing or unusable authorities."""

from __future__ import annotations

from trustd.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError


class InvalidCsrError(InvalidArgumentError):
    """The CSR is garbage, too large, badly signed, or its key is too weak."""


class InvalidTtlError(InvalidArgumentError):
    """A TTL that is zero, negative, or above the server's maximum."""


class ReservedIdError(InvalidArgumentError):
    """A SPIFFE ID under the path trustd keeps for its own server and agents."""


class NoActiveAuthorityError(UnavailableError):
    """No CA is active yet; the server is starting or its KMS is down."""


class SigningError(UnavailableError):
    """The key manager failed, or returned a signature that does not verify."""


class AuthorityStateError(FailedPreconditionError):
    """A rotation step that the authority's current state does not allow."""


class ConcurrentRotationError(AuthorityStateError):
    """Another server changed the CA slots between this one's read and write."""


class InvalidJwtSvidError(InvalidArgumentError):
    """A JWT-SVID that does not validate: malformed, badly signed, expired or not for us."""
