"""trustd's CA as an intermediate of a real OpenBao PKI mount (upstreamAuthority vault-pki).

The server and an agent run in-process, wired as `trustd up` wires them; SVIDs
are fetched over the agent socket by Envoy's SDS protocol and by the real
`spiffe` WorkloadApiClient. Rotation is driven with a FakeClock, the
certificates themselves come from Vault.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kms_peers import BaoDevServer
from kms_server_harness import (
    ADMIN,
    TD,
    ca_keys,
    fetch_workload,
    new_csr,
    openssl_verify,
    pem,
    pki_root,
    policy_token,
    running,
    sds_fetch,
    server_config,
    spki_hex,
    transit_keys,
    transit_public_spki,
    uri_sans,
)

from trustd.clock import FakeClock
from trustd.errors import ConfigError
from trustd.registry import CreateEntry
from trustd.server.app import TrustdServer

pytestmark = pytest.mark.integration

PREFIX = "trustd-up-"


def _key_manager(kind: str, bao: BaoDevServer, token_file: Path) -> dict[str, Any]:
    if kind == "local":
        return {"kind": "local"}
    return {
        "kind": "vault-transit",
        "address": bao.address,
        "tokenFile": str(token_file),
        "keyPrefix": PREFIX,
    }


def _upstream(bao: BaoDevServer, token_file: Path) -> dict[str, Any]:
    return {
        "kind": "vault-pki",
        "address": bao.address,
        "tokenFile": str(token_file),
        "mount": "pki",
        "issuer": "default",
    }


def _token_file(tmp: Path, bao: BaoDevServer, *policies: str) -> Path:
    """A file holding the root token, or a token limited to the README's ``policies``."""
    path = tmp / "secrets" / "vault-token"
    path.parent.mkdir()
    path.write_text(policy_token(bao.client(), *policies) if policies else bao.root_token)
    return path


