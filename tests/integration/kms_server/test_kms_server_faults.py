"""KMS faults against the real server: sealed, down, hung, wrong token, wrong PIN.

Each one runs the real TrustdServer (in-process, or `trustd server` as a
child for the PKCS#11 token) against a real OpenBao or SoftHSM2 that the test
breaks on purpose.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog.testing
from grpclib.const import Status
from kms_peers import BaoDevServer, SilentServer
from kms_server_harness import (
    ADMIN,
    PEER_WAIT,
    TD,
    BaoRaftServer,
    SoftHsmToken,
    TrustdProcess,
    base_config,
    ca_keys,
    cli,
    fetch_workload,
    new_csr,
    p11_keys,
    running,
    server_config,
    settled_reason,
    transit_keys,
    write_config,
)

from trustd.api.admin.v1 import admin_pb2
from trustd.cli.client import ServerError, call
from trustd.errors import PermissionDeniedError, UnavailableError
from trustd.registry import CreateEntry
from trustd.server.app import TrustdServer

pytestmark = pytest.mark.integration

PREFIX = "trustd-ft-"
SPIFFE_ID = f"spiffe://{TD}/ns/faults/sa/web"


def _transit(address: str, token_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "vault-transit",
        "address": address,
        "tokenFile": str(token_file),
        "keyPrefix": PREFIX,
        **extra,
    }


def _secret_file(tmp: Path, name: str, value: str) -> Path:
    path = tmp / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(value)
    return path


def _mint(srv: TrustdServer) -> Any:
    _, csr = new_csr()
    return srv.core.mint(ADMIN, spiffe_id=SPIFFE_ID, csr=csr, ttl=None)


async def _admin_mint_status(srv: TrustdServer) -> Status | None:
    """SvidMint through the admin API (the CLI's way in): the gRPC status it failed with."""
    _, csr = new_csr()
    try:
        await asyncio.to_thread(
            call,
            srv.cfg.admin_socket_path,
            "SvidMint",
            admin_pb2.MintX509SvidRequest(spiffe_id=SPIFFE_ID, csr=csr),
        )
    except ServerError as exc:
        return exc.status
    return None


async def _raises(fn: Callable[[], object]) -> BaseException | None:
    try:
        await asyncio.to_thread(fn)
    except BaseException as exc:
        return exc
    return None


async def _until_ready(srv: TrustdServer) -> tuple[bool, str]:
    deadline = time.monotonic() + PEER_WAIT
    while True:
        ready, reason = await asyncio.to_thread(srv.readiness)
        if ready or time.monotonic() > deadline:
            return ready, reason
        await asyncio.sleep(0.1)


def _readyz(srv: TrustdServer) -> tuple[int, str]:
    assert srv.metrics_address is not None
    host, port = srv.metrics_address
    r = requests.get(f"http://{host}:{port}/readyz", timeout=10)
    return r.status_code, r.text


# --- Vault sealed at start ------------------------------------------------------------------


def test_sealed_vault_at_start_means_not_ready_nothing_issued_then_ready_after_unseal(
    bao: BaoDevServer, tmp_path: Path
) -> None:
    bao.seal()
    cfg = server_config(
        tmp_path / "d",
        keyManager=_transit(bao.address, _secret_file(tmp_path, "t", bao.root_token)),
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with running(cfg, wait=False) as r:
            srv = r.server
            seen["reason"] = await settled_reason(srv)
            seen["ready"] = srv.readiness()[0]
            seen["readyz"] = await asyncio.to_thread(_readyz, srv)
            seen["mint_error"] = await _raises(lambda: _mint(srv))
            seen["admin_status"] = await _admin_mint_status(srv)
            seen["ledger_sealed"] = srv.store.list_issued()
            seen["authorities_sealed"] = srv.store.list_authorities()

            await asyncio.to_thread(bao.unseal)  # nothing else: no restart, no call into trustd
            await srv.wait_ready(timeout=PEER_WAIT)
            seen["ready_after"] = await asyncio.to_thread(srv.readiness)
            seen["svid"] = await asyncio.to_thread(_mint, srv)

    asyncio.run(main())
    assert seen["ready"] is False
    assert "sealed" in seen["reason"] and bao.address in seen["reason"], seen["reason"]
    assert seen["readyz"][0] == 503 and "sealed" in seen["readyz"][1]
    assert isinstance(seen["mint_error"], UnavailableError), seen["mint_error"]
    assert seen["admin_status"] == Status.UNAVAILABLE
    assert seen["ledger_sealed"] == [] and seen["authorities_sealed"] == []
    assert seen["ready_after"] == (True, "ok")
    assert str(seen["svid"].spiffe_id) == SPIFFE_ID
    assert len(ca_keys(transit_keys(bao.client(), PREFIX), PREFIX)) == 1


# --- Vault down mid-operation, and back with its storage ------------------------------------


def test_vault_down_mid_operation_fails_issuance_agents_keep_serving_and_it_recovers(
    bao_raft: BaoRaftServer, tmp_path: Path
) -> None:
    cfg = server_config(
        tmp_path / "d",
        keyManager=_transit(bao_raft.address, _secret_file(tmp_path, "t", bao_raft.root_token)),
    )
    sock = cfg.agent_socket_path
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with running(cfg, agent=True) as r:
            srv = r.server
            await asyncio.to_thread(
                srv.registry.entries.create,
                ADMIN,
                CreateEntry(spiffe_id=SPIFFE_ID, selectors=("unix:uid:0",)),
            )
            seen["wl_before"] = await asyncio.to_thread(fetch_workload, sock)
            seen["authorities_before"] = srv.store.list_authorities()
            seen["keys_before"] = set(transit_keys(bao_raft.client(), PREFIX))
            seen["ledger_before"] = len(srv.store.list_issued())

            await asyncio.to_thread(bao_raft.stop)
            seen["mint_error"] = await _raises(lambda: _mint(srv))
            seen["admin_status"] = await _admin_mint_status(srv)
            seen["ready_down"] = await asyncio.to_thread(srv.readiness)
            seen["wl_down"] = await asyncio.to_thread(fetch_workload, sock)
            seen["prepare_error"] = await _raises(lambda: srv.core.authority_op(ADMIN, "prepare"))
            seen["authorities_down"] = srv.store.list_authorities()
            seen["ledger_down"] = len(srv.store.list_issued())

            await asyncio.to_thread(bao_raft.restart)  # same storage, unsealed by the fixture
            seen["ready_back"] = await _until_ready(srv)
            seen["svid_back"] = await asyncio.to_thread(_mint, srv)
            seen["keys_back"] = set(transit_keys(bao_raft.client(), PREFIX))

    asyncio.run(main())
    assert isinstance(seen["mint_error"], UnavailableError), seen["mint_error"]
    assert "cannot reach vault" in str(seen["mint_error"])
    assert seen["admin_status"] == Status.UNAVAILABLE
    ready, reason = seen["ready_down"]
    assert ready is False and "cannot reach vault" in reason, reason
    # the agent serves the SVID it holds to a real Workload API client
    before, down = seen["wl_before"], seen["wl_down"]
    assert down.chain[0].serial_number == before.chain[0].serial_number
    assert down.key_der == before.key_der
    # a failed prepare leaves the authority list as it was, nothing issued meanwhile
    assert isinstance(seen["prepare_error"], UnavailableError), seen["prepare_error"]
    assert seen["authorities_down"] == seen["authorities_before"]
    assert seen["ledger_down"] == seen["ledger_before"]
    # back: ready again by itself, and the same transit key signs
    assert seen["ready_back"] == (True, "ok")
    [authority] = seen["authorities_before"]
    assert seen["svid_back"].authority_id == authority.id
    assert seen["keys_back"] == seen["keys_before"]


# --- a prepare that fails half-way ------------------------------------------------------------


def test_prepare_failing_at_the_upstream_leaves_no_authority_and_no_transit_key(
    bao: BaoDevServer, tmp_path: Path
) -> None:
    root = bao.client()
    pki_token = root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]
    cfg = server_config(
        tmp_path / "d",
        keyManager=_transit(bao.address, _secret_file(tmp_path, "t", bao.root_token)),
        upstreamAuthority={
            "kind": "vault-pki",
            "address": bao.address,
            "tokenFile": str(_secret_file(tmp_path, "pki", pki_token)),
        },
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with running(cfg) as r:
            srv = r.server
            seen["authorities_before"] = srv.store.list_authorities()
            seen["keys_before"] = set(transit_keys(root, PREFIX))
            root.auth.token.revoke(pki_token)  # the upstream now refuses trustd
            with structlog.testing.capture_logs() as logs:
                seen["error"] = await _raises(lambda: srv.core.authority_op(ADMIN, "prepare"))
            seen["logs"] = logs
            seen["authorities_after"] = srv.store.list_authorities()
            seen["keys_after"] = set(transit_keys(root, PREFIX))

    asyncio.run(main())
    assert isinstance(seen["error"], PermissionDeniedError), seen["error"]
    assert pki_token not in str(seen["error"])
    assert seen["authorities_after"] == seen["authorities_before"]
    # the transit key made for the new slot was created, then retired again
    events = [e["event"] for e in seen["logs"]]
    assert "kms key created" in events and "kms key retired" in events, events
    assert seen["keys_after"] == seen["keys_before"]


# --- a hung KMS -------------------------------------------------------------------------------


def test_hung_vault_is_bounded_by_the_timeout_and_reported(
    silent_server: SilentServer, tmp_path: Path
) -> None:
    address = f"http://127.0.0.1:{silent_server.port}"
    cfg = server_config(
        tmp_path / "d",
        keyManager=_transit(
            address, _secret_file(tmp_path, "t", "s." + secrets.token_hex(12)), timeout=1
        ),
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with running(cfg, wait=False) as r:
            srv = r.server
            seen["reason"] = await settled_reason(srv)
            seen["ready"] = srv.readiness()[0]
            seen["mint_error"] = await _raises(lambda: _mint(srv))
            seen["admin_status"] = await _admin_mint_status(srv)
            seen["ledger"] = srv.store.list_issued()
        seen["stopped"] = True  # stop() came back although vault never answered

    asyncio.run(main())
    assert seen["ready"] is False
    assert "did not answer" in seen["reason"] and "within 1s" in seen["reason"], seen["reason"]
    assert silent_server.accepted, "trustd never connected to the hung vault"
    assert isinstance(seen["mint_error"], UnavailableError), seen["mint_error"]
    assert seen["admin_status"] == Status.UNAVAILABLE
    assert seen["ledger"] == []
    assert seen["stopped"]


# --- wrong credentials ------------------------------------------------------------------------


def test_wrong_vault_token_is_a_clear_reason_and_log_without_the_token(
    bao: BaoDevServer, tmp_path: Path
) -> None:
    wrong = "s." + secrets.token_hex(12)
    cfg = server_config(
        tmp_path / "d", keyManager=_transit(bao.address, _secret_file(tmp_path, "t", wrong))
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        with structlog.testing.capture_logs() as logs:
            async with running(cfg, wait=False) as r:
                seen["reason"] = await settled_reason(r.server)
                seen["ready"] = r.server.readiness()[0]
                seen["readyz"] = await asyncio.to_thread(_readyz, r.server)
        seen["logs"] = logs

    asyncio.run(main())
    assert seen["ready"] is False
    assert "rejected the token" in seen["reason"], seen["reason"]
    assert "rejected the token" in seen["readyz"][1]
    retries = [e for e in seen["logs"] if e["event"] == "cannot activate a CA yet; retrying"]
    assert retries and "rejected the token" in retries[0]["error"]
    text = repr(seen["logs"]) + seen["reason"] + seen["readyz"][1]
    assert wrong not in text and bao.root_token not in text
    assert transit_keys(bao.client(), PREFIX) == {}


def test_wrong_pkcs11_pin_is_a_clear_reason_and_log_sent_to_the_token_once(
    softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_hex(6)
    pin_file = _secret_file(tmp_path, "pin", wrong)
    data = tmp_path / "d"
    cfg = write_config(
        tmp_path / "trustd.yaml",
        base_config(
            data,
            keyManager={
                "kind": "pkcs11",
                "module": str(softhsm_token.module),
                "tokenLabel": softhsm_token.label,
                "pinFile": str(pin_file),
            },
        ),
    )
    proc = TrustdProcess("server", cfg, log_path=tmp_path / "server.log", env=softhsm_token.env())
    proc.start()
    try:
        deadline = time.monotonic() + PEER_WAIT
        while proc.log_text().count("cannot activate a CA yet") < 2:  # two retries at least
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
            assert time.monotonic() < deadline, proc.log_text()[-3000:]
            time.sleep(0.1)
        status, body = proc.readyz()
    finally:
        code = proc.stop()
        log = proc.log_text()
    assert status == 503 and "rejected the pin" in body, body
    assert "rejected the pin" in log and log.count("cannot activate a CA yet") >= 2
    # the refused PIN went to the token once: retries do not lock the token
    assert log.count("pkcs11 pin rejected") == 1, log
    [rejected] = [line for line in log.splitlines() if "pkcs11 pin rejected" in line]
    assert softhsm_token.label in rejected  # names the token (not redacted as if a secret)
    for secret in (wrong, softhsm_token.pin, softhsm_token.so_pin):
        assert secret not in log and secret not in body
    assert code == 0, log[-3000:]
    assert p11_keys(softhsm_token) == {}  # the right PIN still opens it; no key was made


# --- `trustd up` through a long seal ----------------------------------------------------------


def test_trustd_up_waits_out_a_long_seal_and_comes_up_after_unseal(
    bao: BaoDevServer, tmp_path: Path
) -> None:
    """`trustd up` keeps retrying (and answering /readyz) however long Vault stays sealed.

    The server's backoff doubles from 0.5 s; Vault is unsealed after the sixth failed
    attempt, so the seventh, which succeeds, comes after more than 30 s of waiting:
    longer than any fixed start-up wait.
    """
    bao.seal()
    data = tmp_path / "d"
    cfg = write_config(
        tmp_path / "trustd.yaml",
        base_config(
            data, keyManager=_transit(bao.address, _secret_file(tmp_path, "t", bao.root_token))
        ),
    )
    proc = TrustdProcess("up", cfg, log_path=tmp_path / "up.log")
    proc.start()
    try:
        deadline = time.monotonic() + PEER_WAIT
        while proc.log_text().count("cannot activate a CA yet") < 6:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
            assert time.monotonic() < deadline, proc.log_text()[-3000:]
            time.sleep(0.2)
        sealed = proc.readyz()
        bao.unseal()
        proc.wait_banner()
        ready = proc.readyz()
        minted = cli(
            data / "admin.sock",
            "svid",
            "mint",
            "--spiffe-id",
            SPIFFE_ID,
            "--out-dir",
            str(tmp_path / "m"),
        )
    finally:
        code = proc.stop()
    assert sealed[0] == 503 and "sealed" in sealed[1], sealed
    assert ready == (200, "ok\n")
    assert minted.returncode == 0
    assert code == 0, proc.log_text()[-3000:]
