"""Caller attestation from kernel peer credentials, with real processes under real uids."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fakes import other_user_env, python_for_other_users, world_dir

from trustd.agent.attestation import attest, peer_credentials
from trustd.selectors import Selector

CHILD = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
mode = sys.argv[2]
if mode == "setuid-after-connect":
    os.setgid(1000)
    os.setuid(1000)
print("connected", flush=True)
if mode == "exit":
    sys.exit(0)
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, Path]]:
    d = world_dir()
    path = d / "attest.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    path.chmod(0o777)
    srv.listen(8)
    try:
        yield srv, path
    finally:
        srv.close()
        path.unlink(missing_ok=True)
        d.rmdir()


def _child(path: Path, mode: str, **kw: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [python_for_other_users(), "-c", CHILD, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=other_user_env(),
        **kw,  # type: ignore[call-overload]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "connected"
    return proc


def test_own_process_is_attested_with_exe_and_groups() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        caller = attest(a)
    assert (caller.uid, caller.gid, caller.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert caller.exe == os.path.realpath(sys.executable)
    assert caller.supplementary_gids == frozenset(os.getgroups())
    assert Selector.parse(f"unix:path:{caller.exe}") in caller.selectors()


def test_process_under_another_uid(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    proc = _child(path, "wait", user=1001, group=1002, extra_groups=[1003])
    try:
        conn, _ = srv.accept()
        with conn:
            caller = attest(conn)
        assert (caller.uid, caller.gid, caller.pid) == (1001, 1002, proc.pid)
        assert caller.exe == python_for_other_users()
        assert caller.supplementary_gids == frozenset({1003})
        assert Selector.parse("unix:uid:1001") in caller.selectors()
        assert Selector.parse("unix:gid:1003") in caller.selectors()
    finally:
        proc.communicate("")


def test_gone_process_keeps_uid_but_loses_exe(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    proc = _child(path, "exit", user=1001, group=1001)
    proc.wait()
    conn, _ = srv.accept()
    with conn:
        caller = attest(conn)
    # The kernel still vouches for uid/gid at connect(); the pid no longer names that process.
    assert (caller.uid, caller.gid) == (1001, 1001)
    assert caller.exe is None
    assert caller.supplementary_gids == frozenset()
    assert not any(s.key == "path" for s in caller.selectors())


def test_uid_changed_after_connect_loses_exe(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    proc = _child(path, "setuid-after-connect")  # connects as root, then drops to 1000
    try:
        conn, _ = srv.accept()
        with conn:
            caller = attest(conn)
            assert peer_credentials(conn)[1] == 0
        assert caller.uid == 0  # what the kernel recorded at connect()
        assert caller.exe is None  # the process is no longer what connected
    finally:
        proc.communicate("")


def test_uid_comes_from_the_kernel_not_the_peer() -> None:
    # Whatever a peer writes, the credentials are the kernel's.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.sendall(b"uid=0 pid=1 exe=/usr/bin/envoy")
        caller = attest(a)
    assert caller.pid == os.getpid()
    assert caller.exe != "/usr/bin/envoy"
