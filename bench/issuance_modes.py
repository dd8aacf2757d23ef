"""The two other modes of bench/issuance.py: ``--kms vault-transit`` and ``--audit``.

``--kms vault-transit``: the same issuance path (``ServerCore.issue_svids``:
CSR checks, DER TBS, one transit ``batch_input`` sign per batch, every
signature verified under the CA key, ledger) against a ``bao server -dev`` this
benchmark starts, beside OpenBao's own PKI ``sign-verbatim`` rate measured on
the same bao process in the same run.

``--audit``: ``ServerCore.issue_svids`` with the real hash-chained audit log
against the same path with an auditor that keeps nothing, same run.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from issuance import Setup, make_csrs, measure  # type: ignore[import-not-found]
from kms_transit import Bao, bench_pki  # type: ignore[import-not-found]

from trustd.audit import AuditLog
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.issuer import X509Issuer
from trustd.ca.kms.vault_transit import VaultTransitKeyManager
from trustd.clock import SystemClock
from trustd.server.core import ServerCore
from trustd.telemetry.metrics import ServerMetrics


def _retarget(setup: Setup, km: object) -> None:
    """Point an existing Setup's CA at another key manager (a new CA is created there)."""
    setup.km = km
    setup.store.replace_authorities([])
    setup.authorities = AuthorityManager(
        store=setup.store,
        key_manager=km,  # type: ignore[arg-type]
        trust_domain=setup.authorities._td,
        schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
        clock=SystemClock(),
    )
    setup.authorities.ensure_active()
    setup.issuer = X509Issuer(
        key_manager=km,  # type: ignore[arg-type]
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    setup.core = ServerCore(
        trust_domain=setup.core.trust_domain,
        store=setup.store,
        key_manager=km,  # type: ignore[arg-type]
        authorities=setup.authorities,
        issuer=setup.issuer,
        audit=setup.core.audit,
        clock=setup.clock,
        metrics=ServerMetrics(),
    )


def run_transit(runs: int, seconds: float) -> None:
    csrs = make_csrs(512)
    pem_csrs = [c.decode() for c in csrs]
    with tempfile.TemporaryDirectory(prefix="trustd-bench-kms-") as tmp:
        bao = Bao(Path(tmp))
        try:
            setup = Setup(Path(tmp))
            km = VaultTransitKeyManager(address=bao.address, token=bao.token, timeout=10)
            _retarget(setup, km)
            figures: dict[str, list[float]] = {}
            for _ in range(runs):
                for batch in (1, 64, 256):
                    figures.setdefault(f"trustd via transit, batch {batch}", []).append(
                        measure(setup.core_batch, csrs, batch, seconds)
                    )
                figures.setdefault("OpenBao PKI sign-verbatim, 4 threads", []).append(
                    bench_pki(bao, pem_csrs, 200, 4)
                )
            med = {k: statistics.median(v) for k, v in figures.items()}
            base = med["OpenBao PKI sign-verbatim, 4 threads"]
            print(
                f"{'SVIDs/s, same bao process, medians of ' + str(runs):<48}{'rate':>8}{'x PKI':>8}"
            )
            for name, rate in med.items():
                print(f"  {name:<46}{rate:>8.0f}{rate / base:>8.1f}")
        finally:
            bao.stop()


def run_audit(runs: int, seconds: float) -> None:
    csrs = make_csrs(512)
    with tempfile.TemporaryDirectory(prefix="trustd-bench-audit-") as tmp:
        setup = Setup(Path(tmp))
        null_auditor = setup.core.audit
        log = AuditLog(
            Path(tmp) / "audit", key_manager=setup.km, clock=SystemClock(), inline_maintenance=False
        )
        audited = log
        figures: dict[str, list[float]] = {}
        for _ in range(runs):
            for batch in (1, 64):
                setup.core.audit = null_auditor
                figures.setdefault(f"unaudited, batch {batch}", []).append(
                    measure(setup.core_batch, csrs, batch, seconds)
                )
                setup.core.audit = audited
                figures.setdefault(f"audited, batch {batch}", []).append(
                    measure(setup.core_batch, csrs, batch, seconds)
                )
            time.sleep(0.1)
        med = {k: statistics.median(v) for k, v in figures.items()}
        print(f"{'SVIDs/s through ServerCore, medians of ' + str(runs):<40}{'rate':>8}")
        for name, rate in med.items():
            print(f"  {name:<38}{rate:>8.0f}")
        for batch in (1, 64):
            cost = 1 - med[f"audited, batch {batch}"] / med[f"unaudited, batch {batch}"]
            print(f"  audit cost, batch {batch}: {cost * 100:.1f}% of issuance throughput")
        log.close()
