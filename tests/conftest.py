"""Suite-wide set-up.

Several tests run processes under other uids (1000, 1001, ...) to show that the
kernel, not the caller, decides identity. Those processes need to read the
checkout (trustd's sources, the venv's site-packages, Envoy's binary). A fresh
clone may sit in a 0700 directory (``mktemp -d``), so, when the suite runs as
root, each directory above the checkout that lacks it gets the traverse bit for
others (o+x: enter, not list), and the checkout itself o+rx (Python's importer
lists the directories on its path), for the length of the run; every mode is
put back afterwards.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _checkout_traversable_by_other_uids() -> Iterator[None]:
    changed: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        for directory in (ROOT, *ROOT.parents):
            mode = stat.S_IMODE(directory.stat().st_mode)
            need = stat.S_IXOTH | (stat.S_IROTH if directory == ROOT else 0)
            if mode & need != need:
                os.chmod(directory, mode | need)
                changed.append((directory, mode))
    try:
        yield
    finally:
        for directory, mode in reversed(changed):
            os.chmod(directory, mode)
