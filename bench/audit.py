"""Audit log benchmark: append throughput and export throughput per format.

    .venv/bin/python bench/audit.py                 # 1,000,000 events (the issue's goal)
    .venv/bin/python bench/audit.py --events 100000 # a quicker run
    .venv/bin/python bench/audit.py --events 200000 --repeat 5 --formats csv,ocsf --no-append

Prints, measured in the same run:
- appends per second through AuditLog.append (the cost every audited action pays),
  against the baseline of building the same AuditEvent without writing it;
- verifications per second of the whole log (the median of ``--repeat`` runs), against
  the baseline of reading the segment files line by line, taken before each run;
- export events per second for jsonl, csv, ocsf and cef over the whole log (the
  median of ``--repeat`` runs, taken round-robin over the formats so that a busy
  moment on a shared machine hits them alike), against the same read baseline
  (taken again at the start of each round; the median of all), and as a ratio to
  the jsonl rate of the same round (the median of the per-round ratios).
Wall-clock and CPU-time rates are both printed: on a shared machine the CPU
rate is the steadier one. Goals (issue 6): audit < 10% of issuance throughput,
export > 100k events/s.

``measure_appends_per_second()`` is what the audited-vs-unaudited issuance
comparison (which needs the CA) combines with an issuance benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from trustd.audit import Actor, AuditEvent, AuditLog
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import SystemClock

FORMATS = ("jsonl", "csv", "ocsf", "cef")
EXPORT_GOAL = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    events: int  # how many events were processed
    wall: float  # seconds of wall-clock time
    cpu: float  # seconds of this process's CPU time

    @property
    def per_second(self) -> float:
        return self.events / self.wall if self.wall else float("inf")

    @property
    def cpu_per_second(self) -> float:
        return self.events / self.cpu if self.cpu else float("inf")

    def text(self) -> str:
        return (
            f"{self.per_second:>11,.0f}/s wall  {self.cpu_per_second:>11,.0f}/s cpu  "
            f"({self.wall / max(self.events, 1) * 1e6:6.1f} us/event)"
        )


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def issuance_like_event(i: int, not_after: dt.datetime) -> AuditEvent:
    """What the CA records for one SVID: caller, SPIFFE ID, serial, not_after, issuer."""
    return AuditEvent(
        type="svid.issue",
        actor=Actor.spiffe("spiffe://trustd.local/agent/node-1", addr="127.0.0.1:40123"),
        action="issue",
        resource=f"spiffe://trustd.local/ns/shop/sa/svc-{i % 500}",
        details={
            "serial": f"{i:032x}",
            "not_after": not_after,
            "issuer": "authority-1",
            "ttl_seconds": 3600,
        },
    )


def _timed(fn: object, n: int) -> Rate:
    assert callable(fn)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return Rate(events=n, wall=time.perf_counter() - w0, cpu=time.process_time() - c0)


def measure_appends_per_second(
    events: int = 50_000, directory: Path | None = None
) -> tuple[Rate, Rate]:
    """(building and appending an issuance event, building it only) over ``events`` events.

    The difference of the per-event times is what audit adds to one issuance.
    """
    quiet_logs()
    base = Path(tempfile.mkdtemp(prefix="trustd-bench-audit-")) if directory is None else directory
    log = AuditLog(base / "audit", key_manager=MemoryKeyManager(), clock=SystemClock())
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    try:

        def build_only() -> None:
            for i in range(events):
                issuance_like_event(i, not_after)

        def build_and_append() -> None:
            for i in range(events):
                log.append(issuance_like_event(i, not_after))

        baseline = _timed(build_only, events)
        audited = _timed(build_and_append, events)
    finally:
        log.close()
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    return audited, baseline


def measure_reference_issuance(events: int = 2_000) -> Rate:
    """A floor for one issuance: build and sign a P-256 X.509 leaf with ``cryptography``
    (no store, no KMS round trip, no gRPC). trustd's real issuance costs more, so the
    audit share printed against it is an upper bound."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    now = dt.datetime.now(dt.UTC)

    def run() -> None:
        for i in range(events):
            (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(issuer)
                .public_key(leaf_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(f"spiffe://trustd.local/ns/a/sa/s{i}")]
                    ),
                    critical=True,
                )
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256())
            )

    return _timed(run, events)


def fill(log: AuditLog, events: int) -> Rate:
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    kinds: list[Callable[[int, dt.datetime], AuditEvent]] = [
        issuance_like_event,
        lambda i, na: AuditEvent(
            type="svid.deny",
            actor=Actor.spiffe("spiffe://trustd.local/agent/node-2", addr="127.0.0.1:40124"),
            action="issue",
            resource=f"spiffe://trustd.local/ns/shop/sa/svc-{i % 500}",
            outcome="failure",
            reason="no registration entry matches the caller",
        ),
        lambda i, na: AuditEvent(
            type="admin.entry.create",
            actor=Actor.unix(uid=0, addr="/var/lib/trustd/admin.sock"),
            action="create",
            resource=f"entry-{i}",
            details={"spiffe_id": f"spiffe://trustd.local/ns/shop/sa/svc-{i % 500}"},
        ),
    ]

    def run() -> None:
        for i in range(events):
            kind = kinds[0] if i % 10 < 8 else kinds[1 if i % 10 == 8 else 2]
            log.append(kind(i, not_after))

    return _timed(run, events)


def read_baseline(directory: Path, events: int) -> Rate:
    def run() -> None:
        n = 0
        for seg in sorted(directory.glob("audit-*.jsonl")):
            with seg.open("r", encoding="utf-8") as fh:
                for _ in fh:
                    n += 1
        assert n == events, n

    return _timed(run, events)


