"""Real peers for the KMS tests: `bao server -dev` (OpenBao) and a SoftHSM2 token.

Both are started here, on 127.0.0.1 ephemeral ports and in tmp dirs, and a
missing binary makes the tests fail, never skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kms_peers import SOFTHSM_MODULE, BaoDevServer, SilentServer, SoftHsm


def _start(workdir: Path, *, tls: bool = False) -> BaoDevServer:
    server = BaoDevServer(workdir, tls=tls)
    server.start()
    server.enable_engines()
    return server


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoDevServer]:
    """A shared dev server with transit and pki (a generated EC root) mounted. Do not seal it."""
    server = _start(tmp_path_factory.mktemp("bao-shared"))
    yield server
    server.stop()


@pytest.fixture
def bao_private(tmp_path: Path) -> Iterator[BaoDevServer]:
    """A dev server of the test's own, to seal, stop or restart."""
    server = _start(tmp_path / "bao")
    yield server
    server.stop()


@pytest.fixture
def bao_tls(tmp_path: Path) -> Iterator[BaoDevServer]:
    server = _start(tmp_path / "bao-tls", tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Two freshly initialised SoftHSM2 tokens in a tmp dir with their own SOFTHSM2_CONF.

    SoftHSM reads SOFTHSM2_CONF when the module is first loaded into the process,
    so this fixture is session-wide and sets the variable before any test loads it.
    """
    util = shutil.which("softhsm2-util")
    assert util is not None, "softhsm2-util is missing: apt-get install softhsm2"
    assert SOFTHSM_MODULE.exists(), f"{SOFTHSM_MODULE} is missing: apt-get install softhsm2"
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    hsm = SoftHsm(
        module=SOFTHSM_MODULE,
        conf=conf,
        token_label="trustd-ca",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
        other_label="trustd-other",
        other_pin=secrets.token_hex(8),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        for label, pin in ((hsm.token_label, hsm.pin), (hsm.other_label, hsm.other_pin)):
            subprocess.run(
                [
                    util,
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    pin,
                    "--so-pin",
                    hsm.so_pin,
                ],
                check=True,
                capture_output=True,
                env=dict(os.environ),
            )
        yield hsm


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
