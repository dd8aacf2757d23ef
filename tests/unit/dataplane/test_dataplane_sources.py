"""The file-based identity and policy sources, and building sources from the config."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from dataplane_testing import ThrowawayCA

from trustd.dataplane import (
    FileIdentitySource,
    FilePolicySource,
    StaticPolicySource,
    build_policy_source,
    parse_config,
)
from trustd.dataplane.identity import Identity
from trustd.dataplane.tls import TlsContexts, server_context
from trustd.errors import InvalidArgumentError

ME = "spiffe://trustd.local/ns/shop/sa/web"


def bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_file_identity_reloads_on_change_and_keeps_the_last_good_one(
    tmp_path: Path, ca: ThrowawayCA
) -> None:
    cert, key = ca.issue(ME).write(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    src = FileIdentitySource(cert_file=cert, key_file=key, bundle_file=bundle)
    seen: list[Identity] = []
    src.subscribe(seen.append)
    assert src.load() and str(seen[-1].spiffe_id) == ME
    assert not src.load()  # unchanged files: nothing new
    first = seen[-1].serial
    ca.issue(ME).write(tmp_path)  # rotation on disk
    bump(cert)
    assert src.load() and seen[-1].serial != first
    key.write_bytes(ca.issue(ME).key_pem)  # a key that does not match: refused, old one kept
    bump(key)
    assert not src.load()
    assert src.current() is seen[-1] and len(seen) == 2


def test_file_policy_reloads_and_ignores_an_invalid_edit(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"

    def write(mode: str) -> None:
        f.write_text(
            "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
            f"metadata: {{name: m, namespace: trustd-system}}\nspec:\n  mtls: {{mode: {mode}}}\n"
        )
        bump(f)

    write("STRICT")
    src = FilePolicySource([tmp_path])
    assert src.load() and src.current().version == 1
    write("BOGUS")
    assert not src.load() and src.current().version == 1  # the previous policy stays
    write("DISABLE")
    assert src.load() and src.current().version == 2 and not src.current().pending


def test_policy_source_kinds(tmp_path: Path) -> None:
    from trustd.dataplane.agent_policy import AgentPolicySource

    assert isinstance(
        build_policy_source(parse_config({"policy": {"kind": "none"}}), proxy_id="p"),
        StaticPolicySource,
    )
    cfg = parse_config({"policy": {"kind": "files", "paths": [str(tmp_path)]}})
    assert isinstance(build_policy_source(cfg, proxy_id="p"), FilePolicySource)
    agent = build_policy_source(parse_config({}), proxy_id="p")
    assert isinstance(agent, AgentPolicySource) and agent.proxy_id == "p"


def test_no_tickets_and_a_tls12_server_context_serves_one_handshake(ca: ThrowawayCA) -> None:
    ident = ca.identity(ME)
    ctx = server_context(ident)
    assert ctx.num_tickets == 0 and ctx.options & ssl.OP_NO_TICKET
    contexts = TlsContexts()
    first = contexts.server(ident)
    assert contexts.server(ident) is first  # TLS 1.3 handshakes share it
    contexts.retire_server(first)  # a TLS 1.2 handshake ran on it
    assert contexts.server(ident) is not first and contexts.builds == 2


def test_an_identity_must_be_an_svid_with_its_own_key(ca: ThrowawayCA) -> None:
    good = ca.issue(ME)
    with pytest.raises(InvalidArgumentError, match="does not match"):
        Identity.from_pem(cert_chain_pem=good.chain_pem, private_key_pem=ca.issue(ME).key_pem)
    two = ca.issue(ME, extra_uris=["spiffe://trustd.local/other"])
    with pytest.raises(InvalidArgumentError, match="2 URI SANs"):
        Identity.from_pem(cert_chain_pem=two.chain_pem, private_key_pem=two.key_pem)
    assert "PRIVATE" not in repr(
        Identity.from_pem(cert_chain_pem=good.chain_pem, private_key_pem=good.key_pem)
    )
