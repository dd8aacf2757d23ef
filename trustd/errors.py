"""The root of every error trustd raises on purpose.

Messages are lower-case, carry no trailing period, say what to do, and never
contain a secret (private key, token, PIN). gRPC status codes and CLI exit
codes are chosen at the edges from the class of the error, never here.
"""

from __future__ import annotations


class TrustdError(Exception):
    """Root error. Subclasses say which kind of failure it is."""


class InvalidArgumentError(TrustdError):
    """The caller sent something malformed or out of range."""


class NotFoundError(TrustdError):
    """The named object does not exist."""


class AlreadyExistsError(TrustdError):
    """An object with the same identity exists already."""


class PermissionDeniedError(TrustdError):
    """The caller is known but may not do this."""


class UnauthenticatedError(TrustdError):
    """The caller could not be identified."""


class FailedPreconditionError(TrustdError):
    """The system is not in a state where this can be done (e.g. no active CA)."""


class UnavailableError(TrustdError):
    """A dependency (KMS, store, audit log) is down; retrying later may work."""


class DeadlineExceededError(UnavailableError):
    """A dependency did not answer in time."""


class ConfigError(TrustdError):
    """The configuration file or flags are invalid."""
