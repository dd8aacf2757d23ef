"""The one error-to-status table: each trustd error class gets one status at every gRPC
edge, and a client turns the status back into the error class."""

from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from trustd import errors
from trustd.api.edge import error_of, status_of, to_grpc_error
from trustd.ca.errors import InvalidCsrError
from trustd.ca.upstream.errors import UpstreamConfigError


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidArgumentError("x"), Status.INVALID_ARGUMENT),
        (InvalidCsrError("x"), Status.INVALID_ARGUMENT),  # subclasses follow their root
        (errors.NotFoundError("x"), Status.NOT_FOUND),
        (errors.AlreadyExistsError("x"), Status.ALREADY_EXISTS),
        (errors.PermissionDeniedError("x"), Status.PERMISSION_DENIED),
        (errors.UnauthenticatedError("x"), Status.UNAUTHENTICATED),
        (errors.FailedPreconditionError("x"), Status.FAILED_PRECONDITION),
        (errors.UnavailableError("x"), Status.UNAVAILABLE),
        (errors.DeadlineExceededError("x"), Status.UNAVAILABLE),  # clients retry it
        # the server's own configuration: not the caller's mistake, not fixed by a retry
        (errors.ConfigError("x"), Status.FAILED_PRECONDITION),
        (UpstreamConfigError("x"), Status.FAILED_PRECONDITION),
        (errors.TrustdError("x"), Status.INTERNAL),
    ],
)
def test_each_error_class_has_one_status(exc: errors.TrustdError, status: Status) -> None:
    assert status_of(exc) is status
    grpc_error = to_grpc_error(exc)
    assert grpc_error.status is status and grpc_error.message == "x"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (Status.PERMISSION_DENIED, errors.PermissionDeniedError),
        (Status.UNAUTHENTICATED, errors.UnauthenticatedError),
        (Status.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (Status.NOT_FOUND, errors.NotFoundError),
    ],
)
def test_a_client_gets_the_error_class_back(status: Status, cls: type[errors.TrustdError]) -> None:
    back = error_of(GRPCError(status, "entry x is pinned to another agent"))
    assert type(back) is cls and str(back) == "entry x is pinned to another agent"


@pytest.mark.parametrize(
    "status", [Status.UNAVAILABLE, Status.INTERNAL, Status.FAILED_PRECONDITION]
)
def test_any_other_status_is_the_server_being_unavailable(status: Status) -> None:
    back = error_of(GRPCError(status, "kms down"))
    assert isinstance(back, errors.UnavailableError) and str(back) == "server: kms down"
    assert str(error_of(GRPCError(status))) == f"server: {status.name.lower()}"
