"""The admin API on the admin socket, with the real server in process: typed messages
(trustd.admin.v1), statuses, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpclib.server
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import Message
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.convert import time_of
from trustd.audit import MemoryAuditSink
from trustd.cli.client import ServerError, _call
from trustd.config import ServerConfig
from trustd.server.admin import AdminService
from trustd.server.app import TrustdServer, bind_unix_socket_server
from trustd.telemetry.http import HealthServer

WEB = "spiffe://trustd.local/ns/shop/sa/web"


@contextlib.asynccontextmanager
async def running_server(tmp_path: Path) -> AsyncIterator[TrustdServer]:
    cfg = ServerConfig.model_validate(
        {
            "dataDir": str(tmp_path / "d"),
            "keyManager": {"kind": "memory"},
            "adminSocket": str(tmp_path / "admin.sock"),
            "metricsAddress": "127.0.0.1:0",
            "serverAddress": "127.0.0.1:0",
        }
    )
    server = TrustdServer(cfg, audit=MemoryAuditSink())
    await server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.stop()


def with_server(test: Callable[[TrustdServer, Path], Awaitable[None]]) -> Callable[[Path], None]:
    """Run an async test body against a fresh server on its own event loop."""

    def run(tmp_path: Path) -> None:
        async def body() -> None:
            async with running_server(tmp_path) as server:
                await test(server, server.cfg.admin_socket_path)

        asyncio.run(body())

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


async def call(sock: Path, method: str, request: Message | None = None) -> Any:
    return await _call(sock, method, request or pb.Empty())


async def status_of(sock: Path, method: str, request: Message) -> tuple[Status | None, str]:
    with pytest.raises(ServerError) as err:
        await call(sock, method, request)
    return err.value.status, str(err.value)


def _csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _mint(
    spiffe_id: str = WEB, csr: bytes | None = None, ttl: int | None = None
) -> pb.MintX509SvidRequest:
    return pb.MintX509SvidRequest(
        spiffe_id=spiffe_id, csr=_csr_pem() if csr is None else csr, ttl_seconds=ttl
    )


def _entry(spiffe_id: str = WEB, *selectors: str) -> pb.CreateEntryRequest:
    return pb.CreateEntryRequest(
        spiffe_id=spiffe_id, selectors=list(selectors or ["unix:uid:1000"])
    )


@with_server
async def test_admin_socket_is_0600_and_owned_by_the_server(
    server: TrustdServer, sock: Path
) -> None:
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


@with_server
async def test_entry_create_list_show_delete(server: TrustdServer, sock: Path) -> None:
    created = await call(
        sock,
        "EntryCreate",
        pb.CreateEntryRequest(
            spiffe_id=WEB, selectors=["unix:uid:1000"], ttl_seconds=1800, dns_names=["web"]
        ),
    )
    assert created.spiffe_id == WEB
    assert created.ttl_seconds == 1800 and list(created.dns_names) == ["web"]
    assert not created.HasField("agent_id")
    listed = await call(sock, "EntryList")
    assert [e.id for e in listed.entries] == [created.id]
    assert await call(sock, "EntryShow", pb.EntryIdRequest(id=created.id)) == created
    assert (await call(sock, "EntryDelete", pb.EntryIdRequest(id=created.id))).id == created.id
    assert list((await call(sock, "EntryList")).entries) == []


@with_server
async def test_the_actor_of_every_event_is_the_kernel_uid(server: TrustdServer, sock: Path) -> None:
    await call(sock, "EntryCreate", _entry())
    assert isinstance(server.audit, MemoryAuditSink)
    [event] = [e for e in server.audit.events if e.type == "admin.entry.create"]
    assert event.actor.kind == "unix"
    assert event.actor.uid == os.getuid()  # from SO_PEERCRED, not from the request
    assert event.actor.addr == str(sock)


@with_server
async def test_errors_carry_the_status_chosen_at_the_edge(server: TrustdServer, sock: Path) -> None:
    await call(sock, "EntryCreate", _entry())
    active = (await call(sock, "AuthorityList")).authorities[0].id
    cases: list[tuple[str, Message, Status, str]] = [
        (
            "EntryCreate",
            _entry("spiffe://Bad/x", "unix:uid:1"),
            Status.INVALID_ARGUMENT,
            "lower-case",
        ),
        ("EntryCreate", _entry(), Status.ALREADY_EXISTS, "exists already"),
        ("EntryCreate", _entry(WEB, "k8s:ns:x"), Status.INVALID_ARGUMENT, "unknown selector type"),
        ("EntryCreate", _entry("", "unix:uid:1"), Status.INVALID_ARGUMENT, "spiffe_id is required"),
        (
            "EntryCreate",
            pb.CreateEntryRequest(spiffe_id=WEB, selectors=["unix:uid:1"], ttl_seconds=-60),
            Status.INVALID_ARGUMENT,
            "ttl must be positive",
        ),
        ("EntryShow", pb.EntryIdRequest(id="nope"), Status.NOT_FOUND, "no entry"),
        ("EntryShow", pb.EntryIdRequest(), Status.INVALID_ARGUMENT, "id is required"),
        ("EntryDelete", pb.EntryIdRequest(id="nope"), Status.NOT_FOUND, "no entry"),
        ("AuthorityTaint", pb.AuthorityRequest(id=active), Status.FAILED_PRECONDITION, "is active"),
        ("AuthorityTaint", pb.AuthorityRequest(), Status.INVALID_ARGUMENT, "id is required"),
        ("AuthorityActivate", pb.AuthorityRequest(), Status.FAILED_PRECONDITION, "no prepared CA"),
        ("SvidMint", _mint(ttl=25 * 3600), Status.INVALID_ARGUMENT, "above the server maximum"),
        ("SvidMint", _mint(csr=b"garbage"), Status.INVALID_ARGUMENT, "csr"),
        ("SvidMint", _mint(spiffe_id=""), Status.INVALID_ARGUMENT, "spiffe_id is required"),
        ("TokenCreate", pb.CreateTokenRequest(ttl_seconds=0), Status.INVALID_ARGUMENT, "token ttl"),
        (
            "TokenCreate",
            pb.CreateTokenRequest(ttl_seconds=-300),
            Status.INVALID_ARGUMENT,
            "token ttl",
        ),
        (
            "TokenCreate",
            pb.CreateTokenRequest(ttl_seconds=2**62),
            Status.INVALID_ARGUMENT,
            "out of range",
        ),
        ("AgentEvict", pb.AgentIdRequest(id="nope"), Status.NOT_FOUND, "agent"),
    ]
    for method, request, want, words in cases:
        got, message = await status_of(sock, method, request)
        assert (method, got) == (method, want), message
        assert words in message, (method, message)
        assert "Traceback" not in message


class _Raw:
    """Bytes sent as they are, whatever the method's message type."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> _Raw:
        return cls(data)


