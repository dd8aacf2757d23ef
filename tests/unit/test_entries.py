"""Which entries a process matches, which one is its default, and which entries can meet."""

from __future__ import annotations

import datetime as dt
import os
import pwd

import pytest

from trustd.agent.attestation import describe_process, describe_uid
from trustd.entries import RegistrationEntry, default_order, entries_for, may_overlap
from trustd.errors import InvalidArgumentError
from trustd.selectors import Caller, Selector
from trustd.spiffeid import SpiffeId

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def sel(*texts: str) -> tuple[Selector, ...]:
    return tuple(Selector.parse(t) for t in texts)


def entry(
    name: str, *selectors: str, revision: int, created: dt.datetime = T0
) -> RegistrationEntry:
    return RegistrationEntry(
        id=f"id-{name}",
        spiffe_id=SpiffeId.parse(f"spiffe://trustd.local/ns/t/sa/{name}"),
        selectors=sel(*selectors),
        revision=revision,
        created_at=created,
    )


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        (("unix:uid:0",), ("unix:gid:1101",), True),  # root with its group changed: the README trap
        (("unix:uid:0",), ("unix:uid:1101",), False),
        (("unix:uid:1101",), ("unix:uid:1101", "unix:gid:5"), True),
        (
            ("unix:gid:1101",),
            ("unix:gid:1102",),
            True,
        ),  # supplementary groups: one process has both
        (("unix:path:/usr/bin/envoy",), ("unix:path:/usr/bin/curl",), False),
        (("unix:path:/usr/bin/envoy",), ("unix:uid:0",), True),
        (("unix:user:root",), ("unix:uid:0",), True),  # the same uid, by name
        (("unix:user:root",), ("unix:uid:1101",), False),
        (("unix:user:no-such-user-x",), ("unix:user:no-such-user-y",), False),
    ],
)
def test_may_overlap(a: tuple[str, ...], b: tuple[str, ...], meet: bool) -> None:
    assert may_overlap(sel(*a), sel(*b)) is meet
    assert may_overlap(sel(*b), sel(*a)) is meet


def test_the_default_is_the_oldest_entry_even_within_one_second() -> None:
    # created_at is kept to the second: the registry's revision orders entries of one second
    # (ids are random UUIDs and must not decide)
    old = entry("zzz-envoy", "unix:uid:0", revision=1)
    new = entry("aaa-backend", "unix:gid:1101", revision=2)
    root_in_group = Caller(uid=0, gid=1101, pid=1)
    assert [e.id for e in entries_for([new, old], root_in_group)] == [
        "id-zzz-envoy",
        "id-aaa-backend",
    ]
    later = entry("b", "unix:uid:0", revision=0, created=T0 + dt.timedelta(seconds=1))
    assert sorted([later, old], key=default_order)[0] is old
    assert entries_for([old, new], Caller(uid=1101, gid=1101, pid=1)) == [new]


def test_describe_this_process_and_a_uid() -> None:
    me = describe_process(os.getpid())
    assert (me.uid, me.gid) == (os.geteuid(), os.getegid())
    assert me.exe is not None and os.path.isabs(me.exe)
    with pytest.raises(InvalidArgumentError, match="no process with pid"):
        describe_process(2**22 + 12345)
    root = describe_uid(0)
    assert (root.uid, root.gid) == (0, pwd.getpwuid(0).pw_gid)
    assert describe_uid(54321) == Caller(uid=54321, gid=54321, pid=0)  # no passwd entry
