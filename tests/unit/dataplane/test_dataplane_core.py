"""The data-plane cores: which one runs, the native sniffer, decisions per generation, workers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import ssl
from pathlib import Path

import pytest
from dataplane_helpers import (
    CLIENT_ID,
    SERVER_ID,
    client_ssl_context,
    eventually,
    mesh,
    read_until_closed,
    run,
    server_proxy,
)
from dataplane_testing import RecordingApp, ThrowawayCA

from trustd.dataplane import Proxy, StaticIdentitySource, StaticPolicySource, native, parse_config
from trustd.dataplane.errors import ProxyConfigError
from trustd.dataplane.proxy import DenialEvent
from trustd.dataplane.sniff import SniffResult, classify
from trustd.dataplane.tls import client_context

ALLOW_FRONTEND_ONLY = (
    "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: only-frontend, namespace: shop}\n"
    f"spec:\n  rules:\n  - from: [{{principals: ['{CLIENT_ID}']}}]\n---\n"
)
ALLOW_INTRUDER_TOO = (
    "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: only-frontend, namespace: shop}\n"
    f"spec:\n  rules:\n  - from: [{{principals: ['{CLIENT_ID}', "
    "'spiffe://trustd.local/ns/shop/sa/intruder']}]\n---\n"
)


@run
async def test_the_core_in_use_is_logged_and_a_metric_label(
    ca: ThrowawayCA, proxy_core: str
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("PERMISSIVE")) as h:
        assert h.server.core_name == proxy_core
        assert h.server.metrics.value("trustd_proxy_core", {"core": proxy_core}) == 1
        other = "python" if proxy_core == "native" else "native"
        assert h.server.metrics.value("trustd_proxy_core", {"core": other}) == 0


def test_auto_falls_back_to_python_and_native_fails_without_the_extension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "_load", {"error": "no such file"})
    monkeypatch.setenv("TRUSTD_PROXY_CORE", "auto")
    assert native.choose_core("native") == "python"  # the variable wins over the config
    monkeypatch.delenv("TRUSTD_PROXY_CORE")
    assert native.choose_core("auto") == "python"
    with pytest.raises(ProxyConfigError, match="cannot load: no such file"):
        native.choose_core("native")
    monkeypatch.setenv("TRUSTD_PROXY_CORE", "fast")
    with pytest.raises(ProxyConfigError, match="expected one of auto, native, python"):
        native.choose_core("auto")


def test_the_native_sniffer_agrees_with_the_python_one() -> None:
    mod = native.load_native()
    verdicts = {0: None, 1: SniffResult.TLS, 2: SniffResult.PLAINTEXT}
    interesting = [0x00, 0x03, 0x04, 0x05, 0x16, 0x17, 0x47, 0xFF]
    prefixes = [bytes(p) for n in range(4) for p in itertools.product(interesting, repeat=n)]
    rng = random.Random(7)
    prefixes += [rng.randbytes(rng.randrange(0, 8)) for _ in range(5000)]
    for p in prefixes:
        assert verdicts[mod.classify(p)] == classify(p), p


def _client_hello(ca: ThrowawayCA) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca.identity(CLIENT_ID)).wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.timeout(1800)  # make test-asan: two million inputs under AddressSanitizer
def test_fuzz_the_sniffer_and_client_hello_parsing(ca: ThrowawayCA) -> None:
    """Random and mutated ClientHellos through the native sniffer and OpenSSL's handshake
    (``make test-asan`` runs millions of them under AddressSanitizer)."""
    mod = native.load_native()
    ident = ca.identity(SERVER_ID)
    ctx = mod.TlsContext(
        ident.cert_chain_pem, ident.private_key_pem, ident.bundle_pem().encode(), True
    )
    iterations = int(os.environ.get("TRUSTD_FUZZ_ITERATIONS", "20000"))
    tls, plaintext, undecided, handshakes = mod.fuzz(iterations, 12345, ctx, _client_hello(ca))
    assert tls + plaintext + undecided == iterations
    assert handshakes == tls and tls > iterations // 2 and plaintext > 0 and undecided > 0


def test_a_tls_context_refuses_a_key_that_is_not_the_svids(ca: ThrowawayCA) -> None:
    mod = native.load_native()
    a, b = ca.issue(SERVER_ID), ca.issue(SERVER_ID)
    with pytest.raises(ValueError, match="does not match") as err:
        mod.TlsContext(a.chain_pem, b.key_pem, ca.bundle_pem, True)
    assert "PRIVATE" not in str(err.value)
    with pytest.raises(ValueError, match="not a PEM certificate chain"):
        mod.TlsContext(b"junk", a.key_pem, ca.bundle_pem, True)


@run
async def test_a_decided_peer_is_decided_again_under_a_new_policy(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT", ALLOW_FRONTEND_ONLY)) as h:
        port = h.server.inbound_port()
        intruder = client_ssl_context(
            ca.issue("spiffe://trustd.local/ns/shop/sa/intruder"), tmp_path
        )
        for attempt in (1, 2):  # the second refusal comes from the native decision cache
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=intruder)
            w.write(b"let me in")
            assert await read_until_closed(r) == b""
            await eventually(lambda: len(h.denials) == attempt)  # noqa: B023 - awaited at once
        assert [d.reason for d in h.denials] == ["unauthorized", "unauthorized"]
        assert h.denials[1].peer_spiffe_id == "spiffe://trustd.local/ns/shop/sa/intruder"
        h.server_policy.set(mesh("STRICT", ALLOW_INTRUDER_TOO).successor())
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=intruder)
        w.write(b"now allowed")
        assert await r.readexactly(11) == b"now allowed"
        w.close()
        assert h.app.connections == 1 and len(h.denials) == 2


@run
async def test_several_workers_share_a_port(ca: ThrowawayCA, tmp_path: Path) -> None:
    app = await RecordingApp().start()
    denials: list[DenialEvent] = []
    proxy = Proxy(
        config=parse_config(
            {"inbound": [{"port": 0, "app": app.address, "bind": "127.0.0.1"}], "workers": 2}
        ),
        identity=StaticIdentitySource(ca.identity(SERVER_ID)),
        policy=StaticPolicySource(mesh("PERMISSIVE")),
        on_denial=denials.append,
    )
    await proxy.start()
    try:
        ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path)
        for i in range(16):
            r, w = await asyncio.open_connection("127.0.0.1", proxy.inbound_port(), ssl=ctx)
            w.write(b"%02d" % i)
            assert await r.readexactly(2) == b"%02d" % i
            w.close()
        st = proxy.status()
        assert st is not None and st.inbound[0].tls_total == 16 and not denials
    finally:
        await proxy.stop(grace=1)
        await app.stop()


@run
async def test_a_start_that_fails_on_a_busy_port_leaves_nothing_listening(ca: ThrowawayCA) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    proxy = Proxy(
        config=parse_config(
            {
                "inbound": [
                    {"port": free, "app": "127.0.0.1:9", "bind": "127.0.0.1"},
                    {"port": busy.getsockname()[1], "app": "127.0.0.1:9", "bind": "127.0.0.1"},
                ]
            }
        ),
        identity=StaticIdentitySource(ca.identity(SERVER_ID)),
        policy=StaticPolicySource(mesh("PERMISSIVE")),
    )
    try:
        with pytest.raises(ProxyConfigError, match="cannot listen on inbound port"):
            await proxy.start()
        again = socket.socket()
        again.bind(("127.0.0.1", free))  # the first listener was closed again
        again.close()
    finally:
        busy.close()
