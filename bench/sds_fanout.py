"""SDS fan-out: N concurrent StreamSecrets streams against one agent; one bundle change.

    .venv/bin/python bench/sds_fanout.py --streams 1000 --procs 4
    .venv/bin/python bench/sds_fanout.py --streams 10000 --procs 8 --rounds 3

What runs:
- one agent process: ``AgentService`` with the tests' fake upstream (a real CA);
- ``--procs`` client processes, real gRPC clients (grpcio, C core), holding
  ``--streams`` streams between them, one connection per stream by default
  (``--streams-per-conn`` to multiplex), each subscribed to ``ROOTCA`` and
  ACKing every response as Envoy does;
- the fake server rotates its CA ``--rounds`` times; every stream must receive
  the new bundle.

What it reports (agent process only):
- RSS per stream: (RSS with all streams open - RSS before any) / streams;
- time from the bundle change in the agent until each stream received it
  (p50, p99, max); clocks are CLOCK_MONOTONIC, shared by all processes. On a
  small machine the client processes compete with the agent for CPU, so this
  is an end-to-end figure, not the agent's alone;
- agent CPU seconds per 1,000 pushes (user+system, ACK handling included).

Baseline, measured in the same run (``--baseline``, on by default): a bare
grpclib server on a Unix socket that holds the same streams and pushes one
fixed message per round. The ratio trustd/baseline says what the agent adds
on top of the gRPC stack it runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SDS_STREAM = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


# ---------------------------------------------------------------------------- helpers


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def gen2_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- server side


async def serve_trustd(socket_path: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import structlog
    from agent_fakes import FakeUpstream

    from trustd.agent.service import AgentService

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    up = FakeUpstream("trustd.local")
    up.add_entry("spiffe://trustd.local/ns/bench/sa/client", [f"unix:uid:{os.getuid()}"])
    agent = AgentService(upstream=up, socket_path=Path(socket_path), trust_domain=up.trust_domain)
    await agent.start()
    await agent.wait_ready()
    reg = agent.metrics.registry

    def stats() -> dict[str, Any]:
        return {
            "rss_kb": rss_kb(),
            "cpu_s": cpu_s(),
            "gc2": gen2_collections(),
            "streams": reg.get_sample_value("trustd_agent_sds_streams") or 0,
            "pushes": reg.get_sample_value("trustd_agent_pushes_total", {"api": "sds"}) or 0,
        }

    async def rotate() -> int:
        t0 = time.monotonic_ns()
        up.rotate_ca()  # the watch delivers it to the agent, which fans it out
        return t0

    await control_loop(stats, rotate)
    await agent.stop()


async def serve_bare(socket_path: str) -> None:
    """Baseline: grpclib alone, holding the streams and pushing a fixed message per round."""
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    waiters: set[asyncio.Future[None]] = set()
    version = [0]
    pushes = [0]
    streams = [0]
    payload = os.urandom(600)  # about the size of a one-CA ROOTCA secret

    class Bare:
        def __mapping__(self) -> dict[str, Handler]:
            return {
                SDS_STREAM: Handler(
                    self.stream, Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
                )
            }

        async def stream(self, stream: Any) -> None:
            streams[0] += 1

            async def reader() -> None:
                async for _ in stream:
                    pass

            await stream.recv_message()
            r = asyncio.ensure_future(reader())  # drains the ACKs
            try:
                sent = -1
                while True:
                    if sent != version[0]:
                        sent = version[0]
                        resp = DiscoveryResponse(
                            version_info=str(sent), nonce=str(sent), type_url=SECRET_TYPE
                        )
                        resp.resources.add(type_url=SECRET_TYPE, value=payload)
                        await stream.send_message(resp)
                        pushes[0] += 1
                    fut = asyncio.get_running_loop().create_future()
                    waiters.add(fut)
                    await fut
            finally:
                streams[0] -= 1
                r.cancel()

    server = Server([Bare()])
    await server.start(path=socket_path, backlog=4096)

    def stats() -> dict[str, Any]:
        return {
            "rss_kb": rss_kb(),
            "cpu_s": cpu_s(),
            "gc2": gen2_collections(),
            "streams": streams[0],
            "pushes": pushes[0],
        }

    async def rotate() -> int:
        t0 = time.monotonic_ns()
        version[0] += 1
        for f in list(waiters):
            if not f.done():
                f.set_result(None)
        waiters.clear()
        return t0

    await control_loop(stats, rotate)
    server.close()


async def control_loop(stats: Any, rotate: Any) -> None:
    say({"event": "ready", **stats()})
    lines = await stdin_lines()
    while line := (await lines.readline()).decode().strip():
        if line == "stats":
            say({"event": "stats", **stats()})
        elif line == "rotate":
            t0 = await rotate()
            say({"event": "rotated", "t0": t0})
        elif line == "quit":
            break


# ---------------------------------------------------------------------------- client side


async def run_clients(socket_path: str, streams: int, per_conn: int, parallel: int) -> None:
    import grpc
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel
        ("grpc.http2.bdp_probe", 0),  # Envoy does not send BDP pings; C core does by default
    ]
    channels = []
    times: list[list[int]] = [[] for _ in range(streams)]
    sem = asyncio.Semaphore(parallel)
    ready = [0]
    all_ready = asyncio.Event()
    progress = asyncio.Event()

    async def one(i: int, ch: Any) -> None:
        async with sem:
            call = ch.stream_stream(
                SDS_STREAM,
                request_serializer=DiscoveryRequest.SerializeToString,
                response_deserializer=DiscoveryResponse.FromString,
            )()
            await call.write(DiscoveryRequest(resource_names=["ROOTCA"], type_url=SECRET_TYPE))
            resp = await call.read()
            times[i].append(time.monotonic_ns())
            await call.write(
                DiscoveryRequest(
                    resource_names=["ROOTCA"],
                    type_url=SECRET_TYPE,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )
        ready[0] += 1
        if ready[0] == streams:
            all_ready.set()
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            times[i].append(time.monotonic_ns())
            progress.set()
            await call.write(
                DiscoveryRequest(
                    resource_names=["ROOTCA"],
                    type_url=SECRET_TYPE,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )

    tasks = []
    for i in range(streams):
        if i % per_conn == 0:
            channels.append(grpc.aio.insecure_channel(f"unix://{socket_path}", options=options))
        tasks.append(asyncio.ensure_future(one(i, channels[-1])))
    await all_ready.wait()
    say({"event": "ready", "streams": streams})
    lines = await stdin_lines()
    rnd = 0
    while line := (await lines.readline()).decode().strip():
        if line == "quit":
            break
        if line == "collect":
            rnd += 1
            while sum(1 for t in times if len(t) > rnd) < streams:
                progress.clear()
                await progress.wait()
            say({"event": "round", "times": [t[rnd] for t in times]})
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close(None)


# ---------------------------------------------------------------------------- orchestration


class Proc:
    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"process {self.p.args[2:4]} ended: {self.p.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def stop(self) -> None:
        try:
            self.send("quit")
            self.p.wait(30)
        except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
            self.p.kill()
            self.p.wait()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def measure(kind: str, streams: int, procs: int, per_conn: int, rounds: int) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="sds-fanout-")
    sock = os.path.join(d, "public", "agent.sock") if kind == "trustd" else os.path.join(d, "s")
    server = Proc(["serve", kind, sock])
    clients: list[Proc] = []
    try:
        base = server.recv()
        share = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
        t_connect = time.monotonic()
        clients = [Proc(["clients", sock, str(n), str(per_conn), "64"]) for n in share if n]
        for c in clients:
            c.recv()
        connect_s = time.monotonic() - t_connect
        time.sleep(1.0)  # let ACKs of the first answers settle
        server.send("stats")
        loaded = server.recv()
        lat: list[float] = []
        per_round: list[dict[str, float]] = []
        cpu_per_round = []
        for _ in range(rounds):
            server.send("stats")
            before = server.recv()
            server.send("rotate")
            t0 = server.recv()["t0"]
            for c in clients:
                c.send("collect")
            got: list[int] = []
            for c in clients:
                got += c.recv()["times"]

            time.sleep(0.5)  # ACKs of this round
            server.send("stats")
            after = server.recv()
            pushes = after["pushes"] - before["pushes"]
            cpu_per_round.append((after["cpu_s"] - before["cpu_s"], pushes))
            this = [(t - t0) / 1e6 for t in got]
            per_round.append(
                {
                    "p50": round(statistics.median(this), 1),
                    "max": round(max(this), 1),
                    "agent_full_gcs": after["gc2"] - before["gc2"],
                }
            )
            lat += this
        cpu = sum(c for c, _ in cpu_per_round)
        pushes_total = sum(p for _, p in cpu_per_round)
        return {
            "kind": kind,
            "streams": streams,
            "open_streams_seen_by_server": loaded["streams"],
            "connect_s": round(connect_s, 2),
            "rss_base_mb": round(base["rss_kb"] / 1024, 1),
            "rss_loaded_mb": round(loaded["rss_kb"] / 1024, 1),
            "rss_per_stream_kb": round((loaded["rss_kb"] - base["rss_kb"]) / streams, 2),
            "fanout_ms": {
                "p50": round(statistics.median(lat), 1),
                "p99": round(pct(lat, 99), 1),
                "max": round(max(lat), 1),
            },
            "fanout_ms_per_round": per_round,
            "cpu_s_per_1000_pushes": round(cpu / pushes_total * 1000, 3) if pushes_total else None,
            "pushes_measured": pushes_total,
        }
    finally:
        for c in clients:
            c.stop()
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("kind", choices=["trustd", "bare"])
    s.add_argument("socket")
    c = sub.add_parser("clients")
    c.add_argument("socket")
    c.add_argument("streams", type=int)
    c.add_argument("per_conn", type=int)
    c.add_argument("parallel", type=int)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--streams-per-conn", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    if args.cmd == "serve":
        asyncio.run(serve_trustd(args.socket) if args.kind == "trustd" else serve_bare(args.socket))
        return
    if args.cmd == "clients":
        asyncio.run(run_clients(args.socket, args.streams, args.per_conn, args.parallel))
        return
    results = [measure("trustd", args.streams, args.procs, args.streams_per_conn, args.rounds)]
    if not args.no_baseline:
        results.append(
            measure("bare", args.streams, args.procs, args.streams_per_conn, args.rounds)
        )
    for r in results:
        print(json.dumps(r))
    if len(results) == 2:
        t, b = results
        print(
            "ratio trustd/bare-grpclib: "
            f"rss/stream {t['rss_per_stream_kb'] / max(b['rss_per_stream_kb'], 0.01):.2f}x, "
            f"fanout p99 {t['fanout_ms']['p99'] / max(b['fanout_ms']['p99'], 0.01):.2f}x, "
            f"cpu/1000 pushes "
            f"{(t['cpu_s_per_1000_pushes'] or 0) / max(b['cpu_s_per_1000_pushes'] or 0, 1e-6):.2f}x"
        )


if __name__ == "__main__":
    main()
