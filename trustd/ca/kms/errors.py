"""Errors raised by the KMS backends (vault-transit, pkcs11).

Each class is the trustd root class the caller branches on, specialised so logs
and tests can tell a KMS failure from a store or audit failure. Messages name
the backend, the key and what to do; they never carry a token, a PIN, a secret
id or key material.
"""

from __future__ import annotations

from trustd.errors import (
    AlreadyExistsError,
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)


class KmsUnavailableError(UnavailableError):
    """The KMS cannot sign now: unreachable, sealed, token absent; retrying later may work."""


class KmsTimeoutError(DeadlineExceededError):
    """The KMS did not answer within the configured timeout."""


class KmsPermissionDeniedError(PermissionDeniedError):
    """The KMS rejected trustd's credential (token, AppRole, PIN) or its policy."""


class KmsConfigError(ConfigError):
    """The key manager's settings are unusable (missing module, no token, bad address)."""


class KmsKeyNotFoundError(NotFoundError):
    """The key does not exist in the KMS, or was retired."""


class KmsKeyExistsError(AlreadyExistsError):
    """A key with that name exists in the KMS already."""


class KmsInvalidRequestError(InvalidArgumentError):
    """The request cannot be signed as sent (wrong digest length, refused batch item)."""


class KmsBadResponseError(FailedPreconditionError):
    """The KMS answered with something trustd cannot use (malformed signature, wrong key type)."""
