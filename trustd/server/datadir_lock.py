"""One trustd per data directory: an exclusive ``flock`` on ``D/trustd.lock``.

A second ``trustd up`` or ``trustd server`` on the same data directory must
refuse at once, before it binds a port or removes a socket the first one
serves. The lock is held for the life of the process and released by the
kernel when it exits, however it exits; the file (with the holder's pid, for
the message) is left in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from trustd.errors import FailedPreconditionError

LOCK_NAME = "trustd.lock"


class DataDirInUseError(FailedPreconditionError):
    """Another trustd process holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise DataDirInUseError(
                f"another trustd is running on the data directory {self.path.parent}{who}: "
                "stop it first, or give this one its own --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
