"""The admin API on the admin socket, with the real server in process: JSON over gRPC, statuses, health."""

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
from google.protobuf.wrappers_pb2 import BytesValue
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from trustd.cli.client import ServerError, _call
from trustd.config import ServerConfig
from trustd.server.admin import SERVICE, AdminService
from trustd.server.app import TrustdServer, bind_unix_socket_server
from trustd.server.audit_hook import MemoryAuditor
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
    server = TrustdServer(cfg, auditor=MemoryAuditor())
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


async def call(sock: Path, method: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return await _call(sock, method, doc or {})


async def status_of(sock: Path, method: str, doc: dict[str, Any]) -> tuple[Status | None, str]:
    with pytest.raises(ServerError) as err:
        await call(sock, method, doc)
    return err.value.status, str(err.value)


def _csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


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
        {"spiffe_id": WEB, "selectors": ["unix:uid:1000"], "ttl": "30m", "dns_names": ["web"]},
    )
    assert created["spiffe_id"] == WEB
    assert created["ttl"] == 1800
    listed = await call(sock, "EntryList")
    assert [e["id"] for e in listed["entries"]] == [created["id"]]
    assert await call(sock, "EntryShow", {"id": created["id"]}) == created
    assert (await call(sock, "EntryDelete", {"id": created["id"]}))["id"] == created["id"]
    assert (await call(sock, "EntryList"))["entries"] == []


@with_server
async def test_the_actor_of_every_event_is_the_kernel_uid(server: TrustdServer, sock: Path) -> None:
    await call(sock, "EntryCreate", {"spiffe_id": WEB, "selectors": ["unix:uid:1000"]})
    assert isinstance(server.auditor, MemoryAuditor)
    [event] = [e for e in server.auditor.events if e["type"] == "admin.entry.create"]
    assert event["actor"].kind == "unix"
    assert event["actor"].uid == os.getuid()  # from SO_PEERCRED, not from the request
    assert event["actor"].addr == str(sock)


@with_server
async def test_errors_carry_the_status_chosen_at_the_edge(server: TrustdServer, sock: Path) -> None:
    await call(sock, "EntryCreate", {"spiffe_id": WEB, "selectors": ["unix:uid:1000"]})
    active = (await call(sock, "AuthorityList"))["authorities"][0]["id"]
    cases: list[tuple[str, dict[str, Any], Status, str]] = [
        (
            "EntryCreate",
            {"spiffe_id": "spiffe://Bad/x", "selectors": ["unix:uid:1"]},
            Status.INVALID_ARGUMENT,
            "lower-case",
        ),
        (
            "EntryCreate",
            {"spiffe_id": WEB, "selectors": ["unix:uid:1000"]},
            Status.ALREADY_EXISTS,
            "exists already",
        ),
        (
            "EntryCreate",
            {"spiffe_id": WEB, "selectors": ["k8s:ns:x"]},
            Status.INVALID_ARGUMENT,
            "unknown selector type",
        ),
        (
            "EntryCreate",
            {"selectors": ["unix:uid:1"]},
            Status.INVALID_ARGUMENT,
            "spiffe_id is required",
        ),
        (
            "EntryCreate",
            {"spiffe_id": WEB, "selectors": "unix:uid:1"},
            Status.INVALID_ARGUMENT,
            "list of strings",
        ),
        ("EntryShow", {"id": "nope"}, Status.NOT_FOUND, "no entry"),
        ("EntryDelete", {"id": "nope"}, Status.NOT_FOUND, "no entry"),
        ("AuthorityTaint", {"id": active}, Status.FAILED_PRECONDITION, "is active"),
        ("AuthorityTaint", {}, Status.INVALID_ARGUMENT, "id is required"),
        ("AuthorityActivate", {}, Status.FAILED_PRECONDITION, "no prepared CA"),
        (
            "SvidMint",
            {"spiffe_id": WEB, "csr_pem": _csr_pem(), "ttl": "25h"},
            Status.INVALID_ARGUMENT,
            "above the server maximum",
        ),
        ("SvidMint", {"spiffe_id": WEB, "csr_pem": "garbage"}, Status.INVALID_ARGUMENT, "csr"),
        (
            "SvidMint",
            {"spiffe_id": WEB, "csr_pem": _csr_pem(), "ttl": "soon"},
            Status.INVALID_ARGUMENT,
            "invalid duration",
        ),
        ("TokenCreate", {"ttl": 0}, Status.INVALID_ARGUMENT, "token ttl"),
        ("TokenCreate", {"ttl": "-5m"}, Status.INVALID_ARGUMENT, "token ttl"),
        ("TokenCreate", {"ttl": 1e30}, Status.INVALID_ARGUMENT, "out of range"),
        ("TokenCreate", {"ttl": True}, Status.INVALID_ARGUMENT, "invalid ttl"),
    ]
    for method, doc, want, words in cases:
        got, message = await status_of(sock, method, doc)
        assert (method, got) == (method, want), message
        assert words in message, (method, message)
        assert "Traceback" not in message


