"""X.509-SVID issuance rate on one core, beside the crypto floor measured in the same run.

What is timed: CSR bytes (PEM) in, signed certificate PEM out, through the
real issuance path with the local key manager (an encrypted key file under a
temporary directory), in process:

- ``issuer``: ``load_csr`` (parse, key checks, CSR signature check),
  ``X509Issuer.validity`` and ``X509Issuer.sign`` (DER TBS from the CA's
  template, KMS signature, certificate parsed back), then PEM;
- ``core``: ``ServerCore.issue_svids``, which adds the ledger write to a
  SQLite file, metrics and the audit sink (a no-op one here: the audit
  log has its own benchmark), then PEM.

The floor is one ECDSA P-256 verify (the CSR) plus one sign (the
certificate) per SVID: ``1 / (1/sign_rate + 1/verify_rate)``, measured with
``openssl speed ecdsap256`` and with ``cryptography``'s raw sign and verify
on the same core. With a remote or HSM key manager trustd also verifies every
signature it gets back, so its crypto work is one sign and two verifies; that
bound is printed too. The local key manager signs in process, and only the
first batch signed with each CA is verified (``kms.base.signs_in_process``).

Usage: ``python bench/issuance.py [--cpu 0] [--runs 5] [--seconds 2] [--profile]``
       ``python bench/issuance.py --kms vault-transit`` (against a bao it starts, beside
       OpenBao PKI's sign-verbatim on the same process) and ``--audit`` (audited against
       unaudited issuance); see bench/issuance_modes.py.
       ``python bench/issuance.py --servers 1|2 [--clients 8] [--seconds 2]``: through N
       server processes on PostgreSQL and a transit key (bench/issuance_servers.py).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trustd.audit import Actor
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.issuer import SvidTemplate, X509Issuer, csr_spki, load_csr
from trustd.ca.kms.local import LocalKeyManager
from trustd.clock import SystemClock
from trustd.entries import RegistrationEntry
from trustd.selectors import Selector
from trustd.server.core import ServerCore, SvidRequest
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.sqlite import SqliteStore
from trustd.telemetry import logging as tlog
from trustd.telemetry.metrics import ServerMetrics

TRUST_DOMAIN = TrustDomain.parse("bench.local")
DISTINCT_CSRS = 256


class NullAuditor:
    """Accepts every event and keeps none (the audit log is measured on its own)."""

    def append_many(self, events: Sequence[Any]) -> list[int]:
        return [0] * len(events)

    def check(self) -> None:
        return None


def floor(sign_rate: float, verify_rate: float, verifies: int = 1) -> float:
    return 1.0 / (1.0 / sign_rate + verifies / verify_rate)


def openssl_speed(cpu: int, seconds: int) -> tuple[float, float]:
    """sign/s and verify/s of ECDSA P-256 from ``openssl speed`` pinned to ``cpu``."""
    cmd = ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if "ecdsa" in line and "nistp256" in line:
            nums = re.findall(r"[\d.]+", line.split(")", 1)[1])
            return float(nums[-2]), float(nums[-1])
    raise RuntimeError("could not read 'openssl speed ecdsap256' output:\n" + out)


def crypto_speed(seconds: float) -> tuple[float, float]:
    """Raw sign/s and verify/s with cryptography, over a certificate-sized message."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    msg = os.urandom(450)
    alg = ec.ECDSA(hashes.SHA256())
    sig = key.sign(msg, alg)

    def rate(fn: Callable[[], object]) -> float:
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(200):
                fn()
            n += 200
        return n / elapsed

    return rate(lambda: key.sign(msg, alg)), rate(lambda: pub.verify(sig, msg, alg))


