"""The native data-plane core: loading it, and the listener-level seam it sits behind.

The pure-Python core (:class:`trustd.dataplane.core.PythonCore`) works per
connection, under asyncio. The native core (``trustd.dataplane._native``, C on
the system OpenSSL) works per listener: :class:`NativeListeners` binds the
listening sockets and hands their file descriptors to native worker threads,
which accept, sniff, run the TLS handshakes, authorize, connect and pump
without entering Python. Python stays the control plane: for every listener
it publishes a *generation* (:meth:`NativeListeners.publish`) with the SSL_CTX
of the current identity, the mode or transport, whether an unauthenticated
plaintext peer is allowed, and the mode epoch. A generation changes when the
SVID, a bundle or the policy does.

Peers are decided in C from a per-generation cache keyed by the leaf
certificate's SHA-256; the first handshake of a leaf in a generation is
decided here, once, by the same code the Python core runs
(:func:`trustd.dataplane.verify.check_peer_svid` and ``PolicySet.authorize``),
and the native side caches the answer within the leaf's validity.

Which core runs: ``core: auto | native | python`` in the proxy config, or
``TRUSTD_PROXY_CORE`` (which wins). ``auto`` runs native when the extension
loads, else Python, and says so once in the log. ``native`` fails when the
extension cannot load.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import structlog

from trustd.dataplane.config import split_host_port
from trustd.dataplane.errors import PeerRejectedError, ProxyConfigError
from trustd.dataplane.identity import Identity
from trustd.dataplane.verify import PeerRole, check_peer_svid
from trustd.policy.effective import PeerMode, PolicySet, Transport

if TYPE_CHECKING:
    from trustd.dataplane.proxy import Proxy, _InboundState, _OutboundState

log = structlog.get_logger(__name__)

CORE_ENV = "TRUSTD_PROXY_CORE"
MODULE_ENV = "TRUSTD_NATIVE_MODULE"  # a path to another build of the extension (make test-asan)
CORES = ("auto", "native", "python")

_MODES = {PeerMode.STRICT: 0, PeerMode.PERMISSIVE: 1, PeerMode.DISABLE: 2}
_KIND_INBOUND = 0
_KIND_OUTBOUND = 1
_GENERATIONS_KEPT = 256  # generations a waiting connection may still refer to

_load: dict[str, Any] = {}  # "module" once loaded, or "error" once it failed


def load_native() -> ModuleType:
    """The extension module; ProxyConfigError (with the reason) when it cannot load."""
    if "module" in _load:
        return _load["module"]  # type: ignore[no-any-return]
    if "error" in _load:
        raise ProxyConfigError(f"the native data-plane core cannot load: {_load['error']}")
    try:
        path = os.environ.get(MODULE_ENV)
        if path:
            spec = importlib.util.spec_from_file_location("trustd.dataplane._native", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"{path} is not an extension module")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module("trustd.dataplane._native")
    except ImportError as exc:
        _load["error"] = str(exc)
        raise ProxyConfigError(
            f"the native data-plane core cannot load: {exc} "
            "(build it with `pip install -e .`; it needs gcc and libssl-dev)"
        ) from None
    _load["module"] = mod
    return mod


def choose_core(configured: str) -> str:
    """``native`` or ``python``, from the config value and ``TRUSTD_PROXY_CORE``."""
    wanted = os.environ.get(CORE_ENV) or configured
    if wanted not in CORES:
        raise ProxyConfigError(f"{CORE_ENV}={wanted!r}: expected one of {', '.join(CORES)}")
    if wanted == "python":
        return "python"
    if wanted == "native":
        load_native()
        return "native"
    try:
        load_native()
    except ProxyConfigError as exc:
        log.warning("native data-plane core unavailable, running the python core", error=str(exc))
        return "python"
    return "native"


@dataclass(frozen=True, slots=True)
class _Generation:
    identity: Identity
    policy: PolicySet
    inbound: _InboundState | None
    outbound: _OutboundState | None


def _listen_sockets(host: str, port: int, count: int, what: str) -> list[socket.socket]:
    """``count`` listening sockets on one address (SO_REUSEPORT when more than one)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, addr = infos[0]
        socks: list[socket.socket] = []
        for i in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(addr if i == 0 else (addr[0], socks[0].getsockname()[1], *addr[2:]))
            s.listen(1024)
            s.setblocking(False)
        return socks
    except OSError as exc:
        for s in locals().get("socks", []):
            s.close()
        raise ProxyConfigError(
            f"cannot listen on {what} ({host}:{port}): {exc.strerror or exc}; "
            "is another process (an earlier proxy, Envoy) using it?"
        ) from None