@with_server
async def test_a_request_that_is_not_the_method_message_is_invalid(
    server: TrustdServer, sock: Path
) -> None:
    """Bytes that do not decode as the method's request message are refused, not guessed at."""
    channel = Channel(path=str(sock))
    try:
        method = UnaryUnaryMethod(channel, "/trustd.admin.v1.Admin/EntryShow", _Raw, _Raw)
        for body in (b"\xff\xff\xff", b"\x0a\x05ab"):  # a bad tag; a field cut short
            with pytest.raises(GRPCError) as err:
                await method(_Raw(body), timeout=10)
            assert err.value.status is Status.INVALID_ARGUMENT
            assert "not a valid message" in (err.value.message or "")
    finally:
        channel.close()


@with_server
async def test_svid_mint_returns_a_chain_that_verifies_against_the_bundle(
    server: TrustdServer, sock: Path
) -> None:
    out = await call(sock, "SvidMint", _mint(ttl=600))
    chain = [x509.load_der_x509_certificate(d) for d in out.svid.cert_chain_der]
    roots = x509.load_pem_x509_certificates(out.bundle_pem)
    chain[0].verify_directly_issued_by(roots[0])
    assert out.svid.serial == format(chain[0].serial_number, "x")
    assert out.svid.spiffe_id == WEB
    assert time_of(out.svid.not_after) == chain[0].not_valid_after_utc


