"""DNS names that may go into an SVID's DNS SANs (``--dns``)."""

from __future__ import annotations

from trustd.errors import InvalidArgumentError

_DNS_LABEL_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def check_dns_name(name: str) -> str:
    """The name, lower-cased and without a trailing dot; InvalidArgumentError if it is not a
    host name (labels of letters, digits and inner hyphens; a leading ``*.`` label allowed)."""
    lowered = name.lower().rstrip(".")
    labels = lowered.split(".")
    if (
        not lowered
        or len(lowered) > 253
        or (lowered.startswith("spiffe") and "://" in lowered)
        or any(
            not label
            or len(label) > 63
            or label.startswith("-")
            or label.endswith("-")
            or not set(label.removeprefix("*")) <= _DNS_LABEL_OK
            for label in labels
        )
    ):
        raise InvalidArgumentError(
            f"invalid dns name {name[:80]!r}: use letters, digits, hyphens and dots "
            "(e.g. backend.shop.svc)"
        )
    return lowered
