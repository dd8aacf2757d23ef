"""The SPIFFE ID glob language (trustd.policy.glob)."""

from __future__ import annotations

import pytest

from trustd.policy.errors import InvalidGlobError
from trustd.policy.glob import SpiffeGlob
from trustd.spiffeid import SpiffeId


@pytest.mark.parametrize(
    ("pattern", "spiffe_id", "expected"),
    [
        ("spiffe://td/ns/shop/sa/web", "spiffe://td/ns/shop/sa/web", True),
        ("spiffe://td/ns/shop/sa/web", "spiffe://td/ns/shop/sa/web2", False),
        ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/shop/sa/web", True),
        ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/a/b/sa/web", False),  # * stays in one segment
        ("spiffe://td/ns/shop/sa/front-*", "spiffe://td/ns/shop/sa/front-1", True),
        ("spiffe://td/ns/shop/sa/front-*", "spiffe://td/ns/shop/sa/back-1", False),
        ("spiffe://td/ns/shop/**", "spiffe://td/ns/shop", True),  # ** is zero or more segments
        ("spiffe://td/ns/shop/**", "spiffe://td/ns/shop/sa/web/x", True),
        ("spiffe://td/ns/shop/**", "spiffe://td/ns/shopping/sa/web", False),
        ("spiffe://td/**/web", "spiffe://td/ns/shop/sa/web", True),
        ("spiffe://*.example.org/x", "spiffe://a.example.org/x", True),
        ("spiffe://*.example.org/x", "spiffe://a.example.com/x", False),
        ("*", "spiffe://anything/at/all", True),
        ("spiffe://td/ns/shop/sa/web", "spiffe://other/ns/shop/sa/web", False),
    ],
)
def test_glob_matching(pattern: str, spiffe_id: str, expected: bool) -> None:
    assert SpiffeGlob.parse(pattern).matches(SpiffeId.parse(spiffe_id)) is expected


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("td/ns/shop", "spiffe://"),
        ("spiffe://", "trust domain is missing"),
        ("spiffe://td/ns//x", "empty path segment"),
        ("spiffe://td/ns/x/", "empty path segment"),
        ("spiffe://td/ns/../x", "'..'"),
        ("spiffe://td/ns/a**", "whole path segment"),
        ("spiffe://**/ns", "whole path segment"),
        ("spiffe://td/ns/sh?p", "no '?'"),
        ("spiffe://td/ns/[ab]", "no '?', '['"),
        ("spiffe://TD/ns/x", "lower-case"),
        ("spiffe://td:8080/ns", "no port"),
        ("spiffe://td/ns/a%20b", "'%'"),
        ("spiffe://td/ns/a b", "spaces"),
    ],
)
def test_invalid_globs_are_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(InvalidGlobError) as err:
        SpiffeGlob.parse(pattern)
    assert why in str(err.value)
    assert pattern[:20] in str(err.value)


def test_exact_glob_is_known_as_exact() -> None:
    assert SpiffeGlob.parse("spiffe://td/a").is_exact
    assert not SpiffeGlob.parse("spiffe://td/*").is_exact
