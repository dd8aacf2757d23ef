"""Server-sidecar CPU cost: ``trustd proxy`` against a stock Envoy, same run, same client side.

Topology (everything on 127.0.0.1)::

    wrk --HTTP/1.1--> client Envoy --mTLS--> server sidecar --plaintext--> app Envoy
                                              (a) trustd proxy, STRICT
                                              (b) Envoy, tcp_proxy + TLS

- ``wrk`` (Debian package ``wrk``) drives load into one client-side Envoy,
  which originates mTLS with a throwaway-CA SVID and checks that the server
  presents ``spiffe://trustd.local/ns/bench/sa/server``;
- the two server sidecars present the same SVID and forward to the same app:
  an Envoy answering ``/1k`` (1 KiB) and ``/1m`` (1 MiB) with direct responses;
- ``trustd proxy`` runs as its own process (``python -m trustd.dataplane``),
  Envoys with ``--concurrency 1``; both sidecars verify the client SVID.

Scenarios, each run against both sidecars back to back:

- ``keepalive_1k``: 1 KiB responses over kept-alive connections:
  server-sidecar CPU seconds per 1,000 requests;
- ``bulk_1m``: 1 MiB responses: CPU seconds per GB (10^9 bytes) delivered;
- ``handshakes``: the client Envoy opens a new upstream connection per
  request (``max_requests_per_connection: 1``): CPU seconds per 1,000 new mTLS
  handshakes, counted by each sidecar itself (trustd's TLS connection counter,
  Envoy's ``ssl.handshake`` stat).

CPU is user+system time of the sidecar process from ``/proc/PID/stat``. The
ratio column is trustd / Envoy (higher is worse for trustd). This is a
benchmark, not a test: it asserts nothing about speed.

Usage: ``python bench/dataplane.py [--seconds 8] [--connections 8] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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


class TrustdProxy:
    def __init__(self, work: Path, ca: ThrowawayCA, app_port: int) -> None:
        cert, key = ca.issue(SERVER_ID).write(work / "trustd")
        bundle = work / "trustd" / "bundle.pem"
        bundle.write_bytes(ca.bundle_pem)
        policies = work / "trustd" / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(
            "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
            "metadata: {name: mesh, namespace: trustd-system}\nspec:\n  mtls: {mode: STRICT}\n"
        )
        self.port, self.metrics = free_port(), free_port()
        config = work / "trustd" / "proxy.yaml"
        config.write_text(
            f"proxyId: bench\ninbound:\n  - port: {self.port}\n    app: 127.0.0.1:{app_port}\n"
            "    bind: 127.0.0.1\n"
            f"metricsAddress: 127.0.0.1:{self.metrics}\n"
            f"identity: {{kind: files, certFile: {cert}, keyFile: {key}, bundleFile: {bundle}}}\n"
            f"policy: {{kind: files, paths: [{policies}]}}\n"
        )
        self.log = (work / "trustd" / "proxy.log").open("wb")
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
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("trustd proxy exited: see " + str(work / "trustd" / "proxy.log"))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("trustd proxy did not become ready")

    def tls_connections(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(
            rf'trustd_proxy_connections_total{{listener="inbound:{self.port}",mode="tls"}} ([\d.e+]+)',
            text,
        )
        return int(float(m.group(1))) if m else 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="trustd-bench-") as tmp:
        work = Path(tmp)
        ca = ThrowawayCA("trustd.local")
        ca_file = work / "bundle.pem"
        ca_file.write_bytes(ca.bundle_pem)
        (work / "1k").write_bytes(b"k" * 1024)
        (work / "1m").write_bytes(b"m" * 1024 * 1024)
        app = EnvoyProcess(
            {
                "static_resources": {
                    "listeners": [
                        http_listener(
                            "app",
                            [
                                {
                                    "match": {"path": "/1k"},
                                    "direct_response": {
                                        "status": 200,
                                        "body": {"filename": str(work / "1k")},
                                    },
                                },
                                {
                                    "match": {"path": "/1m"},
                                    "direct_response": {
                                        "status": 200,
                                        "body": {"filename": str(work / "1m")},
                                    },
                                },
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
            server_cert, server_key = ca.issue(SERVER_ID).write(work / "envoy-server")
            envoy_server = EnvoyProcess(
                {
                    "static_resources": {
                        "listeners": [
                            envoy_listener(
                                "in", "app", tls=(server_cert, server_key, ca_file, CLIENT_ID)
                            )
                        ],
                        "clusters": [envoy_cluster("app", app_port)],
                    }
                },
                workdir=work / "envoy-server",
            ).start()
            procs.append(envoy_server)
            trustd = TrustdProxy(work, ca, app_port)
            procs.append(trustd)
            envoy_port = envoy_server.listener_port("in")

            client_cert, client_key = ca.issue(CLIENT_ID).write(work / "envoy-client")
            tls = (client_cert, client_key, ca_file, SERVER_ID)
            listeners, clusters = [], []
            for target, port in (("trustd", trustd.port), ("envoy", envoy_port)):
                for kind, per_conn in (("ka", None), ("hs", 1)):
                    name = f"{kind}_{target}"
                    clusters.append(
                        envoy_cluster(
                            name, port, tls=tls, max_requests_per_connection=per_conn, http=True
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

            pids = {"trustd": trustd.proc.pid, "envoy": envoy_server.pid}

            def handshakes(target: str) -> int:
                if target == "trustd":
                    return trustd.tls_connections()
                return sum(
                    v
                    for k, v in envoy_server.stats("listener.").items()
                    if k.endswith(".ssl.handshake")
                )

            # Warm up both paths (connection pools, caches) and check they work.
            for target in ("trustd", "envoy"):
                for kind in ("ka", "hs"):
                    port = client.listener_port(f"{kind}_{target}")
                    for path in ("/1k", "/1m"):
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}{path}", timeout=10
                        ) as r:
                            body = r.read()
                        assert len(body) == (1024 if path == "/1k" else 1024 * 1024), (target, path)

            results: dict[str, dict[str, Any]] = {}
            scenarios = (
                ("keepalive_1k", "ka", "/1k", args.connections),
                ("bulk_1m", "ka", "/1m", max(1, args.connections // 2)),
                ("handshakes", "hs", "/1k", args.connections),
            )
            for scenario, kind, path, conns in scenarios:
                for target in ("envoy", "trustd"):
                    port = client.listener_port(f"{kind}_{target}")
                    hs0, cpu0 = handshakes(target), cpu_seconds(pids[target])
                    run = wrk(
                        f"http://127.0.0.1:{port}{path}", seconds=args.seconds, connections=conns
                    )
                    cpu = cpu_seconds(pids[target]) - cpu0
                    run["cpu_seconds"] = round(cpu, 3)
                    run["handshakes"] = handshakes(target) - hs0
                    if scenario == "keepalive_1k":
                        run["cpu_per_unit"] = cpu / (run["requests"] / 1000)
                        run["unit"] = "CPU s / 1k requests"
                    elif scenario == "bulk_1m":
                        run["cpu_per_unit"] = cpu / (run["bytes"] / 1e9)
                        run["unit"] = "CPU s / GB"
                    else:
                        run["cpu_per_unit"] = cpu / (max(1, run["handshakes"]) / 1000)
                        run["unit"] = "CPU s / 1k handshakes"
                    results.setdefault(scenario, {})[target] = run
                    print(
                        f"  {scenario:13} {target:6} requests={run['requests']:>7} "
                        f"handshakes={run['handshakes']:>6} errors={run['errors']} "
                        f"cpu={cpu:6.2f}s -> {run['cpu_per_unit']:.4f} {run['unit']}",
                        flush=True,
                    )

            print()
            print(f"{'scenario':14} {'unit':24} {'trustd':>10} {'envoy':>10} {'trustd/envoy':>13}")
            for scenario, per in results.items():
                t, e = per["trustd"]["cpu_per_unit"], per["envoy"]["cpu_per_unit"]
                ratio = t / e if e else float("inf")
                per["ratio_trustd_to_envoy"] = ratio
                print(
                    f"{scenario:14} {per['trustd']['unit']:24} {t:10.4f} {e:10.4f} {ratio:12.1f}x"
                )
            if args.json:
                print(json.dumps(results, indent=2))
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