@with_server
async def test_svid_mint_refuses_the_ids_reserved_for_the_server_and_agents(
    server: TrustdServer, sock: Path
) -> None:
    for reserved in (
        "spiffe://trustd.local/trustd/server",
        "spiffe://trustd.local/trustd/agent/x",
        "spiffe://trustd.local/trustd",
    ):
        got, message = await status_of(sock, "SvidMint", _mint(spiffe_id=reserved))
        assert got is Status.INVALID_ARGUMENT, message
        assert "/trustd/" in message and "reserved" in message
        assert "Traceback" not in message
    issued = [r.spiffe_id for r in server.store.list_issued()]
    assert issued == ["spiffe://trustd.local/trustd/server"]  # the server's own, only
    assert isinstance(server.audit, MemoryAuditSink)
    denied = [e for e in server.audit.events if e.type == "admin.svid.mint"]
    assert len(denied) == 3 and all("reserved" in e.reason for e in denied)


@with_server
async def test_bundle_show_gives_pem_and_spiffe(server: TrustdServer, sock: Path) -> None:
    out = await call(sock, "BundleShow")
    assert out.bundle.trust_domain == "trustd.local"
    certs = x509.load_pem_x509_certificates(out.pem)
    spiffe = json.loads(out.bundle.spiffe_bundle)
    assert spiffe["spiffe_sequence"] == out.bundle.sequence >= 1
    uses = [k["use"] for k in spiffe["keys"]]
    assert uses == ["x509-svid"] * len(certs) + ["jwt-svid"]  # the CAs, then the JWT key


@with_server
async def test_token_create_defaults_to_ten_minutes(server: TrustdServer, sock: Path) -> None:
    import datetime as dt

    out = await call(sock, "TokenCreate", pb.CreateTokenRequest())
    left = time_of(out.expires_at) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=9) < left <= dt.timedelta(minutes=10)
    assert len(out.token) >= 40


@with_server
async def test_authority_rotation_by_hand(server: TrustdServer, sock: Path) -> None:
    [first] = (await call(sock, "AuthorityList")).authorities
    prepared = await call(sock, "AuthorityPrepare", pb.AuthorityRequest())
    assert prepared.state == "prepared"
    activated = await call(sock, "AuthorityActivate", pb.AuthorityRequest())
    assert activated.id == prepared.id and activated.state == "active"
    tainted = await call(sock, "AuthorityTaint", pb.AuthorityRequest(id=first.id))
    assert tainted.tainted
    # The server's own serving SVID came from the first CA and is still valid.
    status, message = await status_of(sock, "AuthorityRevoke", pb.AuthorityRequest(id=first.id))
    assert status is Status.FAILED_PRECONDITION
    assert "have not been reissued yet" in message and "--force" in message
    blockers = (
        await call(sock, "AuthorityBlockers", pb.AuthorityRequest(id=first.id))
    ).certificates
    assert [b.spiffe_id for b in blockers] == ["spiffe://trustd.local/trustd/server"]
    revoked = await call(sock, "AuthorityRevoke", pb.AuthorityRequest(id=first.id, force=True))
    assert revoked.revoked
    listed = (await call(sock, "AuthorityList")).authorities
    assert [a.id for a in listed] == [prepared.id]