@with_server
async def test_requests_that_are_not_json_objects_are_invalid(
    server: TrustdServer, sock: Path
) -> None:
    channel = Channel(path=str(sock))
    try:
        stub = UnaryUnaryMethod(channel, f"/{SERVICE}/EntryList", BytesValue, BytesValue)
        for body in (b"[1, 2]", b"{not json", b'"text"'):
            with pytest.raises(GRPCError) as err:
                await stub(BytesValue(value=body))
            assert err.value.status is Status.INVALID_ARGUMENT
            assert "JSON" in (err.value.message or "")
    finally:
        channel.close()


@with_server
async def test_svid_mint_returns_a_chain_that_verifies_against_the_bundle(
    server: TrustdServer, sock: Path
) -> None:
    out = await call(sock, "SvidMint", {"spiffe_id": WEB, "csr_pem": _csr_pem(), "ttl": "10m"})
    chain = x509.load_pem_x509_certificates(out["chain_pem"].encode())
    roots = x509.load_pem_x509_certificates(out["bundle_pem"].encode())
    chain[0].verify_directly_issued_by(roots[0])
    assert out["serial"] == format(chain[0].serial_number, "x")
    assert out["spiffe_id"] == WEB


@with_server
async def test_svid_mint_refuses_the_ids_reserved_for_the_server_and_agents(
    server: TrustdServer, sock: Path
) -> None:
    for reserved in (
        "spiffe://trustd.local/trustd/server",
        "spiffe://trustd.local/trustd/agent/x",
        "spiffe://trustd.local/trustd",
    ):
        got, message = await status_of(
            sock, "SvidMint", {"spiffe_id": reserved, "csr_pem": _csr_pem()}
        )
        assert got is Status.INVALID_ARGUMENT, message
        assert "/trustd/" in message and "reserved" in message
        assert "Traceback" not in message
    issued = [r.spiffe_id for r in server.store.list_issued()]
    assert issued == ["spiffe://trustd.local/trustd/server"]  # the server's own, only
    assert isinstance(server.auditor, MemoryAuditor)
    denied = [e for e in server.auditor.events if e["type"] == "admin.svid.mint"]
    assert len(denied) == 3 and all("reserved" in e["reason"] for e in denied)


@with_server
async def test_bundle_show_gives_pem_and_spiffe(server: TrustdServer, sock: Path) -> None:
    out = await call(sock, "BundleShow")
    assert out["trust_domain"] == "trustd.local"
    certs = x509.load_pem_x509_certificates(out["pem"].encode())
    spiffe = out["spiffe"]
    assert spiffe["spiffe_sequence"] == out["sequence"] >= 1
    uses = [k["use"] for k in spiffe["keys"]]
    assert uses == ["x509-svid"] * len(certs) + ["jwt-svid"]  # the CAs, then the JWT key


@with_server
async def test_token_create_defaults_to_ten_minutes(server: TrustdServer, sock: Path) -> None:
    import datetime as dt

    out = await call(sock, "TokenCreate")
    expires = dt.datetime.fromisoformat(out["expires_at"].replace("Z", "+00:00"))
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=9) < left <= dt.timedelta(minutes=10)
    assert len(out["token"]) >= 40