def _resolve(address: str) -> tuple[str, int]:
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyConfigError(f"cannot resolve {address}: {exc}") from None
    return str(infos[0][4][0]), port


class NativeListeners:
    """A proxy's listeners on the native core (one instance per :class:`Proxy`)."""

    def __init__(self, proxy: Proxy, *, workers: int) -> None:
        self._proxy = proxy
        self._mod = load_native()
        cfg = proxy.config
        self.engine: Any = self._mod.Engine(
            workers=workers,
            sniff_timeout_ms=int(cfg.sniff.timeout.total_seconds() * 1000),
            handshake_timeout_ms=int(cfg.handshake_timeout.total_seconds() * 1000),
            connect_timeout_ms=int(cfg.connect_timeout.total_seconds() * 1000),
            max_pending=cfg.sniff.max_pending,
        )
        self._workers = workers
        self._sockets: list[socket.socket] = []
        self._ids: dict[int, _InboundState | _OutboundState] = {}
        self._inbound_lids: set[int] = set()
        self._native_id: dict[int, int] = {}  # id(state) -> listener id
        self._published: dict[int, tuple[object, ...]] = {}  # listener id -> what it runs
        self._gens: collections.OrderedDict[int, _Generation] = collections.OrderedDict()
        self._next_gen = 0
        self._contexts: dict[tuple[str, bool], Any] = {}  # (identity version, server) -> ctx
        self._seen: dict[tuple[int, str], int] = {}  # metric deltas already counted
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- listeners -----------------------------------------------------------

    def listen_inbound(self, ib: _InboundState) -> int:
        socks = _listen_sockets(
            ib.config.bind, ib.config.port, self._workers, f"inbound port {ib.config.port}"
        )
        self._sockets += socks
        ip, port = _resolve(ib.config.app)
        lid = int(self.engine.add_listener(_KIND_INBOUND, [s.fileno() for s in socks], ip, port))
        self._ids[lid] = ib
        self._inbound_lids.add(lid)
        self._native_id[id(ib)] = lid
        return int(socks[0].getsockname()[1])

    def listen_outbound(self, ob: _OutboundState) -> tuple[str, int]:
        host, port = split_host_port(ob.config.listen)
        socks = _listen_sockets(host, port, self._workers, f"outbound listen {ob.config.listen}")
        self._sockets += socks
        ip, dport = _resolve(ob.config.address)
        lid = int(self.engine.add_listener(_KIND_OUTBOUND, [s.fileno() for s in socks], ip, dport))
        self._ids[lid] = ob
        self._native_id[id(ob)] = lid
        name = socks[0].getsockname()
        return str(name[0]), int(name[1])

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.engine.fileno(), self.drain_events)

    # -- generations ---------------------------------------------------------

    def _context(self, ident: Identity, *, server: bool) -> Any:
        key = (ident.version, server)
        ctx = self._contexts.get(key)
        if ctx is None:
            try:
                ctx = self._mod.TlsContext(
                    ident.cert_chain_pem, ident.private_key_pem, ident.bundle_pem().encode(), server
                )
            except ValueError as exc:  # never shows key material: the reason only
                raise ProxyConfigError(f"cannot build the tls context: {exc}") from None
            # only the current identity's contexts stay here; open connections hold theirs
            self._contexts = {k: v for k, v in self._contexts.items() if k[0] == ident.version}
            self._contexts[key] = ctx
            self._proxy.metrics.tls_contexts.inc()
        return ctx

    def _new_gen(self, gen: _Generation) -> int:
        self._next_gen += 1
        self._gens[self._next_gen] = gen
        while len(self._gens) > _GENERATIONS_KEPT:
            self._gens.popitem(last=False)
        return self._next_gen

    def publish(self, ps: PolicySet, ident: Identity) -> None:
        """Hand every listener what new connections must run under (when it changed)."""
        proxy = self._proxy
        own = ident.spiffe_id
        for lid, st in self._ids.items():
            if lid in self._inbound_lids:
                ib: Any = st
                mode = proxy._inbound_mode(ib, ps, own)
                plain = ps.authorize(own, ib.port, None)
                what: tuple[object, ...] = (
                    ps.version,
                    ps.content_hash,
                    ident.version,
                    mode,
                    ib.mode_epoch,
                )
                if self._published.get(lid) == what:
                    continue
                ctx = self._context(ident, server=True)
                gen = self._new_gen(_Generation(ident, ps, ib, None))
                self.engine.configure(
                    lid, _MODES[mode], False, plain.allowed, plain.reason, ib.mode_epoch, gen, ctx
                )
            else:
                ob: Any = st
                transport = proxy._outbound_transport(ob, ps, own)
                what = (ps.version, ps.content_hash, ident.version, transport)
                if self._published.get(lid) == what:
                    continue
                mtls = transport is Transport.MTLS
                ctx = self._context(ident, server=False) if mtls else None
                gen = self._new_gen(_Generation(ident, ps, None, ob))
                self.engine.configure(lid, 0, mtls, True, "", 0, gen, ctx)
            self._published[lid] = what

    # -- events from the workers ----------------------------------------------

    def drain_events(self) -> None:
        for ev in self.engine.events():
            try:
                kind = ev[0]
                if kind == "verify":
                    self._verify(*ev[1:])
                elif kind == "deny":
                    self._denied(*ev[1:])
                elif kind == "upstream":
                    self._upstream(*ev[1:])
            except Exception:
                log.exception("native event handling failed", event=ev[0])

    def _state(self, lid: int) -> _InboundState | _OutboundState:
        return self._ids[lid]

    def _denied(
        self,
        lid: int,
        conn_id: int,
        gen: int,
        reason: str,
        detail: str,
        peer: str,
        peer_id: str | None,
    ) -> None:
        proxy = self._proxy
        st = self._state(lid)
        g = self._gens.get(gen)
        ps = g.policy if g is not None else proxy._policy.current()
        ident = g.identity if g is not None else proxy._identity.current()
        outbound = lid not in self._inbound_lids
        proxy._deny(
            listener=st.label,
            reason=reason,
            detail=detail,
            peer=st.config.address if outbound else peer,  # type: ignore[union-attr]
            ps=ps,
            ident=ident,
            peer_id=peer_id,
        )

    def _upstream(self, lid: int, conn_id: int, detail: str, peer: str) -> None:
        st = self._state(lid)
        self._proxy.metrics.upstream_failures.labels(st.label).inc()
        if lid in self._inbound_lids:
            log.warning("app unreachable", listener=st.label, app=st.config.app, error=detail)  # type: ignore[union-attr]
        else:
            log.warning(
                "destination unreachable",
                listener=st.label,
                address=st.config.address,  # type: ignore[union-attr]
                error=detail,
            )

    def _verify(
        self,
        lid: int,
        conn_id: int,
        gen: int,
        leaf: bytes,
        chain: tuple[bytes, ...],
        peer: str,
    ) -> None:
        """The first handshake of a leaf in a generation: the strict SVID check and the
        authorization, answered to the native side (which caches the answer)."""
        proxy = self._proxy
        st = self._state(lid)
        g = self._gens.get(gen)
        if g is None:  # a generation long gone: refuse rather than guess
            proxy._deny(
                listener=st.label,
                reason="no_identity",
                detail="the identity this connection started under is gone",
                peer=peer,
                ps=proxy._policy.current(),
                ident=None,
            )
            self.engine.resolve(conn_id, False, "no_identity", "gone", None)
            return
        inbound = g.inbound is not None
        where = peer if inbound else st.config.address  # type: ignore[union-attr]
        try:
            peer_id = check_peer_svid(
                leaf,
                verified_chain_der=chain,
                bundles=g.identity.bundles,
                now=proxy._clock.now(),
                role=PeerRole.CLIENT if inbound else PeerRole.SERVER,
            )
        except PeerRejectedError as exc:
            proxy._deny(
                listener=st.label,
                reason=exc.code,
                detail=str(exc),
                peer=where,
                ps=g.policy,
                ident=g.identity,
            )
            self.engine.resolve(conn_id, False, exc.code, str(exc), None)
            return
        reason = detail = None
        if g.inbound is not None:
            authz = g.policy.authorize(g.identity.spiffe_id, g.inbound.port, peer_id)
            if not authz.allowed:
                reason, detail = "unauthorized", authz.reason
        elif g.outbound is not None and peer_id != g.outbound.destination:
            reason = "server_identity_mismatch"
            detail = f"the server is {peer_id}, not {g.outbound.destination}"
        if reason is not None and detail is not None:
            proxy._deny(
                listener=st.label,
                reason=reason,
                detail=detail,
                peer=where,
                ps=g.policy,
                ident=g.identity,
                peer_id=peer_id,
            )
            self.engine.resolve(conn_id, False, reason, detail, str(peer_id))
            return
        self.engine.resolve(conn_id, True, None, None, str(peer_id))

    # -- counters --------------------------------------------------------------

    def stats(self, st: _InboundState | _OutboundState) -> dict[str, int]:
        return dict(self.engine.stats(self._native_id[id(st)]))

    def _delta(self, lid: int, name: str, value: int) -> int:
        key = (lid, name)
        d = value - self._seen.get(key, 0)
        self._seen[key] = value
        return d

    def sync_metrics(self) -> None:
        """Bring the Prometheus metrics up to the native counters (before every collect)."""
        m = self._proxy.metrics
        with self._lock:
            m.sniffing.set(int(self.engine.pending()))
            for lid, st in self._ids.items():
                s = self.engine.stats(lid)
                label = st.label
                inbound = lid in self._inbound_lids
                for mode, total, active in (
                    ("tls", "tls_total", "tls_active"),
                    ("plaintext", "plaintext_total", "plaintext_active"),
                ):
                    d = self._delta(lid, total, s[total])
                    if d:
                        m.connections.labels(label, mode).inc(d)
                    if s[total] or s[active]:
                        m.active.labels(label, mode).set(s[active])
                to_app, from_app = ("bytes_ab", "bytes_ba") if inbound else ("bytes_ba", "bytes_ab")
                d = self._delta(lid, to_app, s[to_app])
                if d:
                    m.bytes.labels(label, "to_app").inc(d)
                d = self._delta(lid, from_app, s[from_app])
                if d:
                    m.bytes.labels(label, "from_app").inc(d)

    # -- shutting down -----------------------------------------------------------

    def abandon(self) -> None:
        """Undo a start that failed half-way: stop the workers, close the sockets."""
        self.engine.unlisten()
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        if self._loop is not None:
            self._loop.remove_reader(self.engine.fileno())
            self._loop = None
        self.engine.close()

    async def stop(self, grace: float) -> None:
        """Stop accepting; give open connections ``grace`` seconds, then reset the rest."""
        self.engine.unlisten()
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.engine.connections() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.engine.abort_all()
        self.drain_events()
        if self._loop is not None:
            self._loop.remove_reader(self.engine.fileno())
            self._loop = None
        self.sync_metrics()
        self.engine.close()
