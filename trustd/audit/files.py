"""Durable file primitives of the audit log: whole writes, atomic replaces, fsyncs, the lock.

Every failure becomes an ``AuditWriteError`` whose message says what to do (a full
disk, a read-only mount, permissions), never a bare ``OSError``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path

from trustd.audit.errors import AuditWriteError
from trustd.audit.segments import LOCK_FILE


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "EIO")


def write_error(action: str, where: Path, exc: OSError) -> AuditWriteError:
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = f"the disk holding {where} is full: free space, then retry"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"trustd may not write {where}: fix its permissions or mount it read-write"
    else:
        hint = f"check the disk and the filesystem holding {where}"
    return AuditWriteError(f"cannot {action} ({errno_name(exc)}): {hint}")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def lock_directory(directory: Path) -> int:
    """Create the directory (0700) and take its advisory lock; returns the lock's fd.

    One writer process per directory: a second one gets an AuditWriteError that says so.
    Closing the fd drops the lock.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if directory.stat().st_mode & 0o077:
            os.chmod(directory, 0o700)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise write_error("set up the audit directory", directory, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise AuditWriteError(
            f"audit log {directory} is in use by another trustd process: stop it, "
            "or give this one its own data directory"
        ) from exc
    return fd
