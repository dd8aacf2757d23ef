"""Two `trustd server`s on one PostgreSQL and one OpenBao act as one; one is killed under load.

Started by the test: PostgreSQL (Debian's), `bao server -dev` with transit, servers A
and B (``store: postgresql``, ``keyManager: vault-transit``), two agents given both
servers (agent 1 prefers A, agent 2 prefers B), a server proxy (uid 0, through agent 1)
in front of an HTTP app and a client proxy (uid 65534, through agent 2) calling it,
steady HTTP requests through the client proxy and steady `svid mint` through B.

What must hold:
- before the kill, `policy status` through either server shows both proxies, though
  each reports through another server;
- A is killed with SIGKILL: not one HTTP request and not one mint fails; agent 1
  fails over to B;
- a rollout to STRICT started through B after the kill completes over both proxies,
  and the wire is mTLS;
- A restarts and rejoins: it serves (a mint through it), shows the rollout and both
  proxies; its audit shipper catches up, so every line of A's chain is in the
  database, `audit verify` through B reports both chains intact and `audit export`
  through B has both chains in time order;
- every minted serial is in the ledger, none twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography import x509
from stack_helpers import TRUSTD, free_port
from store.conftest import fresh_db, postgres_dsn  # noqa: F401 - the PostgreSQL fixtures

_KMS_DIR = str(Path(__file__).resolve().parent / "kms")  # the bao helpers, as kms_server does
if _KMS_DIR not in sys.path:
    sys.path.insert(0, _KMS_DIR)
from kms_peers import BaoDevServer  # noqa: E402 - needs the path above

pytestmark = pytest.mark.integration

TD = "trustd.local"
SERVER_ID = f"spiffe://{TD}/ns/shop/sa/server"
CLIENT_ID = f"spiffe://{TD}/ns/shop/sa/client"
MINTED_ID = f"spiffe://{TD}/ns/batch/sa/job"
CLIENT_UID = 65534


def _until(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # a peer still coming up
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{what}: gave up, last {last!r}")


def _run(admin: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRUSTD, "--admin-socket", str(admin), *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _cli(admin: Path, *args: str) -> str:
    out = _run(admin, *args)
    assert out.returncode == 0, f"trustd {' '.join(args)}: {out.stderr}"
    return out.stdout


def _json(admin: Path, *args: str) -> Any:
    return json.loads(_cli(admin, *args, "-o", "json"))


class Server:
    def __init__(self, tmp: Path, name: str, dsn: str, bao: BaoDevServer, token_file: Path) -> None:
        self.name = name
        self.data = tmp / name
        self.port = free_port()
        self.cfg = tmp / f"{name}.yaml"
        self.log = tmp / f"{name}.log"
        self.cfg.write_text(yaml.safe_dump({
            "trustDomain": TD,
            "dataDir": str(self.data),
            "serverAddress": f"127.0.0.1:{self.port}",
            "metricsAddress": "127.0.0.1:0",
            "store": {"kind": "postgresql", "dsn": dsn},
            "keyManager": {"kind": "vault-transit", "address": bao.address,
                           "tokenFile": str(token_file)},
            "rollout": {"settlePeriod": "3s"},
        }))  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> Path:
        return self.data / "admin.sock"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [TRUSTD, "server", "--config", str(self.cfg)], stdout=subprocess.DEVNULL, stderr=log
            )
        _until(f"server {self.name} ready", self._ready)

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        return "BEGIN CERTIFICATE" in _run(self.admin, "bundle", "show").stdout

    def server_id(self) -> str:
        return (self.data / "server-id").read_text().strip()


class Traffic:
    """Steady HTTP requests through the client proxy's outbound listener, from a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
            return b"".join(chunks)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self._get()
            except OSError as exc:
                reply = repr(exc).encode()
            if reply.startswith(b"HTTP/1.0 200") and reply.rstrip().endswith(b"</html>"):
                self.ok += 1
            else:
                self.failures.append(f"request {n}: {reply[:100]!r}")
            self._stop.wait(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Minting:
    """`trustd svid mint` in a loop through one server's admin socket; the serials."""

    def __init__(self, admin: Path, out: Path) -> None:
        self.admin = admin
        self.out = out
        self.serials: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            d = self.out / f"m{n}"
            out = _run(self.admin, "svid", "mint", "--spiffe-id", MINTED_ID, "--out-dir", str(d),
                       "--ttl", "10m")  # fmt: skip
            if out.returncode != 0:
                self.failures.append(f"mint {n}: {out.stderr.strip()[:300]}")
                continue
            cert = x509.load_pem_x509_certificate((d / "svid.pem").read_bytes())
            self.serials.append(format(cert.serial_number, "x"))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # uid 65534 must reach the client proxy's config and agent 2's socket: a directory of
    # its own in /tmp, open to traverse (pytest's tmp_path sits in a 0700 directory).
    tmp = Path(tempfile.mkdtemp(prefix="trustd-ha-"))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_servers_act_as_one_and_survive_a_kill(workdir: Path, fresh_db: str) -> None:  # noqa: F811
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to start the client proxy as another uid")
    tmp = workdir
    bao = BaoDevServer(tmp / "bao")
    bao.start()
    procs: list[subprocess.Popen[bytes]] = []
    a = b = None
    traffic: Traffic | None = None
    minting: Minting | None = None
    try:
        bao.client().sys.enable_secrets_engine("transit", path="transit")
        token_file = tmp / "bao-token"
        token_file.write_text(bao.root_token)
        os.chmod(token_file, 0o600)
        a = Server(tmp, "a", fresh_db, bao, token_file)
        b = Server(tmp, "b", fresh_db, bao, token_file)
        a.start()
        b.start()
        assert _cli(a.admin, "bundle", "show") == _cli(b.admin, "bundle", "show")  # one CA
        bundle = tmp / "bundle.pem"
        bundle.write_text(_cli(a.admin, "bundle", "show"))
        _cli(a.admin, "entry", "create", "--spiffe-id", SERVER_ID, "--selector", "unix:uid:0")
        _cli(b.admin, "entry", "create", "--spiffe-id", CLIENT_ID,
             "--selector", f"unix:uid:{CLIENT_UID}")  # fmt: skip

        # Two agents, each given both servers: agent 1 prefers A, agent 2 prefers B.
        socks = []
        for i, order in ((1, (a, b)), (2, (b, a))):
            token = _cli(a.admin, "token", "create", "--ttl", "5m").strip()
            adir = tmp / f"agent{i}"
            sock = tmp / f"sock{i}" / "agent.sock"  # reachable by uid 65534 (the data dir is not)
            sock.parent.mkdir(mode=0o755)
            cfg = tmp / f"agent{i}.yaml"
            cfg.write_text(
                f"serverAddress: {order[0].address},{order[1].address}\n"
                f"joinToken: {token}\ntrustBundlePath: {bundle}\ndataDir: {adir}\nagentSocket: {sock}\n"
                "metricsAddress: 127.0.0.1:0\n"
            )
            with (tmp / f"agent{i}.log").open("wb") as log:
                procs.append(subprocess.Popen([TRUSTD, "agent", "--config", str(cfg)],
                                              stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
            _until(f"agent {i} socket", sock.exists)
            socks.append(sock)

        app_port, inbound, outbound = free_port(), free_port(), free_port()
        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text("<html>" + "x" * 2000 + "</html>\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(app_port),
             "--bind", "127.0.0.1"], cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        server_conf = tmp / "server-proxy.yaml"
        server_conf.write_text(
            f"agentSocket: {socks[0]}\nproxyId: server-1\nreportInterval: 500ms\n"
            f"inbound:\n  - port: {inbound}\n    app: 127.0.0.1:{app_port}\n"
        )
        with (tmp / "server-proxy.log").open("wb") as log:
            procs.append(subprocess.Popen([TRUSTD, "proxy", "--config", str(server_conf)],
                                          stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
        client_conf = tmp / "client-proxy.yaml"
        client_conf.write_text(
            f"agentSocket: {socks[1]}\nproxyId: client-1\nreportInterval: 500ms\n"
            f"outbound:\n  - listen: 127.0.0.1:{outbound}\n    destination: {SERVER_ID}\n"
            f"    address: 127.0.0.1:{inbound}\n"
        )
        os.chmod(client_conf, 0o644)
        with (tmp / "client-proxy.log").open("wb") as log:
            procs.append(subprocess.Popen(
                ["setpriv", f"--reuid={CLIENT_UID}", f"--regid={CLIENT_UID}", "--clear-groups",
                 TRUSTD, "proxy", "--config", str(client_conf)],
                stdout=subprocess.DEVNULL, stderr=log, cwd="/",
                env=dict(os.environ, HOME="/", PYTHONDONTWRITEBYTECODE="1"),
            ))  # fmt: skip

        # Each proxy reports through its own agent's server; either server shows both.
        def both_shown(srv: Server) -> bool:
            rows = _json(srv.admin, "policy", "status")["enforcement"]
            return {r["side"] for r in rows} == {"server", "client"}

        _until("A shows both proxies", lambda: both_shown(a), timeout=180)
        _until("B shows both proxies", lambda: both_shown(b), timeout=60)

        traffic = Traffic(outbound)
        traffic.start()
        _until("requests flow through the proxies", lambda: traffic.ok >= 5 or traffic.failures)
        assert not traffic.failures, traffic.failures[:5]
        mints = tmp / "mints"
        mints.mkdir()
        minting = Minting(b.admin, mints)
        minting.start()
        _until("mints through B", lambda: len(minting.serials) >= 2 or minting.failures)

        # Kill A under load.
        assert a.proc is not None
        a_id = a.server_id()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=30)
        _until("agent 1 moved to B", lambda: "failing over" in (tmp / "agent1.log").read_text(
            errors="replace"), timeout=180)  # fmt: skip
        before = len(minting.serials)
        _until("mints go on through B", lambda: len(minting.serials) >= before + 3, timeout=180)

        # A rollout to STRICT started through the survivor completes over both proxies.
        started = _json(b.admin, "rollout", "start", "--selector", SERVER_ID, "--to", "STRICT")
        assert started["state"] == "running", started

        def complete() -> dict[str, Any] | None:
            st: dict[str, Any] = _json(b.admin, "rollout", "status")
            assert st["state"] == "running" or st["state"] == "complete", st
            return st if st["state"] == "complete" else None

        status = _until("the rollout completes", complete, timeout=300)
        rows = status["enforcement"]
        assert {(r["side"], r["enforced"]) for r in rows} == {("server", "STRICT"),
                                                              ("client", "mtls")}, rows  # fmt: skip

        # A restarts, rejoins and serves.
        a.start()
        assert a.server_id() == a_id
        assert _json(a.admin, "rollout", "status")["state"] == "complete"
        _until("A shows both proxies again", lambda: both_shown(a), timeout=60)
        out = tmp / "mint-a"
        _cli(a.admin, "svid", "mint", "--spiffe-id", MINTED_ID, "--out-dir", str(out))
        a_serial = format(
            x509.load_pem_x509_certificate((out / "svid.pem").read_bytes()).serial_number, "x"
        )

        minting.stop()
        traffic.stop()
        assert not traffic.failures, traffic.failures[:5]
        assert not minting.failures, minting.failures[:5]
        assert traffic.ok > 20 and len(minting.serials) > 5, (traffic.ok, len(minting.serials))

        # No lost or duplicate ledger row.
        serials = [*minting.serials, a_serial]
        assert len(set(serials)) == len(serials)
        with psycopg.connect(fresh_db) as conn:
            ledger = {
                str(r[0]).lower().lstrip("0") for r in conn.execute("SELECT serial FROM ledger")
            }
        missing = [s for s in serials if s.lstrip("0") not in ledger]
        assert not missing, missing[:5]

        # A's whole chain (up to its kill and since its restart) is in the database...
        def a_lines() -> list[str]:
            return [line for f in sorted((a.data / "audit").glob("audit-*.jsonl"))
                    for line in f.read_text().splitlines() if line]  # fmt: skip

        mirrored: list[int] = []

        def a_mirrored() -> bool:
            local = a_lines()
            with psycopg.connect(fresh_db) as conn:
                rows = conn.execute(
                    "SELECT line FROM audit_events WHERE server_id = %s ORDER BY seq", (a_id,)
                ).fetchall()
            mirrored.append(len(rows))
            return [r[0] for r in rows] == local

        _until("A's shipper caught up", a_mirrored, timeout=120)
        # ... and `audit verify` through B covers both chains.
        report = _json(b.admin, "audit", "verify")
        assert report["ok"], report
        assert report["server_id"] == b.server_id()
        assert [s["server_id"] for s in report["servers"]] == [a_id], report
        assert report["servers"][0]["ok"], report
        assert report["servers"][0]["events_checked"] >= mirrored[-1] > 0, report
        # `audit export` through B: both chains, in time order, A's lines exactly as stored.
        exported = _cli(b.admin, "audit", "export").splitlines()
        a_set = set(a_lines()[: mirrored[-1]])
        assert a_set <= set(exported), len(a_set - set(exported))
        b_local = [line for f in sorted((b.data / "audit").glob("audit-*.jsonl"))
                   for line in f.read_text().splitlines() if line]  # fmt: skip
        assert set(b_local[:-1]) <= set(exported)  # its last line may be the export's own event
        times = [json.loads(line)["time"] for line in exported]
        assert times == sorted(times)
    finally:
        for t in (traffic, minting):
            if t is not None:
                t.stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for s in (a, b):
            if s is not None and s.proc is not None and s.proc.poll() is None:
                s.proc.terminate()
        for p in [*procs, *(s.proc for s in (a, b) if s is not None and s.proc is not None)]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        bao.stop()
