"""Server-sidecar cost: ``trustd proxy`` (native and Python cores), Envoy and HAProxy.

Topology (everything on 127.0.0.1)::

    wrk --HTTP/1.1--> client Envoy --mTLS--> server sidecar --plaintext--> app Envoy
                                              trustd-native: trustd proxy, native core
                                              trustd-python: trustd proxy, Python core
                                              envoy:   Envoy, tcp_proxy + TLS
                                              haproxy: HAProxy (Debian), mode tcp,
                                                       ``verify required``

- ``wrk`` (Debian package ``wrk``) drives load into one client-side Envoy,
  which originates mTLS with a throwaway-CA SVID and checks that the server
  presents ``spiffe://trustd.local/ns/bench/sa/server``;
- every server sidecar presents the same SVID, requires a client certificate
  from the same CA and forwards to the same app: an Envoy answering ``/1k``
  (1 KiB) and ``/1m`` (1 MiB) with direct responses;
- one worker each: trustd proxy as its own process (``python -m
  trustd.dataplane``, ``TRUSTD_PROXY_CORE`` selecting the core), Envoys with
  ``--concurrency 1``, HAProxy with ``nbthread 1``. Each sidecar runs with
  its defaults: Envoy and HAProxy resume TLS sessions (the client Envoy
  offers them), trustd proxy does a full handshake every time. The
  ``resumed`` column of the handshake scenario says how many were resumed.

Scenarios, each run against every sidecar back to back, ``--runs`` times:

- ``keepalive_1k``: 1 KiB responses over kept-alive connections:
  server-sidecar CPU seconds per 1,000 requests;
- ``bulk_1m``: 1 MiB responses: CPU seconds per GB (10^9 bytes) delivered;
- ``handshakes``: the client Envoy opens a new upstream connection per
  request (``max_requests_per_connection: 1``): CPU seconds per 1,000 new mTLS
  connections, counted by the client Envoy (``upstream_cx_total``);
- ``latency_1k`` (every run): one connection, 1 KiB requests: p50 and p99
  latency through the sidecar minus the same over a direct (plaintext)
  connection to the app, from wrk's latency distribution;
- ``idle_rss`` (once, ``--idle N``, default 9,000): RSS growth of the sidecar
  with N idle mTLS connections open, per connection (each one holds two
  descriptors in the sidecar, so a 20,000 open-files limit caps N below 10,000).

CPU is user+system time of the sidecar process from ``/proc/PID/stat``. Each
figure is the median over the runs; ``ratio_to_envoy`` is the median of the
per-run ratios sidecar / Envoy (higher is worse). This is a benchmark, not a
test: it asserts nothing about speed.

Usage: ``python bench/dataplane.py [--runs 5] [--seconds 8] [--connections 8]
[--idle 9000] [--sidecars trustd-native,trustd-python,envoy,haproxy] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dataplane_testing import (
    EnvoyProcess,
    ThrowawayCA,
    envoy_cluster,
    envoy_listener,
)

SERVER_ID = "spiffe://trustd.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://trustd.local/ns/bench/sa/client"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def http_listener(name: str, routes: list[dict[str, Any]], *, max_body: int = 0) -> dict[str, Any]:
    route_config: dict[str, Any] = {
        "name": name,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
    }
    if max_body:
        route_config["max_direct_response_body_size_bytes"] = max_body
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": route_config,
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


WRK_LINE = re.compile(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read")
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def wrk(url: str, *, seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    m = WRK_LINE.search(out)
    if m is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        e = re.search(pattern, out)
        if e:
            errors += sum(int(n) for n in re.findall(r"\d+", e.group(1)))
    return {
        "requests": int(m.group(1)),
        "bytes": float(m.group(4)) * UNITS[m.group(5)],
        "errors": errors,
    }


SIDECARS = ("trustd-native", "trustd-python", "envoy", "haproxy")
BASELINE = "envoy"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {port}")


class TrustdProxy:
    def __init__(self, work: Path, ca: ThrowawayCA, app_port: int, core: str) -> None:
        d = work / f"trustd-{core}"
        d.mkdir()
        cert, key = ca.issue(SERVER_ID).write(d)
        bundle = d / "bundle.pem"
        bundle.write_bytes(ca.bundle_pem)
        policies = d / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(
            "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
            "metadata: {name: mesh, namespace: trustd-system}\nspec:\n  mtls: {mode: STRICT}\n"
        )
        self.port, self.metrics = free_port(), free_port()
        config = d / "proxy.yaml"
        config.write_text(
            f"proxyId: bench-{core}\ninbound:\n  - port: {self.port}\n    app: 127.0.0.1:{app_port}\n"
            "    bind: 127.0.0.1\n"
            f"metricsAddress: 127.0.0.1:{self.metrics}\n"
            f"identity: {{kind: files, certFile: {cert}, keyFile: {key}, bundleFile: {bundle}}}\n"
            f"policy: {{kind: files, paths: [{policies}]}}\n"
        )
        env = {**os.environ, "TRUSTD_PROXY_CORE": core}
        preload = os.environ.get("TRUSTD_SIDECAR_PRELOAD")  # make test-asan: the ASAN runtime
        if preload and core == "native":
            env["LD_PRELOAD"] = preload
        self.log_path = d / "proxy.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trustd.dataplane",
                "--config",
                str(config),
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trustd proxy exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("trustd proxy did not become ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class HaproxySidecar:
    """HAProxy from Debian: TCP mode, TLS with ``verify required``, one thread."""

    def __init__(self, work: Path, ca: ThrowawayCA, app_port: int) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        d = work / "haproxy"
        d.mkdir()
        svid = ca.issue(SERVER_ID)
        pem = d / "server.pem"
        pem.write_bytes(svid.chain_pem + svid.key_pem)
        pem.chmod(0o600)
        bundle = d / "bundle.pem"
        bundle.write_bytes(ca.bundle_pem)
        self.port = free_port()
        cfg = d / "haproxy.cfg"
        cfg.write_text(
            "global\n  nbthread 1\n  maxconn 9800\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n"
            "  timeout server 300s\n"
            f"frontend in\n  bind 127.0.0.1:{self.port} ssl crt {pem} ca-file {bundle} "
            "verify required\n  default_backend app\n"
            f"backend app\n  server app 127.0.0.1:{app_port}\n"
        )
        self.log_path = d / "haproxy.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [exe, "-db", "-f", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_port(self.port, self.proc, "haproxy", self.log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def unlimited(cluster: dict[str, Any]) -> dict[str, Any]:
    """No circuit breaking (Envoy's default caps a cluster at 1,024 connections)."""
    big = 1_000_000
    cluster["circuit_breakers"] = {
        "thresholds": [{"max_connections": big, "max_pending_requests": big, "max_requests": big}]
    }
    return cluster


class EnvoySidecar:
    def __init__(self, work: Path, ca: ThrowawayCA, ca_file: Path, app_port: int) -> None:
        cert, key = ca.issue(SERVER_ID).write(work / "envoy-server")
        self.envoy = EnvoyProcess(
            {
                "static_resources": {
                    "listeners": [envoy_listener("in", "app", tls=(cert, key, ca_file, CLIENT_ID))],
                    "clusters": [unlimited(envoy_cluster("app", app_port))],
                }
            },
            workdir=work / "envoy-server",
        ).start()
        self.port = self.envoy.listener_port("in")

    @property
    def pid(self) -> int:
        return self.envoy.pid

    def stop(self) -> None:
        self.envoy.stop()


WRK_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_latency(url: str, *, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", "1", "-d", f"{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    got = {
        f"p{m.group(1)}_ms": float(m.group(2)) * TO_MS[m.group(3)]
        for m in WRK_LATENCY.finditer(out)
    }
    if set(got) != {"p50_ms", "p99_ms"}:
        raise RuntimeError(f"cannot read wrk latency:\n{out}")
    return got


async def _hold_idle(port: int, ctx: ssl.SSLContext, n: int) -> list[asyncio.StreamWriter]:
    sem = asyncio.Semaphore(64)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with sem:
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writers.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def idle_rss(pid: int, port: int, ctx: ssl.SSLContext, n: int) -> dict[str, Any]:
    """RSS growth of ``pid`` with ``n`` idle mTLS connections open, per connection."""

    async def measure() -> dict[str, Any]:
        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        t0 = time.monotonic()
        writers = await _hold_idle(port, ctx, n)
        await asyncio.sleep(2.0)  # let the sidecar finish connecting the app side
        after = rss_bytes(pid)
        took = time.monotonic() - t0
        for w in writers:
            w.close()
        await asyncio.sleep(1.0)
        return {
            "connections": n,
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "rss_per_connection_bytes": (after - before) / n,
            "open_seconds": round(took, 1),
        }

    return asyncio.run(measure())


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def raise_fd_limit(want: int = 65536) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            return
        except (ValueError, OSError):
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections")
    ap.add_argument("--runs", type=int, default=5, help="runs of every scenario (medians)")
    ap.add_argument(
        "--idle",
        type=int,
        default=9000,
        help="idle connections for RSS (0: skip); each takes two descriptors in the sidecar, "
        "so the open-files limit (20,000 here) caps it below 10,000",
    )
    ap.add_argument("--latency-seconds", type=int, default=4, help="wrk duration for latency")
    ap.add_argument("--sidecars", default=",".join(SIDECARS), help="comma-separated sidecars")
    ap.add_argument(
        "--scenarios",
        default="keepalive_1k,bulk_1m,handshakes",
        help="comma-separated CPU scenarios to run",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument(
        "--asan-check",
        action="store_true",
        help="fail when a trustd sidecar log shows an AddressSanitizer report (make test-asan)",
    )
    args = ap.parse_args()
    wanted = [s for s in args.sidecars.split(",") if s]
    unknown = set(wanted) - set(SIDECARS)
    if unknown:
        print(f"unknown sidecars: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 1
    raise_fd_limit()

    with tempfile.TemporaryDirectory(prefix="trustd-bench-") as tmp:
        work = Path(tmp)
        ca = ThrowawayCA("trustd.local")
        ca_file = work / "bundle.pem"
        ca_file.write_bytes(ca.bundle_pem)
        (work / "1k").write_bytes(b"k" * 1024)
        (work / "1m").write_bytes(b"m" * 1024 * 1024)
        body = {
            "/1k": str(work / "1k"),
            "/1m": str(work / "1m"),
        }
        app = EnvoyProcess(
            {
                "static_resources": {
                    "listeners": [
                        http_listener(
                            "app",
                            [
                                {
                                    "match": {"path": path},
                                    "direct_response": {"status": 200, "body": {"filename": f}},
                                }
                                for path, f in body.items()
                            ],
                            max_body=2 * 1024 * 1024,
                        )
                    ]
                }
            },
            workdir=work / "app",
        ).start()
        procs: list[Any] = [app]
        try:
            app_port = app.listener_port("app")
            sidecars: dict[str, Any] = {}
            for name in wanted:
                if name == "envoy":
                    sidecars[name] = EnvoySidecar(work, ca, ca_file, app_port)
                elif name == "haproxy":
                    sidecars[name] = HaproxySidecar(work, ca, app_port)
                else:
                    sidecars[name] = TrustdProxy(work, ca, app_port, name.removeprefix("trustd-"))
                procs.append(sidecars[name])

            client_cert, client_key = ca.issue(CLIENT_ID).write(work / "envoy-client")
            tls = (client_cert, client_key, ca_file, SERVER_ID)
            listeners = [
                http_listener(
                    "direct", [{"match": {"prefix": "/"}, "route": {"cluster": "direct"}}]
                )
            ]
            clusters = [envoy_cluster("direct", app_port, http=True)]
            for target, sc in sidecars.items():
                for kind, per_conn in (("ka", None), ("hs", 1)):
                    name = f"{kind}_{target}"
                    clusters.append(
                        envoy_cluster(
                            name, sc.port, tls=tls, max_requests_per_connection=per_conn, http=True
                        )
                    )
                    listeners.append(
                        http_listener(
                            name, [{"match": {"prefix": "/"}, "route": {"cluster": name}}]
                        )
                    )
            client = EnvoyProcess(
                {"static_resources": {"listeners": listeners, "clusters": clusters}},
                workdir=work / "envoy-client",
            ).start()
            procs.append(client)

            def client_stat(cluster: str, stat: str) -> int:
                return client.stats(f"cluster.{cluster}.{stat}").get(f"cluster.{cluster}.{stat}", 0)

            # Warm up every path and check it works.
            for target in sidecars:
                for kind in ("ka", "hs"):
                    port = client.listener_port(f"{kind}_{target}")
                    for path in ("/1k", "/1m"):
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}{path}", timeout=10
                        ) as r:
                            got = r.read()
                        assert len(got) == (1024 if path == "/1k" else 1024 * 1024), (target, path)

            scenarios = (
                ("keepalive_1k", "ka", "/1k", args.connections),
                ("bulk_1m", "ka", "/1m", max(1, args.connections // 2)),
                ("handshakes", "hs", "/1k", args.connections),
            )
            chosen = set(args.scenarios.split(","))
            scenarios = tuple(sc for sc in scenarios if sc[0] in chosen)
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
            lat_runs: dict[str, list[dict[str, float]]] = {}
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                for scenario, kind, path, conns in scenarios:
                    for target, sc in sidecars.items():
                        cluster = f"{kind}_{target}"
                        port = client.listener_port(cluster)
                        cx0, re0 = (
                            client_stat(cluster, "upstream_cx_total"),
                            client_stat(cluster, "ssl.session_reused"),
                        )
                        cpu0 = cpu_seconds(sc.pid)
                        run = wrk(
                            f"http://127.0.0.1:{port}{path}",
                            seconds=args.seconds,
                            connections=conns,
                        )
                        cpu = cpu_seconds(sc.pid) - cpu0
                        run["cpu_seconds"] = round(cpu, 3)
                        run["handshakes"] = client_stat(cluster, "upstream_cx_total") - cx0
                        run["resumed"] = client_stat(cluster, "ssl.session_reused") - re0
                        if scenario == "keepalive_1k":
                            run["cpu_per_unit"] = cpu / (max(1, run["requests"]) / 1000)
                            run["unit"] = "CPU s / 1k requests"
                        elif scenario == "bulk_1m":
                            run["cpu_per_unit"] = cpu / (max(1.0, run["bytes"]) / 1e9)
                            run["unit"] = "CPU s / GB"
                        else:
                            run["cpu_per_unit"] = cpu / (max(1, run["handshakes"]) / 1000)
                            run["unit"] = "CPU s / 1k handshakes"
                        runs.setdefault(scenario, {}).setdefault(target, []).append(run)
                        print(
                            f"  {scenario:13} {target:14} requests={run['requests']:>7} "
                            f"handshakes={run['handshakes']:>6} resumed={run['resumed']:>6} "
                            f"errors={run['errors']} cpu={cpu:6.2f}s -> {run['cpu_per_unit']:.4f} {run['unit']}",
                            flush=True,
                        )

                # latency: one connection, through each sidecar and direct, in every run
                direct = wrk_latency(
                    f"http://127.0.0.1:{client.listener_port('direct')}/1k",
                    seconds=args.latency_seconds,
                )
                lat_runs.setdefault("direct", []).append(direct)
                for target in sidecars:
                    got = wrk_latency(
                        f"http://127.0.0.1:{client.listener_port(f'ka_{target}')}/1k",
                        seconds=args.latency_seconds,
                    )
                    got["added_p50_ms"] = got["p50_ms"] - direct["p50_ms"]
                    got["added_p99_ms"] = got["p99_ms"] - direct["p99_ms"]
                    lat_runs.setdefault(target, []).append(got)
                    print(
                        f"  latency_1k    {target:14} p50={got['p50_ms']:.3f}ms p99={got['p99_ms']:.3f}ms "
                        f"(direct p50={direct['p50_ms']:.3f}ms p99={direct['p99_ms']:.3f}ms)",
                        flush=True,
                    )

            results: dict[str, dict[str, Any]] = {}
            for scenario, per in runs.items():
                for target, rs in per.items():
                    entry: dict[str, Any] = {
                        "cpu_per_unit": median([r["cpu_per_unit"] for r in rs]),
                        "unit": rs[0]["unit"],
                        "runs": len(rs),
                        "cpu_per_unit_runs": [round(r["cpu_per_unit"], 5) for r in rs],
                        "requests": median([r["requests"] for r in rs]),
                        "errors": sum(r["errors"] for r in rs),
                    }
                    if scenario == "handshakes":
                        entry["handshakes"] = median([r["handshakes"] for r in rs])
                        entry["resumed"] = median([r["resumed"] for r in rs])
                    base = per.get(BASELINE)
                    if base is not None:
                        entry["ratio_to_envoy"] = median(
                            [
                                r["cpu_per_unit"] / b["cpu_per_unit"]
                                for r, b in zip(rs, base, strict=True)
                                if b["cpu_per_unit"]
                            ]
                        )
                    results.setdefault(scenario, {})[target] = entry

            lat: dict[str, Any] = {
                "direct": {
                    "p50_ms": median([r["p50_ms"] for r in lat_runs["direct"]]),
                    "p99_ms": median([r["p99_ms"] for r in lat_runs["direct"]]),
                }
            }
            for target in sidecars:
                rs = lat_runs[target]
                lat[target] = {
                    "p50_ms": median([r["p50_ms"] for r in rs]),
                    "p99_ms": median([r["p99_ms"] for r in rs]),
                    "added_p50_ms": round(median([r["added_p50_ms"] for r in rs]), 4),
                    "added_p99_ms": round(median([r["added_p99_ms"] for r in rs]), 4),
                    "runs": len(rs),
                }
            results["latency_1k"] = lat

            if args.idle:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.load_verify_locations(cafile=str(ca_file))
                ctx.load_cert_chain(client_cert, client_key)
                idle: dict[str, Any] = {}
                for target, sc in sidecars.items():
                    idle[target] = idle_rss(sc.pid, sc.port, ctx, args.idle)
                    print(
                        f"  idle_rss      {target:14} {idle[target]['rss_per_connection_bytes']:9.0f} B/connection "
                        f"({args.idle} connections in {idle[target]['open_seconds']}s)",
                        flush=True,
                    )
                results["idle_rss"] = idle

            print()
            names = list(sidecars)
            print(
                f"medians of {args.runs} runs; ratio = sidecar / envoy (median of per-run ratios)"
            )
            print(f"{'scenario':14} {'unit':24} " + " ".join(f"{n:>22}" for n in names))
            for scenario, per in results.items():
                if scenario in ("latency_1k", "idle_rss"):
                    continue
                cells = []
                for n in names:
                    e = per[n]
                    ratio = e.get("ratio_to_envoy")
                    cells.append(
                        f"{e['cpu_per_unit']:10.4f} ({ratio:5.2f}x)"
                        if ratio
                        else f"{e['cpu_per_unit']:10.4f}        "
                    )
                print(
                    f"{scenario:14} {per[names[0]]['unit']:24} "
                    + " ".join(f"{c:>22}" for c in cells)
                )
            print(
                f"{'latency_1k':14} {'added p50 / p99 ms':24} "
                + " ".join(
                    f"{lat[n]['added_p50_ms']:>10.3f} / {lat[n]['added_p99_ms']:<9.3f}"
                    for n in names
                )
            )
            if args.idle:
                print(
                    f"{'idle_rss':14} {'bytes / idle connection':24} "
                    + " ".join(
                        f"{results['idle_rss'][n]['rss_per_connection_bytes']:>22.0f}"
                        for n in names
                    )
                )
            if args.json:
                print(json.dumps(results, indent=2))
        finally:
            for p in reversed(procs):
                p.stop()
            logs = {
                str(p.log_path): Path(p.log_path).read_text(errors="replace")
                for p in procs
                if hasattr(p, "log_path")
            }
    if args.asan_check:
        for name, text in logs.items():
            if "AddressSanitizer" in text:
                print(text, file=sys.stderr)
                print(f"AddressSanitizer report in {name}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
