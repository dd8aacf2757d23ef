"""Errors of the node agent. gRPC status codes are chosen at the socket edge only."""

from __future__ import annotations

from trustd.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)


class CallerUnknownError(UnauthenticatedError):
    """The kernel did not tell who is on the other end of the agent socket."""


class NoIdentityError(PermissionDeniedError):
    """The caller matches no registration entry this agent serves."""


class NotEntitledError(PermissionDeniedError):
    """The caller asked for an identity or secret that is not its own."""


class UnknownResourceError(NotFoundError):
    """A resource name (SDS) that names nothing this agent knows."""


class BadResourceNameError(InvalidArgumentError):
    """A resource name that is not one of the accepted forms."""


class NotReadyError(UnavailableError):
    """The agent has not finished its first sync with the server yet."""


class SigningFailedError(UnavailableError):
    """The server could not sign an SVID right now (it may be down)."""


class SocketInUseError(FailedPreconditionError):
    """Another process serves the agent socket already."""


class BadSvidError(UnavailableError):
    """The server returned an SVID that does not fit the CSR or the entry."""