# grpcio's health stubs and grpclib's register the same protobuf symbols, so they cannot be
# imported in one process: the real grpcio client runs in a process of its own.
GRPCIO_HEALTH_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
"""


@with_server
async def test_grpc_health_answers_serving_on_the_admin_socket(
    server: TrustdServer, sock: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GRPCIO_HEALTH_CHECK,
        str(sock),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "SERVING"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@with_server
async def test_metrics_and_http_health(server: TrustdServer, sock: Path) -> None:
    await call(sock, "SvidMint", _mint())
    await status_of(sock, "SvidMint", _mint(csr=b"garbage"))
    assert server.metrics_address is not None
    host, port = server.metrics_address
    base = f"http://{host}:{port}"
    code, body = await asyncio.to_thread(_get, base + "/metrics")
    assert code == 200
    assert 'trustd_svids_issued_total{source="mint"} 1.0' in body
    assert 'trustd_svids_denied_total{reason="invalid_csr"} 1.0' in body
    assert "trustd_signing_duration_seconds_bucket" in body
    assert "trustd_signing_duration_seconds_count" in body
    assert 'trustd_ca_expiry_timestamp_seconds{slot="active"}' in body
    assert 'trustd_admin_requests_total{code="OK",method="SvidMint"} 1.0' in body
    assert await asyncio.to_thread(_get, base + "/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(_get, base + "/readyz") == (200, "ok\n")
    assert "trustd_ready 1.0" in (await asyncio.to_thread(_get, base + "/metrics"))[1]


OTHER_UID = 1000
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
REPO = Path(__file__).resolve().parents[3]
ADMIN_CALL_AS_OTHER_UID = """
import asyncio, json, os, sys
from trustd.cli.client import ServerError, _call
try:
    from trustd.api.admin.v1.admin_pb2 import Empty
    asyncio.run(_call(__import__("pathlib").Path(sys.argv[1]), "EntryList", Empty()))
    print(json.dumps({"uid": os.getuid(), "outcome": "allowed"}))
except ServerError as exc:
    print(json.dumps({"uid": os.getuid(), "outcome": exc.status.name if exc.status else "unreachable",
                      "message": str(exc)}))
