"""SPIFFE ID and trust domain validation, as the SPIFFE ID specification says (SPEC §4)."""

from __future__ import annotations

import pytest

from trustd.errors import InvalidArgumentError
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain, is_valid

GOOD = [
    # (text, trust domain, path)
    ("spiffe://trustd.local", "trustd.local", ""),
    ("spiffe://trustd.local/ns/default/sa/web", "trustd.local", "/ns/default/sa/web"),
    ("spiffe://example.org/a", "example.org", "/a"),
    ("spiffe://a-b_c.d0/x", "a-b_c.d0", "/x"),
    ("spiffe://td/UPPER/Mixed.Case", "td", "/UPPER/Mixed.Case"),
    ("spiffe://td/-._/0-9", "td", "/-._/0-9"),
    # only '.' and '..' are dot segments
    ("spiffe://td/.../a..b/.hidden", "td", "/.../a..b/.hidden"),
    ("spiffe://1.2.3.4/svc", "1.2.3.4", "/svc"),
]


@pytest.mark.parametrize(("text", "td", "path"), GOOD)
def test_valid_spiffe_ids_parse_and_round_trip(text: str, td: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == TrustDomain(td)
    assert sid.path == path
    assert str(sid) == text
    assert is_valid(text)


BAD = [
    # (case, text, words the error must contain)
    ("uppercase trust domain", "spiffe://Example.org/a", "lower-case"),
    ("all-uppercase trust domain", "spiffe://TRUSTD.LOCAL", "lower-case"),
    ("uppercase scheme", "SPIFFE://example.org/a", "scheme"),
    ("wrong scheme", "https://example.org/a", "scheme"),
    ("no scheme", "example.org/a", "scheme"),
    ("scheme without slashes", "spiffe:example.org/a", "scheme"),
    ("empty", "", "scheme"),
    ("no trust domain", "spiffe://", "trust domain is missing"),
    ("no trust domain with path", "spiffe:///a", "trust domain is missing"),
    ("dot segment", "spiffe://example.org/./a", "'.'"),
    ("dot-dot segment", "spiffe://example.org/a/../b", "'..'"),
    ("trailing dot segment", "spiffe://example.org/a/.", "'.'"),
    ("percent-encoding in path", "spiffe://example.org/a%20b", "percent-encoding"),
    ("percent-encoding in trust domain", "spiffe://exa%6Dple.org/a", "percent-encoding"),
    ("query", "spiffe://example.org/a?x=1", "query"),
    ("query on bare trust domain", "spiffe://example.org?x=1", "query"),
    ("fragment", "spiffe://example.org/a#frag", "fragment"),
    ("userinfo", "spiffe://user@example.org/a", "userinfo"),
    ("userinfo with password", "spiffe://user:pw@example.org/a", "userinfo"),
    ("port", "spiffe://example.org:8443/a", "port"),
    ("empty segment", "spiffe://example.org/a//b", "empty path segment"),
    ("trailing slash", "spiffe://example.org/a/", "empty path segment"),
    ("bare trailing slash", "spiffe://example.org/", "empty path segment"),
    ("space in path", "spiffe://example.org/a b", "path segments"),
    ("star in path", "spiffe://example.org/a*", "path segments"),
    ("non-ascii in path", "spiffe://example.org/caf\u00e9", "path segments"),
    ("newline at the end", "spiffe://example.org/a\n", "path segments"),
    ("backslash in path", "spiffe://example.org/a\\b", "path segments"),
    ("space in trust domain", "spiffe://exa mple.org/a", "trust domain"),
    ("non-ascii trust domain", "spiffe://b\u00fccher.example/a", "trust domain"),
    ("plus in trust domain", "spiffe://a+b.org/a", "trust domain"),
]


@pytest.mark.parametrize(("case", "text", "why"), BAD, ids=[c for c, _, _ in BAD])
def test_invalid_spiffe_ids_are_refused_with_the_reason(case: str, text: str, why: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as err:
        SpiffeId.parse(text)
    message = str(err.value)
    assert why in message, f"{case}: {message}"
    assert message == message.rstrip(".")  # STYLE: no trailing period
    assert not is_valid(text)


def test_invalid_spiffe_id_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError):
        SpiffeId.parse("spiffe://Example.org")


def test_longest_allowed_id_is_2048_bytes() -> None:
    prefix = "spiffe://example.org/"
    at_limit = prefix + "a" * (2048 - len(prefix))
    assert len(at_limit.encode()) == 2048
    assert str(SpiffeId.parse(at_limit)) == at_limit


def test_id_over_2048_bytes_is_refused() -> None:
    prefix = "spiffe://example.org/"
    over = prefix + "a" * (2049 - len(prefix))
    with pytest.raises(InvalidSpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse(over)


def test_length_limit_counts_bytes_not_characters() -> None:
    # 1,100 two-byte characters: fewer than 2048 characters, more than 2048 bytes.
    text = "spiffe://example.org/" + "\u00e9" * 1100
    assert len(text) < 2048 < len(text.encode())
    with pytest.raises(InvalidSpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse(text)


def test_error_message_shortens_a_huge_id() -> None:
    with pytest.raises(InvalidSpiffeIdError) as err:
        SpiffeId.parse("spiffe://example.org/" + "x" * 5000)
    assert len(str(err.value)) < 200


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidSpiffeIdError, match="expected a string"):
        SpiffeId.parse(b"spiffe://example.org/a")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["trustd.local", "spiffe://trustd.local", "a-b_c.d", "0.example"])
def test_trust_domain_parses_bare_names_and_path_less_ids(text: str) -> None:
    td = TrustDomain.parse(text)
    assert str(td) == text.removeprefix("spiffe://")
    assert str(td.id) == f"spiffe://{td.name}"
    assert td.id.path == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "spiffe://",
        "Trustd.local",
        "trustd.local:8081",
        "user@trustd.local",
        "spiffe://trustd.local/a",
        "trustd.local/a",
    ],
)
def test_trust_domain_refuses_case_ports_userinfo_and_paths(text: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        TrustDomain.parse(text)


def test_membership_and_namespace() -> None:
    sid = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/backend")
    assert sid.is_member_of(TrustDomain.parse("trustd.local"))
    assert not sid.is_member_of(TrustDomain.parse("other.local"))
    assert sid.segments == ("ns", "shop", "sa", "backend")
    assert sid.namespace == "shop"
    assert SpiffeId.parse("spiffe://trustd.local/web").namespace is None
    assert SpiffeId.parse("spiffe://trustd.local").segments == ()


def test_equal_ids_are_equal_and_hash_alike() -> None:
    a = SpiffeId.parse("spiffe://trustd.local/a/b")
    b = SpiffeId.parse("spiffe://trustd.local/a/b")
    assert a == b
    assert len({a, b}) == 1
    assert a != SpiffeId.parse("spiffe://trustd.local/a/B")
