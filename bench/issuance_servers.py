"""X.509-SVID issuance through N ``trustd server`` processes on one PostgreSQL and one
OpenBao transit key: throughput and latency percentiles (``issuance.py --servers N``).

Everything is started here: PostgreSQL (Debian's ``initdb``/``pg_ctl``, fsync off, in
a temporary directory), ``bao server -dev`` with transit, and N servers with
``store: postgresql`` and ``keyManager: vault-transit``. Load: ``--clients`` concurrent
callers of the admin API's ``SvidMint`` (a CSR made up front, one RPC per SVID),
spread round robin over the servers' admin sockets, for ``--seconds``. Each SVID is
signed by the transit key (one HTTP round trip to bao), verified, written to the
ledger in PostgreSQL and audited in the server's own log.

On a small machine the servers, PostgreSQL, bao and the load generator share the same
cores: a second server adds parallel Python (one event loop and GIL per server) but
no core, so expect the figure to be bounded by the CPU, not by the number of servers.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.client import Channel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kms_transit import Bao, free_port_pair  # type: ignore[import-not-found]

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.admin.v1.admin_grpc import AdminStub

TRUSTD = str(Path(sys.executable).parent / "trustd")
TD = "trustd.local"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"PostgreSQL's {name} is missing: install Debian's postgresql")
    return found[-1]


class Postgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pg"
        self.port = free_port_pair()
        os.chown(root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        self._as_pg(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "trustd",
                    "--no-sync")  # fmt: skip
        self._as_pg(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(root / "pg.log"), "-w",
                    "-o", f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start")  # fmt: skip
        self.dsn = f"postgresql://trustd@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, *cmd: str) -> None:
        if os.getuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{cmd[-1]} failed: {out.stderr[-2000:]}")

    def stop(self) -> None:
        self._as_pg(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")


def _start_servers(
    tmp: Path, n: int, dsn: str, bao: Bao
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    token = tmp / "bao-token"
    token.write_text(bao.token)
    os.chmod(token, 0o600)
    out = []
    for i in range(n):
        data = tmp / f"srv{i}"
        cfg = tmp / f"srv{i}.yaml"
        cfg.write_text(yaml.safe_dump({
            "trustDomain": TD, "dataDir": str(data),
            "serverAddress": f"127.0.0.1:{free_port_pair()}", "metricsAddress": "127.0.0.1:0",
            "logLevel": "warning",
            "store": {"kind": "postgresql", "dsn": dsn},
            "keyManager": {"kind": "vault-transit", "address": bao.address,
                           "tokenFile": str(token), "timeout": 30},
        }))  # fmt: skip
        with (tmp / f"srv{i}.log").open("wb") as log:
            proc = subprocess.Popen([TRUSTD, "server", "--config", str(cfg)],
                                    stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        out.append((proc, data / "admin.sock"))
        _wait_ready(proc, data / "admin.sock", tmp / f"srv{i}.log")  # one at a time: one CA
    return out


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited at start:\n{log.read_text()[-3000:]}")
        out = subprocess.run([TRUSTD, "--admin-socket", str(sock), "bundle", "show"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        if "BEGIN CERTIFICATE" in out.stdout:
            return
        time.sleep(0.5)
    raise SystemExit(f"a server did not become ready:\n{log.read_text()[-3000:]}")


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


async def _load(sockets: list[Path], clients: int, seconds: float) -> tuple[int, int, list[float]]:
    channels = [Channel(path=str(s)) for s in sockets]
    stubs = [AdminStub(c) for c in channels]
    csrs = [_csr() for _ in range(32)]
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        stub = stubs[i % len(stubs)]
        n = 0
        while time.monotonic() < stop_at:
            req = pb.MintX509SvidRequest(
                spiffe_id=f"spiffe://{TD}/bench/{i}", csr=csrs[n % len(csrs)], ttl_seconds=600
            )
            n += 1
            t0 = time.perf_counter()
            try:
                await stub.SvidMint(req, timeout=60)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.monotonic() - t0
    finally:
        for c in channels:
            c.close()
    return int(len(latencies) / elapsed * 1000), errors, latencies


def run(servers: int, clients: int, seconds: float, warmup: float) -> None:
    if shutil.which("runuser") is None and os.getuid() == 0:
        raise SystemExit("runuser is needed to start PostgreSQL as its own user")
    with tempfile.TemporaryDirectory(prefix="trustd-bench-ha-") as tmpname:
        tmp = Path(tmpname)
        os.chmod(tmp, 0o755)
        (tmp / "bao").mkdir()
        pg_root = tmp / "pgroot"
        pg_root.mkdir()
        pg = Postgres(pg_root)
        bao = Bao(tmp / "bao")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            started = _start_servers(tmp, servers, pg.dsn, bao)
            procs = [p for p, _ in started]
            sockets = [s for _, s in started]
            asyncio.run(_load(sockets, clients, warmup))  # connections, caches, JIT of the OS
            rate_milli, errors, lat = asyncio.run(_load(sockets, clients, seconds))
            lat.sort()
            p50 = statistics.median(lat) * 1000 if lat else float("nan")
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
            print(
                f"servers={servers} clients={clients} seconds={seconds:g} cpus={os.cpu_count()}: "
                f"{rate_milli / 1000:.1f} SVIDs/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"{len(lat)} issued, {errors} failed"
            )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            bao.stop()
            pg.stop()
