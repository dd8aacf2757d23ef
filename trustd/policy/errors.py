"""Errors of the policy engine, each a subclass of a trustd.errors class."""

from __future__ import annotations

from collections.abc import Sequence

from trustd.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError


class PolicyValidationError(InvalidArgumentError):
    """One or more policy documents are invalid; the whole apply is rejected.

    ``problems`` holds one line per problem, each naming the file, the document
    and the field path, so a CLI can print them all.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        head = f"{len(self.problems)} problem(s) in the policy files; nothing was applied"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class InvalidGlobError(InvalidArgumentError):
    """A SPIFFE ID glob outside the glob language of trustd.policy.glob."""


class UnsafeChangeError(FailedPreconditionError):
    """A policy change that would drop traffic; ``reasons`` says where and why."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__(
            "the change would drop traffic; fix the order of changes or use --force:\n  "
            + "\n  ".join(self.reasons)
        )


class RolloutError(FailedPreconditionError):
    """A rollout command that does not fit the rollout's current state."""


class NoRolloutError(NotFoundError):
    """There is no rollout to show, pause, resume or abort."""