"""


def _as_other_uid(sock: Path) -> dict[str, Any]:
    """Fork, setuid(1000) in the child, and call the admin API from there."""
    # The venv's interpreter may sit under a 0700 home; Debian's python3.11 has the same ABI.
    python = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
    proc = subprocess.run(
        [python, "-c", ADMIN_CALL_AS_OTHER_UID, str(sock)],
        env={
            "PYTHONPATH": f"{REPO / 'tests' / 'other_uid_site'}:{SITE_PACKAGES}:{REPO}",
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
        },
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["uid"] == OTHER_UID
    return result


@with_server
async def test_a_caller_with_another_uid_is_refused_by_peer_credentials(
    server: TrustdServer, sock: Path
) -> None:
    """Even on a socket whose mode lets anyone connect, the server checks SO_PEERCRED itself."""
    world = Path(tempfile.mkdtemp(prefix="trustd-admin-"))
    world.chmod(0o755)
    open_sock = world / "admin-0666.sock"
    admin = AdminService(
        server.core,
        server.registry,
        executor=server.executor,
        socket_path=open_sock,
        owner_uid=os.getuid(),
    )
    grpc_server = grpclib.server.Server([admin])
    await bind_unix_socket_server(grpc_server, open_sock, 0o666)
    try:
        result = await asyncio.to_thread(_as_other_uid, open_sock)
        assert result["outcome"] == "PERMISSION_DENIED", result
        assert "only the server's owner or root" in result["message"]
        denied = server.metrics.registry.get_sample_value(
            "trustd_admin_requests_total", {"method": "EntryList", "code": "PERMISSION_DENIED"}
        )
        assert denied == 1.0
    finally:
        grpc_server.close()
        await grpc_server.wait_closed()
        shutil.rmtree(world, ignore_errors=True)


def test_readyz_is_503_with_the_reason_when_not_ready() -> None:
    async def body() -> None:
        state = {"ready": False}
        health = HealthServer(
            registry=CollectorRegistry(),
            readiness=lambda: (state["ready"], "" if state["ready"] else "no active CA"),
        )
        host, port = await health.start("127.0.0.1:0")
        try:
            base = f"http://{host}:{port}"
            assert await asyncio.to_thread(_get, base + "/readyz") == (503, "no active CA\n")
            assert await asyncio.to_thread(_get, base + "/healthz") == (200, "ok\n")
            state["ready"] = True
            assert (await asyncio.to_thread(_get, base + "/readyz"))[0] == 200
            assert (await asyncio.to_thread(_get, base + "/nope"))[0] == 404
            req = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                await asyncio.to_thread(urllib.request.urlopen, req, None, 10)
            assert err.value.code == 405
        finally:
            await health.stop()

    asyncio.run(body())


def test_status_reports_readiness(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_server(tmp_path) as server:
            out = await call(server.cfg.admin_socket_path, "Status")
            assert out == pb.StatusResponse(ready=True, reason="ok", trust_domain="trustd.local")

    asyncio.run(body())


def _pa_file(
    mode: str, namespace: str = "trustd-system", name: str = "default", *, force: bool = False
) -> pb.ApplyPolicyRequest:
    text = (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
    return pb.ApplyPolicyRequest(files=[pb.PolicyFile(name="pa.yaml", text=text)], force=force)


@with_server
async def test_policy_changes_inside_an_active_rollout_are_refused_naming_it(
    server: TrustdServer, sock: Path
) -> None:
    from trustd.policy.status import Destination, InboundStats, ProxyStatus
    from trustd.spiffeid import SpiffeId

    await call(sock, "PolicyApply", _pa_file("DISABLE", force=True))
    backend = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/backend")
    server.policy.report(ProxyStatus(
        proxy_id="backend-1", spiffe_id=backend, acked_version=1,
        inbound=(InboundStats(port=16006, mode="DISABLE"),),
    ))  # fmt: skip
    server.policy.report(ProxyStatus(
        proxy_id="web-1", spiffe_id=SpiffeId.parse(WEB), acked_version=1,
        destinations=(Destination(spiffe_id=backend, port=16006, transport="plaintext"),),
    ))  # fmt: skip
    started = await call(
        sock,
        "RolloutStart",
        pb.StartRolloutRequest(selector="spiffe://trustd.local/ns/shop/**", target="STRICT"),
    )
    assert started.state == "running" and started.target == "STRICT"
    code, text = await status_of(sock, "PolicyApply", _pa_file("PERMISSIVE", "shop", "n"))
    assert code is Status.FAILED_PRECONDITION
    assert started.id in text and "PeerAuthentication/shop/n" in text and "--force" in text
    assert list((await call(sock, "PolicyStatus")).objects) == [
        "PeerAuthentication/trustd-system/default"
    ]
    # an AuthorizationPolicy does not touch the modes: the rollout does not stand in its way
    # (the proxies have not acknowledged step 1 yet, so the usual safety check needs --force)
    authz = (
        "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: a, namespace: shop}\nspec:\n  action: DENY\n  rules: []\n"
    )
    files = [pb.PolicyFile(name="a.yaml", text=authz)]
    code, text = await status_of(sock, "PolicyApply", pb.ApplyPolicyRequest(files=files))
    assert "still run a version older" in text and "rollout" not in text
    await call(sock, "PolicyApply", pb.ApplyPolicyRequest(files=files, force=True))
    # policy status shows what each proxy enforces against what the policy says
    status = await call(sock, "PolicyStatus")
    rows = {(r.proxy_id, r.side): r for r in status.enforcement}
    assert rows[("backend-1", "server")].enforced == "DISABLE"
    assert rows[("backend-1", "server")].wanted == "PERMISSIVE"  # step 1 published, not acked
    assert rows[("web-1", "client")].enforced == "plaintext"
    assert rows[("web-1", "client")].destination == str(backend)
    assert [p.proxy_id for p in status.proxies] == ["backend-1", "web-1"]
    assert status.converged is False
    server.policy.tick()
    rollout = await call(sock, "RolloutStatus")
    assert list(rollout.waiting_for) == ["backend-1", "web-1"]
    assert any("backend-1 port 16006 enforces DISABLE" in t for t in rollout.not_enforced)
    assert {(e.proxy_id, e.side) for e in rollout.enforcement} == set(rows)


@with_server
async def test_a_rollout_over_no_reporting_server_is_refused(
    server: TrustdServer, sock: Path
) -> None:
    code, text = await status_of(
        sock,
        "RolloutStart",
        pb.StartRolloutRequest(selector="spiffe://trustd.local/ns/shop/*", target="STRICT"),
    )
    assert code is Status.FAILED_PRECONDITION, text
    assert "matches no server proxy" in text
    code, _ = await status_of(sock, "RolloutStatus", pb.Empty())
    assert code is Status.NOT_FOUND
