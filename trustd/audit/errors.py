"""Errors raised by the audit log.

The action an event records branches on the trustd root classes: an
``UnavailableError`` (``AuditWriteError``) means "the event could not be
written, so the action must fail". Messages say what to do and never carry the
event's details, a token or key material.
"""

from __future__ import annotations

from trustd.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError


class AuditWriteError(UnavailableError):
    """An event or checkpoint could not be written (disk full, I/O error, permissions, closed log)."""


class AuditEventError(InvalidArgumentError):
    """The event is malformed: bad type or outcome, details that are not JSON data."""


class AuditSecretError(AuditEventError):
    """The event carries what looks like a secret (PEM private key, raw token, password)."""


class AuditCorruptError(FailedPreconditionError):
    """The log on disk is damaged in a way that stops it from being continued safely."""
