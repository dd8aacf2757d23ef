"""Errors of the data plane (``trustd proxy``), each a subclass of a trustd.errors class."""

from __future__ import annotations

from trustd.errors import ConfigError, InvalidArgumentError, UnauthenticatedError, UnavailableError


class ProxyConfigError(ConfigError):
    """The proxy configuration file is invalid."""


class InvalidIdentityError(InvalidArgumentError):
    """An SVID, key or bundle handed to the proxy cannot be used (it is kept out)."""


class IdentityUnavailableError(UnavailableError):
    """The proxy has no SVID yet (the agent has not answered)."""


class PeerRejectedError(UnauthenticatedError):
    """A peer's certificate is not an acceptable X.509-SVID.

    ``code`` is a short fixed label (for metrics and denial events), the message
    says what was wrong in words.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