@with_server
async def test_authority_rotation_by_hand(server: TrustdServer, sock: Path) -> None:
    [first] = (await call(sock, "AuthorityList"))["authorities"]
    prepared = await call(sock, "AuthorityPrepare")
    assert prepared["state"] == "prepared"
    activated = await call(sock, "AuthorityActivate")
    assert activated["id"] == prepared["id"] and activated["state"] == "active"
    tainted = await call(sock, "AuthorityTaint", {"id": first["id"]})
    assert tainted["tainted"]
    # The server's own serving SVID came from the first CA and is still valid.
    status, message = await status_of(sock, "AuthorityRevoke", {"id": first["id"]})
    assert status is Status.FAILED_PRECONDITION
    assert "have not been reissued yet" in message and "--force" in message
    revoked = await call(sock, "AuthorityRevoke", {"id": first["id"], "force": True})
    assert revoked["revoked"]
    listed = (await call(sock, "AuthorityList"))["authorities"]
    assert [a["id"] for a in listed] == [prepared["id"]]


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
    await call(sock, "SvidMint", {"spiffe_id": WEB, "csr_pem": _csr_pem()})
    await status_of(sock, "SvidMint", {"spiffe_id": WEB, "csr_pem": "garbage"})
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
    asyncio.run(_call(__import__("pathlib").Path(sys.argv[1]), "EntryList", {}))
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
        env={"PYTHONPATH": f"{SITE_PACKAGES}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
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
        server.core, executor=server.executor, socket_path=open_sock, owner_uid=os.getuid()
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


def test_status_reports_readiness_as_json(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_server(tmp_path) as server:
            out = await call(server.cfg.admin_socket_path, "Status")
            assert out == {"ready": True, "reason": "ok", "trust_domain": "trustd.local"}
            json.dumps(out)

    asyncio.run(body())


def _pa_file(mode: str, namespace: str = "trustd-system", name: str = "default") -> dict[str, Any]:
    text = (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
    return {"files": [{"name": "pa.yaml", "text": text}]}


@with_server
async def test_policy_changes_inside_an_active_rollout_are_refused_naming_it(
    server: TrustdServer, sock: Path
) -> None:
    from trustd.policy.status import Destination, InboundStats, ProxyStatus
    from trustd.spiffeid import SpiffeId

    await call(sock, "PolicyApply", {**_pa_file("DISABLE"), "force": True})
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
        sock, "RolloutStart", {"selector": "spiffe://trustd.local/ns/shop/**", "target": "STRICT"}
    )
    assert started["state"] == "running"
    code, text = await status_of(sock, "PolicyApply", _pa_file("PERMISSIVE", "shop", "n"))
    assert code is Status.FAILED_PRECONDITION
    assert started["id"] in text and "PeerAuthentication/shop/n" in text and "--force" in text
    assert (await call(sock, "PolicyStatus"))["objects"] == ["PeerAuthentication/trustd-system/default"]
    # an AuthorizationPolicy does not touch the modes: the rollout does not stand in its way
    # (the proxies have not acknowledged step 1 yet, so the usual safety check needs --force)
    authz = (
        "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: a, namespace: shop}\nspec:\n  action: DENY\n  rules: []\n"
    )
    code, text = await status_of(sock, "PolicyApply", {"files": [{"name": "a.yaml", "text": authz}]})
    assert "still run a version older" in text and "rollout" not in text
    await call(sock, "PolicyApply", {"files": [{"name": "a.yaml", "text": authz}], "force": True})
    # policy status shows what each proxy enforces against what the policy says
    status = await call(sock, "PolicyStatus")
    rows = {(r["proxyId"], r["side"]): r for r in status["enforcement"]}
    assert rows[("backend-1", "server")]["enforced"] == "DISABLE"
    assert rows[("backend-1", "server")]["policy"] == "PERMISSIVE"  # step 1 published, not acked
    assert rows[("web-1", "client")]["enforced"] == "plaintext"
    assert status["converged"] is False
    server.policy.tick()
    rollout = await call(sock, "RolloutStatus")
    assert rollout["waitingFor"] == ["backend-1", "web-1"]
    assert any("backend-1 port 16006 enforces DISABLE" in t for t in rollout["notEnforced"])


@with_server
async def test_a_rollout_over_no_reporting_server_is_refused(server: TrustdServer, sock: Path) -> None:
    code, text = await status_of(
        sock, "RolloutStart", {"selector": "spiffe://trustd.local/ns/shop/*", "target": "STRICT"}
    )
    assert code is Status.FAILED_PRECONDITION, text
    assert "matches no server proxy" in text
    code, _ = await status_of(sock, "RolloutStatus", {})
    assert code is Status.NOT_FOUND
