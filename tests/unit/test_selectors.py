"""Workload selectors (SPEC §5) and matching them against a kernel-attested caller."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from trustd.errors import InvalidArgumentError
from trustd.selectors import Caller, InvalidSelectorError, Selector, matches


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("unix:uid:1000", "uid", "1000"),
        ("unix:gid:0", "gid", "0"),
        ("unix:user:www-data", "user", "www-data"),
        ("unix:group:adm", "group", "adm"),
        ("unix:path:/usr/bin/envoy", "path", "/usr/bin/envoy"),
        ("unix:path:/opt/app:v2/bin", "path", "/opt/app:v2/bin"),  # the value may hold ':'
    ],
)
def test_valid_selectors_parse_and_round_trip(text: str, key: str, value: str) -> None:
    sel = Selector.parse(text)
    assert (sel.type, sel.key, sel.value) == ("unix", key, value)
    assert str(sel) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("k8s:ns:default", "unknown selector type 'k8s'"),
        ("docker:label:x", "unknown selector type 'docker'"),
        ("UNIX:uid:1", "unknown selector type 'UNIX'"),
        ("unix:pid:1", "unknown unix selector 'pid'"),
        ("unix:uid:root", "uid must be a whole number"),
        ("unix:uid:-1", "uid must be a whole number"),
        ("unix:gid:1.5", "gid must be a whole number"),
        ("unix:uid:12345678901", "uid must be a whole number"),
        ("unix:path:relative/bin", "absolute path"),
        ("unix:uid", "expected TYPE:KEY:VALUE"),
        ("unix:uid:", "expected TYPE:KEY:VALUE"),
        ("::", "expected TYPE:KEY:VALUE"),
        ("", "expected TYPE:KEY:VALUE"),
    ],
)
def test_invalid_selectors_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidSelectorError) as err:
        Selector.parse(text)
    assert why in str(err.value)
    assert isinstance(err.value, InvalidArgumentError)


def test_unknown_selector_type_names_the_supported_one() -> None:
    with pytest.raises(InvalidSelectorError, match="the supported type is 'unix'"):
        Selector.parse("k8s:sa:default")


def _me(exe: str | None = "/usr/bin/python3") -> Caller:
    return Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), exe=exe)


def test_caller_satisfies_its_uid_gid_user_group_and_path() -> None:
    me = _me()
    have = me.selectors()
    assert Selector("unix", "uid", str(os.getuid())) in have
    assert Selector("unix", "gid", str(os.getgid())) in have
    assert Selector("unix", "user", pwd.getpwuid(os.getuid()).pw_name) in have
    assert Selector("unix", "group", grp.getgrgid(os.getgid()).gr_name) in have
    assert Selector("unix", "path", "/usr/bin/python3") in have


def test_every_selector_of_an_entry_must_match() -> None:
    me = _me()
    uid = Selector.parse(f"unix:uid:{os.getuid()}")
    path = Selector.parse("unix:path:/usr/bin/python3")
    other_path = Selector.parse("unix:path:/usr/bin/envoy")
    assert matches((uid,), me)
    assert matches((uid, path), me)
    assert not matches((uid, other_path), me)
    assert not matches((Selector.parse(f"unix:uid:{os.getuid() + 1}"),), me)


def test_entry_without_selectors_matches_nobody() -> None:
    assert not matches((), _me())
    assert not matches(frozenset(), _me())


def test_caller_without_a_known_exe_never_matches_a_path_selector() -> None:
    me = _me(exe=None)
    assert not matches((Selector.parse("unix:path:/usr/bin/python3"),), me)
    assert matches((Selector.parse(f"unix:uid:{os.getuid()}"),), me)


def test_supplementary_groups_count_by_gid_and_name() -> None:
    extra = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    me = Caller(
        uid=os.getuid(),
        gid=os.getgid(),
        pid=os.getpid(),
        supplementary_gids=frozenset({extra.gr_gid}),
    )
    assert matches((Selector.parse(f"unix:gid:{extra.gr_gid}"),), me)
    assert matches((Selector.parse(f"unix:group:{extra.gr_name}"),), me)
    alone = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
    assert not matches((Selector.parse(f"unix:gid:{extra.gr_gid}"),), alone)


def test_unknown_uid_has_no_user_selector_but_still_its_uid() -> None:
    unused = next(u for u in range(60000, 65000) if not _uid_exists(u))
    ghost = Caller(uid=unused, gid=unused, pid=1)
    have = ghost.selectors()
    assert Selector("unix", "uid", str(unused)) in have
    assert not any(s.key == "user" for s in have)


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
