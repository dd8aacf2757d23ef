"""Real peers for the server-level KMS tests: OpenBao (dev and raft-backed) and SoftHSM2.

The peer helpers of tests/integration/kms (kms_peers) are reused, not copied:
that directory goes on sys.path here. A missing binary makes a test fail,
never skip.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_KMS_DIR = str(Path(__file__).resolve().parents[1] / "kms")
if _KMS_DIR not in sys.path:
    sys.path.insert(0, _KMS_DIR)

from kms_peers import BaoDevServer, SilentServer  # noqa: E402 - needs the path above
from kms_server_harness import BaoRaftServer, SoftHsmToken, init_softhsm_token  # noqa: E402


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoDevServer]:
    """A `bao server -dev` of the test's own with transit and pki (an EC root) mounted."""
    server = BaoDevServer(tmp_path / "bao")
    server.start()
    try:
        server.enable_engines()
        yield server
    finally:
        server.stop()


@pytest.fixture
def bao_raft(tmp_path: Path) -> Iterator[BaoRaftServer]:
    """A `bao server` on raft storage: initialised, unsealed, and surviving a restart."""
    server = BaoRaftServer(tmp_path / "bao-raft")
    server.start()
    try:
        server.initialise()
        server.enable_engines()
        yield server
    finally:
        server.stop()


@pytest.fixture
def softhsm_token(tmp_path: Path) -> SoftHsmToken:
    """A fresh SoftHSM2 token in a tmp dir; only subprocesses load it (SOFTHSM2_CONF in env)."""
    return init_softhsm_token(tmp_path / "softhsm")


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
