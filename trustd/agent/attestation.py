"""Who is on the other end of the agent socket, as the kernel says.

uid and gid come from one ``SO_PEERCRED`` read, taken when the connection is
accepted; they are fixed by the kernel at ``connect()`` and cannot be forged by
the caller. The pid from the same read is only a hint: by the time it is used
the process may be gone and the number reused. So the executable and the
supplementary groups are read through a directory handle on ``/proc/PID``
(which keeps pointing at that very process, and fails once it is gone), and
accepted only when:

- the process start time (field 22 of ``stat``) is the same before and after;
- ``SO_PEERCRED`` still reports the same pid;
- the process's effective uid is still the uid of the connection.

Otherwise ``exe`` is ``None`` and no supplementary group is added, so a
``unix:path`` selector cannot match. This is SPIRE's approach on Linux.

Known limit (as in SPIRE): a process may ``exec`` another binary after
``connect()``; the agent sees the binary running at accept time.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import structlog

from trustd.errors import InvalidArgumentError
from trustd.selectors import Caller

log = structlog.get_logger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _SockOpt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def peer_credentials(sock: _SockOpt) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _start_time(dir_fd: int) -> int:
    stat = _read_at(dir_fd, "stat")
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(b")") + 2 :].split()
    return int(rest[19])  # field 22 overall: fields 3.. start at rest[0]


def _status_fields(dir_fd: int) -> tuple[int | None, frozenset[int]]:
    """Effective uid and supplementary groups from /proc/PID/status."""
    euid: int | None = None
    groups: frozenset[int] = frozenset()
    for line in _read_at(dir_fd, "status").splitlines():
        if line.startswith(b"Uid:"):
            parts = line.split()
            euid = int(parts[2])  # real, effective, saved, fs
        elif line.startswith(b"Groups:"):
            groups = frozenset(int(g) for g in line.split()[1:])
    return euid, groups


def attest(sock: _SockOpt, *, proc_root: str = "/proc") -> Caller:
    """Build the caller of a connected Unix socket from the kernel's word alone."""
    pid, uid, gid = peer_credentials(sock)
    exe: str | None = None
    groups: frozenset[int] = frozenset()
    if pid > 0:
        try:
            dir_fd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            dir_fd = -1
        if dir_fd >= 0:
            try:
                before = _start_time(dir_fd)
                path = os.readlink("exe", dir_fd=dir_fd)
                euid, sup = _status_fields(dir_fd)
                after = _start_time(dir_fd)
                same_pid = peer_credentials(sock)[0] == pid
                if before == after and same_pid and euid == uid:
                    exe, groups = path, sup
                else:
                    log.warning(
                        "caller process changed during attestation",
                        pid=pid,
                        uid=uid,
                        same_start_time=before == after,
                        same_pid=same_pid,
                        same_uid=euid == uid,
                    )
            except (OSError, ValueError, IndexError) as exc:
                # The process is gone, or /proc is not readable for it: uid/gid still hold.
                log.debug("caller process not readable", pid=pid, error=type(exc).__name__)
            finally:
                os.close(dir_fd)
    return Caller(uid=uid, gid=gid, pid=pid, exe=exe, supplementary_gids=groups)


Attestor = Callable[[_SockOpt], Caller]


def describe_process(pid: int, *, proc_root: str = "/proc") -> Caller:
    """The caller a running process would be on the agent socket (for ``entry show
    --caller``): its effective uid and gid, supplementary groups and executable, read
    from /proc. A diagnostic, not an attestation: nothing is checked against a socket."""
    try:
        dir_fd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise InvalidArgumentError(f"no process with pid {pid}") from None
    try:
        uid = gid = None
        groups: frozenset[int] = frozenset()
        for line in _read_at(dir_fd, "status").splitlines():
            if line.startswith(b"Uid:"):
                uid = int(line.split()[2])
            elif line.startswith(b"Gid:"):
                gid = int(line.split()[2])
            elif line.startswith(b"Groups:"):
                groups = frozenset(int(g) for g in line.split()[1:])
        try:
            exe: str | None = os.readlink("exe", dir_fd=dir_fd)
        except OSError:
            exe = None  # another user's process, without the privilege to read it
    finally:
        os.close(dir_fd)
    if uid is None or gid is None:
        raise InvalidArgumentError(f"cannot read the credentials of pid {pid}")
    return Caller(uid=uid, gid=gid, pid=pid, exe=exe, supplementary_gids=groups)


def describe_uid(uid: int) -> Caller:
    """A process of this uid started the usual way: the user's primary and other groups."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Caller(uid=uid, gid=uid, pid=0)
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Caller(uid=uid, gid=entry.pw_gid, pid=0, supplementary_gids=groups)