def make_csrs(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


class Setup:
    def __init__(self, workdir: Path) -> None:
        self.clock = SystemClock()
        self.store = SqliteStore(workdir / "trustd.db")
        self.km = LocalKeyManager(workdir / "keys", os.urandom(32))
        self.authorities = AuthorityManager(
            store=self.store,
            key_manager=self.km,
            trust_domain=TRUST_DOMAIN,
            schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
            clock=self.clock,
        )
        self.authorities.ensure_active()
        self.issuer = X509Issuer(
            key_manager=self.km,
            default_ttl=dt.timedelta(hours=1),
            max_ttl=dt.timedelta(hours=24),
        )
        self.core = ServerCore(
            trust_domain=TRUST_DOMAIN,
            store=self.store,
            key_manager=self.km,
            authorities=self.authorities,
            issuer=self.issuer,
            audit=NullAuditor(),
            clock=self.clock,
            metrics=ServerMetrics(),
        )
        self.entry = RegistrationEntry(
            id="bench-entry",
            spiffe_id=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/web"),
            selectors=(Selector.parse("unix:uid:1000"),),
        )
        self.actor = Actor(kind="unix", id="uid:0")

    def issuer_batch(self, csrs: list[bytes]) -> list[bytes]:
        signer = self.authorities.active_signer()
        now = self.clock.now()
        templates = []
        for csr in csrs:
            checked, pub = load_csr(csr)
            nb, na = self.issuer.validity(signer, now, None)
            templates.append(
                SvidTemplate(
                    spiffe_id=self.entry.spiffe_id,
                    public_key=pub,
                    not_before=nb,
                    not_after=na,
                    spki=csr_spki(checked),
                )
            )
        return [s.chain_pem() for s in self.issuer.sign(signer, templates)]

    def core_batch(self, csrs: list[bytes]) -> list[bytes]:
        reqs = [SvidRequest(entry=self.entry, csr=c) for c in csrs]
        out = []
        for r in self.core.issue_svids(self.actor, reqs):
            if isinstance(r, Exception):
                raise r
            out.append(r.chain_pem())
        return out


def measure(
    fn: Callable[[list[bytes]], list[bytes]], csrs: list[bytes], batch: int, seconds: float
) -> float:
    batches = [csrs[i : i + batch] for i in range(0, len(csrs) - batch + 1, batch)]
    fn(batches[0])  # warm up
    n, i, start = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += len(fn(batches[i % len(batches)]))
        i += 1
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cpu", type=int, default=0, help="the one core to run on")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure; medians are printed")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the issuer path (batch 64) and the core path (batch 1)",
    )
    ap.add_argument("--kms", choices=("local", "vault-transit"), default="local")
    ap.add_argument("--audit", action="store_true", help="audited against unaudited issuance")
    ap.add_argument(
        "--servers",
        type=int,
        choices=(1, 2),
        help="instead: through N `trustd server`s on one PostgreSQL and one transit key "
        "(bench/issuance_servers.py)",
    )
    ap.add_argument("--clients", type=int, default=8, help="with --servers: concurrent callers")
    args = ap.parse_args()

    if args.servers is not None:
        import issuance_servers  # type: ignore[import-not-found]

        issuance_servers.run(args.servers, args.clients, args.seconds * 5, args.seconds)
        return 0

    tlog.configure("warning", "json", stream=sys.stderr)
    if args.kms == "vault-transit" or args.audit:
        import issuance_modes  # type: ignore[import-not-found]

        if args.kms == "vault-transit":
            issuance_modes.run_transit(min(args.runs, 3), args.seconds)
        if args.audit:
            os.sched_setaffinity(0, {args.cpu})
            issuance_modes.run_audit(args.runs, args.seconds)
        return 0
    os.sched_setaffinity(0, {args.cpu})
    print(f"pinned to cpu {args.cpu}; {args.runs} runs of {args.seconds:g}s each; medians")

    csrs = make_csrs(DISTINCT_CSRS)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="trustd-bench-") as tmp:
        setup = Setup(Path(tmp))
        # Sanity: what the benchmark times really is a verifiable SVID chain.
        pem = setup.issuer_batch(csrs[:1])[0]
        leaf = x509.load_pem_x509_certificates(pem)[0]
        leaf.verify_directly_issued_by(setup.authorities.active_signer().certificate)

        runs: dict[str, list[float]] = {}
        for _ in range(args.runs):
            o_sign, o_verify = openssl_speed(args.cpu, max(1, round(args.seconds)))
            runs.setdefault("openssl sign/s", []).append(o_sign)
            runs.setdefault("openssl verify/s", []).append(o_verify)
            c_sign, c_verify = crypto_speed(args.seconds / 2)
            runs.setdefault("cryptography sign/s", []).append(c_sign)
            runs.setdefault("cryptography verify/s", []).append(c_verify)
            for batch in (1, 64):
                runs.setdefault(f"issuer batch {batch}", []).append(
                    measure(setup.issuer_batch, csrs, batch, args.seconds)
                )
                runs.setdefault(f"core batch {batch}", []).append(
                    measure(setup.core_batch, csrs, batch, args.seconds)
                )
        results = {k: statistics.median(v) for k, v in runs.items()}
        best = {k: max(v) for k, v in runs.items()}
        # Floors per run, so each issuance figure is compared with the same run's conditions
        # (the machine is shared: a run's neighbours slow both alike).
        o_floors = [
            floor(s, v)
            for s, v in zip(runs["openssl sign/s"], runs["openssl verify/s"], strict=True)
        ]
        c_floors = [
            floor(s, v)
            for s, v in zip(runs["cryptography sign/s"], runs["cryptography verify/s"], strict=True)
        ]

        o_floor = floor(results["openssl sign/s"], results["openssl verify/s"])
        c_floor = floor(results["cryptography sign/s"], results["cryptography verify/s"])
        c_floor2 = floor(results["cryptography sign/s"], results["cryptography verify/s"], 2)
        print()
        print(f"{'crypto floor (1 sign + 1 verify per SVID)':<52}{'SVIDs/s':>9}")
        print(
            f"{'  openssl speed ecdsap256':<52}{o_floor:>9.0f}   "
            f"(sign {results['openssl sign/s']:.0f}/s, verify {results['openssl verify/s']:.0f}/s)"
        )
        print(
            f"{'  cryptography raw sign + verify':<52}{c_floor:>9.0f}   "
            f"(sign {results['cryptography sign/s']:.0f}/s, "
            f"verify {results['cryptography verify/s']:.0f}/s)"
        )
        print(f"{'  cryptography 1 sign + 2 verify (remote KMS, HSM)':<52}{c_floor2:>9.0f}")
        print()
        print(
            f"{'issuance, CSR PEM -> signed PEM':<52}{'SVIDs/s':>9}{'/openssl':>10}{'/crypto':>9}"
            f"{'best':>8}"
        )
        for name in ("issuer batch 1", "issuer batch 64", "core batch 1", "core batch 64"):
            o_ratio = statistics.median(r / f for r, f in zip(runs[name], o_floors, strict=True))
            c_ratio = statistics.median(r / f for r, f in zip(runs[name], c_floors, strict=True))
            print(
                f"{'  ' + name:<52}{results[name]:>9.0f}{o_ratio:>10.2f}{c_ratio:>9.2f}"
                f"{best[name]:>8.0f}"
            )
        print("(/openssl and /crypto: median over runs of rate / that run's floor)")

        if args.profile:
            for name, fn, batch in (
                ("issuer batch 64", setup.issuer_batch, 64),
                ("core batch 1", setup.core_batch, 1),
            ):
                prof = cProfile.Profile()
                prof.enable()
                measure(fn, csrs, batch, args.seconds)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
                print()
                print(f"cProfile, {name}:")
                print(out.getvalue())
        setup.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