def measure_export(log: AuditLog, fmt: str, out_path: Path, events: int) -> Rate:
    def run() -> None:
        with out_path.open("w", encoding="utf-8", newline="") as out:
            n = log.export(out, format=fmt)
        assert n == events, n

    rate = _timed(run, events)
    out_path.unlink()
    return rate


def median_rate(rates: list[Rate]) -> Rate:
    """The run with the median wall time (its CPU time comes with it)."""
    ordered = sorted(rates, key=lambda r: r.wall)
    return ordered[len(ordered) // 2]


def measure_verify(log: AuditLog, events: int, repeat: int) -> tuple[list[Rate], list[Rate]]:
    """(``repeat`` verifications of the whole log, the read baseline taken before each)."""
    verifies: list[Rate] = []
    reads: list[Rate] = []

    def run() -> None:
        report = log.verify()
        assert report.ok and report.events_checked == events, report

    for _ in range(repeat):
        reads.append(read_baseline(log.directory, events))
        verifies.append(_timed(run, events))
    return verifies, reads


def measure_exports(
    log: AuditLog, formats: list[str], directory: Path, events: int, repeat: int
) -> tuple[dict[str, list[Rate]], list[Rate]]:
    """(``repeat`` exports per format, round-robin (csv, ocsf, ..., csv, ocsf, ...), the
    read baseline taken at the start of each round)."""
    rates: dict[str, list[Rate]] = {fmt: [] for fmt in formats}
    reads: list[Rate] = []
    for _ in range(repeat):
        reads.append(read_baseline(log.directory, events))
        for fmt in formats:
            rates[fmt].append(measure_export(log, fmt, directory / f"export.{fmt}", events))
    return rates, reads


def runs_text(rates: list[Rate]) -> str:
    return "         runs (wall/s): " + ", ".join(f"{r.per_second:,.0f}" for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--append-events", type=int, default=50_000, help="events for appends/s")
    parser.add_argument("--no-append", action="store_true", help="skip the append measurement")
    parser.add_argument("--repeat", type=int, default=3, help="exports per format (median)")
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help="comma-separated subset of jsonl,csv,ocsf,cef"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the log (a temp dir)")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if not formats or any(f not in FORMATS for f in formats):
        parser.error(f"--formats: use a comma-separated subset of {','.join(FORMATS)}")
    if args.repeat < 1:
        parser.error("--repeat: use 1 or more")
    quiet_logs()

    if not args.no_append:
        audited, baseline = measure_appends_per_second(args.append_events)
        reference = measure_reference_issuance()
        append_us = (audited.cpu - baseline.cpu) / audited.events * 1e6
        event_us = audited.cpu / audited.events * 1e6
        issue_us = reference.cpu / reference.events * 1e6
        print(f"append ({audited.events:,} svid.issue events)")
        print(f"  baseline: build the event only   {baseline.text()}")
        print(f"  build + AuditLog.append           {audited.text()}")
        print(f"  reference: x509 leaf build+sign   {reference.text()}")
        print(f"  audit (build + append) costs {event_us:.1f} us cpu per event, append alone "
              f"{append_us:.1f} us; against the signing floor of one issuance ({issue_us:.0f} us "
              f"cpu) that is {event_us / issue_us * 100:.1f}% (goal < 10%)\n")  # fmt: skip

    base = Path(tempfile.mkdtemp(prefix="trustd-bench-audit-", dir=args.dir))
    try:
        log = AuditLog(base / "audit", key_manager=MemoryKeyManager(), clock=SystemClock())
        filled = fill(log, args.events)
        print(f"fill: {args.events:,} mixed events appended  {filled.text()}")
        size = sum(p.stat().st_size for p in (base / "audit").glob("audit-*.jsonl"))
        print(f"  {size / 1e6:,.0f} MB in {len(list((base / 'audit').glob('audit-*.jsonl')))} "
              "segments")  # fmt: skip
        os.sync()  # so that writing the log back to disk does not run during the timings
        verifies, verify_reads = measure_verify(log, args.events, args.repeat)
        rates, export_reads = measure_exports(log, formats, base, args.events, args.repeat)
        read = median_rate(verify_reads + export_reads)
        verify = median_rate(verifies)
        print(f"\nverify ({args.events:,} events; median of {args.repeat})")
        print(f"  baseline: read the lines only    {read.text()}")
        print(f"  verify                           {verify.text()}  "
              f"{verify.wall / read.wall:.1f}x the read baseline")  # fmt: skip
        if args.repeat > 1:
            print(runs_text(verifies))
        print(f"\nexport ({args.events:,} events, to a file; median of {args.repeat})")
        print(f"  baseline: read the lines only    {read.text()}")
        for fmt in formats:
            rate = median_rate(rates[fmt])
            verdict = "meets" if rate.per_second > EXPORT_GOAL else "BELOW"
            cpu_verdict = "meets" if rate.cpu_per_second > EXPORT_GOAL else "BELOW"
            vs_jsonl = ""
            if "jsonl" in rates:  # paired by round: jsonl ran just before, on the same machine
                pairs = zip(rates[fmt], rates["jsonl"], strict=True)
                ratio = statistics.median(r.per_second / j.per_second for r, j in pairs)
                vs_jsonl = f"; {ratio:.2f}x jsonl"
            print(f"  {fmt:<5}                            {rate.text()}  "
                  f"goal 100k/s: {verdict} (wall), {cpu_verdict} (cpu); "
                  f"{rate.wall / read.wall:.1f}x the read baseline{vs_jsonl}")  # fmt: skip
            if args.repeat > 1:
                print(runs_text(rates[fmt]))
        log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