@pytest.mark.parametrize("key_manager", ["local", "vault-transit"])
def test_sds_and_workload_api_serve_the_intermediate_and_the_upstream_root(
    bao: BaoDevServer, tmp_path: Path, key_manager: str
) -> None:
    # trustd's token holds only the README's minimal policies
    policies = ["pki-policy"] + (["transit-policy"] if key_manager == "vault-transit" else [])
    token_file = _token_file(tmp_path, bao, *policies)
    cfg = server_config(
        tmp_path / "d",
        keyManager=_key_manager(key_manager, bao, token_file),
        upstreamAuthority=_upstream(bao, token_file),
    )
    sock = cfg.agent_socket_path

    async def main() -> tuple[Any, ...]:
        async with running(cfg, agent=True) as r:
            await asyncio.to_thread(
                r.server.registry.entries.create,
                ADMIN,
                CreateEntry(spiffe_id=f"spiffe://{TD}/ns/up/sa/web", selectors=("unix:uid:0",)),
            )
            wl = await asyncio.to_thread(fetch_workload, sock)
            default = await asyncio.to_thread(sds_fetch, sock, "default")
            rootca = await asyncio.to_thread(sds_fetch, sock, "ROOTCA")
            records = r.server.store.list_authorities()
            return wl, default, rootca, records

    wl, default, rootca, records = asyncio.run(main())
    root = pki_root(bao.client())
    [active] = records
    intermediate = active.certificate

    # the CA is an intermediate signed by Vault's root, for this trust domain
    assert intermediate.issuer == root.subject
    intermediate.verify_directly_issued_by(root)
    assert uri_sans(intermediate) == [f"spiffe://{TD}"]
    assert active.upstream_roots == (root,)

    # Workload API: leaf + intermediate; the bundle is the upstream root alone
    assert wl.spiffe_id == f"spiffe://{TD}/ns/up/sa/web"
    assert [c.subject for c in wl.chain[1:]] == [intermediate.subject]
    assert wl.chain[1] == intermediate
    assert set(wl.bundle) == {root}

    # SDS, as Envoy asks: `default` has the same chain, `ROOTCA` the upstream root
    sds_chain = x509.load_pem_x509_certificates(
        default.tls_certificate.certificate_chain.inline_bytes
    )
    assert len(sds_chain) == 2 and sds_chain[1] == intermediate
    assert uri_sans(sds_chain[0]) == [f"spiffe://{TD}/ns/up/sa/web"]
    assert x509.load_pem_x509_certificates(rootca.validation_context.trusted_ca.inline_bytes) == [
        root
    ]

    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "intermediate.pem").write_bytes(pem(intermediate))
    for name, leaf in (("wapi", wl.chain[0]), ("sds", sds_chain[0])):
        (tmp_path / f"{name}-leaf.pem").write_bytes(pem(leaf))
        ok = openssl_verify(
            tmp_path / "root.pem",
            tmp_path / f"{name}-leaf.pem",
            untrusted=tmp_path / "intermediate.pem",
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # and the intermediate is really needed: the root alone does not verify the leaf
        bare = openssl_verify(tmp_path / "root.pem", tmp_path / f"{name}-leaf.pem")
        assert bare.returncode != 0

    if key_manager == "vault-transit":
        [key] = ca_keys(transit_keys(bao.client(), PREFIX), PREFIX).values()
        assert transit_public_spki(key) == spki_hex(intermediate.public_key())
    else:
        assert any((tmp_path / "d" / "keys").iterdir())  # the local key manager held the key


def test_intermediate_is_renewed_through_vault_before_it_expires(
    bao: BaoDevServer, tmp_path: Path
) -> None:
    token_file = _token_file(tmp_path, bao)
    cfg = server_config(
        tmp_path / "d",
        keyManager=_key_manager("vault-transit", bao, token_file),
        upstreamAuthority=_upstream(bao, token_file),
        ca={"ttl": "2h"},
    )
    clock = FakeClock(dt.datetime.now(dt.UTC))
    root = pki_root(bao.client())
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with running(cfg, clock=clock) as r:
            srv = r.server
            [first] = srv.store.list_authorities()
            seen["first"] = first
            life = first.not_after - first.not_before

            def states() -> dict[str, str]:
                return {a.id: a.state for a in srv.store.list_authorities()}

            # just before half life: nothing to do
            clock.set(first.not_before + life / 2 - dt.timedelta(minutes=1))
            await asyncio.to_thread(srv.core.rotate_tick)
            seen["before_half"] = states()

            # past half life: the next intermediate is prepared, signed through Vault
            clock.set(first.not_before + life / 2 + dt.timedelta(minutes=1))
            await asyncio.to_thread(srv.core.rotate_tick)
            seen["after_half"] = {a.id: a for a in srv.store.list_authorities()}
            seen["bundle_after_prepare"] = srv.core.bundle().x509_authorities
            seen["keys_after_prepare"] = transit_keys(bao.client(), PREFIX)

            # in the last sixth: the prepared one is activated, the first is old
            clock.set(first.not_after - life / 6 + dt.timedelta(minutes=1))
            await asyncio.to_thread(srv.core.rotate_tick)
            seen["after_sixth"] = states()
            seen["now"] = clock.now()
            _, csr = new_csr()
            seen["svid"] = await asyncio.to_thread(
                lambda: srv.core.mint(
                    ADMIN, spiffe_id=f"spiffe://{TD}/ns/up/sa/late", csr=csr, ttl=None
                )
            )

    asyncio.run(main())
    first = seen["first"]
    assert seen["before_half"] == {first.id: "active"}

    after_half = seen["after_half"]
    assert {a.state for a in after_half.values()} == {"active", "prepared"}
    [second] = [a for a in after_half.values() if a.state == "prepared"]
    second.certificate.verify_directly_issued_by(root)
    assert second.certificate.issuer == root.subject
    assert second.certificate.serial_number != first.certificate.serial_number
    assert second.upstream_roots == (root,)
    # (Vault signs in real time while trustd's clock is fake, so the two not_after are alike)
    # its key is a new transit key; the bundle still holds just the upstream root
    assert len(ca_keys(seen["keys_after_prepare"], PREFIX)) == 2
    assert spki_hex(second.certificate.public_key()) in {
        transit_public_spki(k) for k in seen["keys_after_prepare"].values()
    }
    assert list(seen["bundle_after_prepare"]) == [root]

    assert seen["after_sixth"] == {first.id: "old", second.id: "active"}
    assert seen["now"] < first.not_after  # switched before the old intermediate expired

    svid = seen["svid"]
    assert svid.authority_id == second.id
    chain = [x509.load_der_x509_certificate(d) for d in svid.chain_der]
    assert chain[1] == second.certificate
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "intermediate.pem").write_bytes(pem(second.certificate))
    (tmp_path / "leaf.pem").write_bytes(pem(chain[0]))
    ok = openssl_verify(
        tmp_path / "root.pem",
        tmp_path / "leaf.pem",
        untrusted=tmp_path / "intermediate.pem",
        attime=seen["now"],
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_upstream_role_is_refused_with_the_reason(bao: BaoDevServer, tmp_path: Path) -> None:
    """`role` would be ignored by Vault's sign-intermediate, so the server refuses to start."""
    cfg = server_config(
        tmp_path / "d",
        upstreamAuthority={
            "kind": "vault-pki",
            "address": bao.address,
            "tokenFile": str(_token_file(tmp_path, bao)),
            "role": "trustd",
        },
    )
    with pytest.raises(ConfigError) as exc:
        TrustdServer(cfg)
    assert "without a role" in str(exc.value) and "issuer" in str(exc.value)
    assert bao.root_token not in str(exc.value)
