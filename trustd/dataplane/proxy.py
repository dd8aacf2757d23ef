"""``trustd proxy``: the bundled mTLS sidecar.

Inbound (server side), per connection::

    accept -> policy snapshot (effective PeerAuthentication for our ID and port)
      DISABLE    -> connect the app, pump plaintext
      PERMISSIVE -> sniff: TLS -> handshake, SVID check, authorization -> app
                           plaintext / silent (server-first) -> authorization -> app
      STRICT     -> sniff: TLS -> as above; anything else -> close, nothing forwarded

Outbound (client side)::

    accept from the app -> policy snapshot (ClientTLSPolicy, AUTO resolved)
      mTLS      -> connect, handshake with our SVID, the server must be exactly
                   the configured destination SPIFFE ID -> pump
      plaintext -> connect -> pump

Both cores (native and python, see :mod:`trustd.dataplane.native`) follow these
steps; on the native core they run in C and this class publishes what each
listener enforces and handles the denials the workers report.

The app connection is only opened once every check has passed, so a refused
peer never gets a byte to the app. Policy and identity are read when a
connection arrives: a change applies to new connections and open ones carry
on with what they started with. Refusals are counted, logged and handed to
``on_denial`` (the audit log's "connection denied by policy").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import structlog

from trustd.clock import Clock, SystemClock
from trustd.dataplane.config import InboundConfig, OutboundConfig, ProxyConfig, split_host_port
from trustd.dataplane.core import Core, HandshakeError, PythonCore, Stream
from trustd.dataplane.errors import IdentityUnavailableError, PeerRejectedError, ProxyConfigError
from trustd.dataplane.identity import Identity, IdentitySource
from trustd.dataplane.metrics import ProxyMetrics
from trustd.dataplane.native import NativeListeners, choose_core
from trustd.dataplane.policysource import PolicySource
from trustd.dataplane.sniff import SniffResult, sniff
from trustd.dataplane.tls import TlsContexts
from trustd.dataplane.verify import PeerRole, check_peer_svid
from trustd.policy.effective import PeerMode, PolicySet, Transport
from trustd.policy.status import Destination, InboundStats, ProxyStatus
from trustd.spiffeid import SpiffeId

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DenialEvent:
    """A connection the proxy refused; the lead routes these to the audit log."""

    time: dt.datetime  # when it was refused
    proxy_id: str  # which proxy instance
    listener: str  # "inbound:15006" or "outbound:127.0.0.1:15001"
    reason: str  # a fixed code (trustd.dataplane.metrics.DENIAL_REASONS)
    detail: str  # the reason in words
    peer_address: str  # "host:port" of the remote side
    peer_spiffe_id: str | None  # the authenticated peer, when there was one
    local_spiffe_id: str | None  # our identity
    policy_version: int  # the policy the decision was taken under


@dataclass(slots=True, kw_only=True)
class _InboundState:
    config: InboundConfig
    port: int = 0  # the bound port: what policy is evaluated for
    server: asyncio.Server | None = None
    plaintext_active: int = 0
    plaintext_total: int = 0
    tls_active: int = 0
    tls_total: int = 0
    last_plaintext_at: dt.datetime | None = None
    # What the listener enforces: computed by Proxy._inbound_mode for every new connection
    # and every report, so that what is reported is what the accept path decided.
    mode: PeerMode | None = None
    mode_key: tuple[int, SpiffeId] | None = None  # (policy version, own id) it was computed for
    mode_version: int | None = None  # the policy version the current mode took effect in
    mode_epoch: int = 0  # +1 at every change of mode
    plaintext_since_mode: int = 0  # plaintext connections accepted since then

    @property
    def label(self) -> str:
        return f"inbound:{self.port}"


@dataclass(slots=True, kw_only=True)
class _OutboundState:
    config: OutboundConfig
    destination: SpiffeId
    dest_host: str
    dest_port: int
    address: tuple[str, int] = ("", 0)  # bound listen address
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    transport: Transport | None = None  # what new connections use (Proxy._outbound_transport)
    mtls_total: int = 0
    plaintext_total: int = 0

    @property
    def label(self) -> str:
        return f"outbound:{self.config.listen}"


def default_proxy_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Proxy:
    """One sidecar instance: its inbound and outbound listeners.

    Build it with the two seams and start it::

        proxy = Proxy(config=cfg, identity=SdsIdentitySource(...), policy=source)
        await proxy.start()      # waits for the first SVID, then listens
        ...
        await proxy.stop()       # stops listening, lets connections finish
    """

    def __init__(
        self,
        *,
        config: ProxyConfig,
        identity: IdentitySource,
        policy: PolicySource,
        proxy_id: str | None = None,
        clock: Clock | None = None,
        core: Core | None = None,
        metrics: ProxyMetrics | None = None,
        on_denial: Callable[[DenialEvent], None] | None = None,
    ) -> None:
        self.config = config
        self.proxy_id = proxy_id or config.proxy_id or default_proxy_id()
        self.metrics = metrics or ProxyMetrics()
        self._identity = identity
        self._policy = policy
        self._clock = clock or SystemClock()
        self._core: Core = core or PythonCore()
        # an injected per-connection Core means the Python core; else config / TRUSTD_PROXY_CORE
        self.core_name = "python" if core is not None else choose_core(config.core)
        self._native: NativeListeners | None = None
        self.metrics.core.labels(self.core_name).set(1)
        self._on_denial = on_denial
        self._tls = TlsContexts(on_build=self.metrics.tls_contexts.inc)
        self._inbound = [_InboundState(config=c) for c in config.inbound]
        self._outbound = []
        for c in config.outbound:
            host, port = split_host_port(c.address)
            self._outbound.append(
                _OutboundState(
                    config=c, destination=c.destination_id, dest_host=host, dest_port=port
                )
            )
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0  # connections sniffing or in the handshake
        self._acked = 0
        self._unsubscribe: list[Callable[[], None]] = []
        self._reporter: asyncio.Task[None] | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self, *, identity_timeout: float = 15.0) -> None:
        """Fetch the first identity, then open every listener."""
        await self._identity.start()
        ready = asyncio.Event()
        self._unsubscribe.append(
            self._identity.subscribe(lambda ident: self._on_identity(ident, ready))
        )
        current = self._identity.current()
        if current is not None:
            self._on_identity(current, ready)
        try:
            await asyncio.wait_for(ready.wait(), identity_timeout)
        except TimeoutError:
            raise IdentityUnavailableError(
                "no svid arrived from the identity source in time: check that the agent runs "
                "and has a registration entry for this proxy"
            ) from None
        self._unsubscribe.append(self._policy.subscribe(self._on_policy))
        self._on_policy(self._policy.current())
        log.info("proxy core", core=self.core_name, proxy=self.proxy_id)
        if self.core_name == "native":
            self._start_native()
        else:
            await self._start_python()
        self._started = True
        self._reporter = asyncio.create_task(self._report_loop(), name="proxy-report")

    def _start_native(self) -> None:
        native = NativeListeners(self, workers=self.config.workers)
        self._native = native
        self.metrics.add_refresh(native.sync_metrics)
        try:
            for ib in self._inbound:
                ib.port = native.listen_inbound(ib)
                log.info("inbound listening", port=ib.port, app=ib.config.app, proxy=self.proxy_id)
            for ob in self._outbound:
                ob.address = native.listen_outbound(ob)
                log.info(
                    "outbound listening",
                    listen=f"{ob.address[0]}:{ob.address[1]}",
                    destination=str(ob.destination),
                    address=ob.config.address,
                )
            self._publish()
            native.start()
        except BaseException:
            native.abandon()
            self._native = None
            raise

    def _publish(self) -> None:
        """Hand the native listeners the policy and identity new connections run under."""
        ident = self._identity.current()
        if self._native is not None and ident is not None:
            self._native.publish(self._policy.current(), ident)

    async def _start_python(self) -> None:
        try:
            await self._listen_python()
        except BaseException:  # a busy port: close what did open
            servers = [i.server for i in self._inbound] + [o.server for o in self._outbound]
            for srv in servers:
                if srv is not None:
                    srv.close()
            for ib in self._inbound:
                ib.server = None
            for ob in self._outbound:
                ob.server = None
            raise

    async def _listen_python(self) -> None:
        for ib in self._inbound:
            ib.server = await _listen(
                self._inbound_callback(ib),
                ib.config.bind,
                ib.config.port,
                f"inbound port {ib.config.port}",
            )
            ib.port = ib.server.sockets[0].getsockname()[1]
            log.info("inbound listening", port=ib.port, app=ib.config.app, proxy=self.proxy_id)
        for ob in self._outbound:
            host, port = split_host_port(ob.config.listen)
            ob.server = await _listen(
                self._outbound_callback(ob), host, port, f"outbound listen {ob.config.listen}"
            )
            sock = ob.server.sockets[0].getsockname()
            ob.address = (sock[0], sock[1])
            log.info(
                "outbound listening",
                listen=f"{sock[0]}:{sock[1]}",
                destination=str(ob.destination),
                address=ob.config.address,
            )

    def _inbound_callback(
        self, ib: _InboundState
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._spawn(self._handle_inbound(ib, r, w), w)

        return accepted

    def _outbound_callback(
        self, ob: _OutboundState
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._spawn(self._handle_outbound(ob, r, w), w)

        return accepted

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop listening; give open connections ``grace`` seconds (drainTimeout) to finish."""
        for un in self._unsubscribe:
            un()
        self._unsubscribe.clear()
        servers = [i.server for i in self._inbound if i.server is not None]
        servers += [o.server for o in self._outbound if o.server is not None]
        for srv in servers:
            srv.close()
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
            self._reporter = None
        wait = self.config.drain_timeout.total_seconds() if grace is None else grace
        if self._native is not None:
            await self._native.stop(wait)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for srv in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1)
        self._started = False

    def inbound_port(self, index: int = 0) -> int:
        return self._inbound[index].port

    def outbound_address(self, index: int = 0) -> tuple[str, int]:
        return self._outbound[index].address

    @property
    def acked_version(self) -> int:
        return self._acked

    def status(self) -> ProxyStatus | None:
        """What this proxy reports to the control plane (None before it has an identity)."""
        ident = self._identity.current()
        if ident is None:
            return None
        ps = self._policy.current()
        native = self._native
        if native is not None:
            native.publish(ps, ident)  # what is reported is what the workers enforce
        inbound = []
        for ib in self._inbound:
            mode = self._inbound_mode(ib, ps, ident.spiffe_id)
            if native is not None:
                n = native.stats(ib)
                last_ns = n["last_plaintext_ns"]
                ib.plaintext_active, ib.plaintext_total = (
                    n["plaintext_active"],
                    n["plaintext_total"],
                )
                ib.tls_active, ib.tls_total = n["tls_active"], n["tls_total"]
                ib.plaintext_since_mode = n["plaintext_since_mode"]
                ib.last_plaintext_at = (
                    dt.datetime.fromtimestamp(last_ns / 1e9, tz=dt.UTC) if last_ns else None
                )
            inbound.append(
                InboundStats(
                    port=ib.port,
                    plaintext_active=ib.plaintext_active,
                    plaintext_total=ib.plaintext_total,
                    tls_active=ib.tls_active,
                    tls_total=ib.tls_total,
                    last_plaintext_at=ib.last_plaintext_at,
                    mode=mode.value,
                    mode_version=ib.mode_version,
                    plaintext_since_mode=ib.plaintext_since_mode,
                )
            )
        if native is not None:
            for ob in self._outbound:
                n = native.stats(ob)
                ob.mtls_total, ob.plaintext_total = n["tls_total"], n["plaintext_total"]
        destinations = [
            Destination(
                spiffe_id=ob.destination,
                port=ob.dest_port,
                transport=self._outbound_transport(ob, ps, ident.spiffe_id).value,
                mtls_total=ob.mtls_total,
                plaintext_total=ob.plaintext_total,
            )
            for ob in self._outbound
        ]
        return ProxyStatus(
            proxy_id=self.proxy_id,
            spiffe_id=ident.spiffe_id,
            acked_version=self._acked,
            inbound=tuple(inbound),
            destinations=tuple(destinations),
            reported_at=self._clock.now(),
        )

    def _inbound_mode(self, ib: _InboundState, ps: PolicySet, own: SpiffeId) -> PeerMode:
        """The mode an inbound listener enforces for a new connection: the one place it is
        decided, for the accept path and for the reports alike."""
        key = (ps.version, own)
        if ib.mode_key != key or ib.mode is None:
            mode = ps.peer_mode(own, ib.port, self.proxy_id)
            if mode is not ib.mode:
                ib.mode = mode
                ib.mode_version = ps.version
                ib.mode_epoch += 1
                ib.plaintext_since_mode = 0
            ib.mode_key = key
        return ib.mode

    def _outbound_transport(self, ob: _OutboundState, ps: PolicySet, own: SpiffeId) -> Transport:
        """What an outbound listener uses for a new connection (and reports)."""
        ob.transport = ps.client_transport(own, ob.destination, ob.dest_port, self.proxy_id)
        return ob.transport

    def report_now(self) -> None:
        st = self.status()
        if st is not None:
            self._policy.report(st)

    # -- reactions -----------------------------------------------------------

    def _on_identity(self, ident: Identity, ready: asyncio.Event) -> None:
        self.metrics.svid_expiry.set(ident.not_after.timestamp())
        log.info(
            "proxy identity",
            spiffe_id=str(ident.spiffe_id),
            serial=ident.serial,
            not_after=ident.not_after.isoformat(),
            version=ident.version,
        )
        if self._started:
            self._publish()
        ready.set()

    def _on_policy(self, ps: PolicySet) -> None:
        if ps.version <= self._acked and self._acked:
            return
        self._acked = ps.version
        self.metrics.policy_version.set(ps.version)
        log.info("policy applied", policy_version=ps.version, policy_hash=ps.content_hash)
        self._policy.ack(ps.version)
        if self._started:
            self._publish()
            self.report_now()

    async def _report_loop(self) -> None:
        interval = self.config.report_interval.total_seconds()
        while True:
            self.report_now()
            await asyncio.sleep(interval)

    def _spawn(self, coro: Coroutine[None, None, None], writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._guard(coro, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[None, None, None], writer: asyncio.StreamWriter) -> None:
        try:
            await coro
        except (ConnectionError, OSError) as exc:
            log.debug("connection ended with an error", error=str(exc))
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:
            log.exception("connection handler failed")
            writer.transport.abort()

    def _deny(
        self,
        *,
        listener: str,
        reason: str,
        detail: str,
        peer: str,
        ps: PolicySet,
        ident: Identity | None,
        peer_id: SpiffeId | str | None = None,
    ) -> None:
        self.metrics.denials.labels(listener, reason).inc()
        log.warning(
            "connection denied",
            listener=listener,
            reason=reason,
            detail=detail,
            peer=peer,
            peer_spiffe_id=str(peer_id) if peer_id else None,
            policy_version=ps.version,
        )
        if self._on_denial is not None:
            event = DenialEvent(
                time=self._clock.now(),
                proxy_id=self.proxy_id,
                listener=listener,
                reason=reason,
                detail=detail,
                peer_address=peer,
                peer_spiffe_id=str(peer_id) if peer_id else None,
                local_spiffe_id=str(ident.spiffe_id) if ident else None,
                policy_version=ps.version,
            )
            try:
                self._on_denial(event)
            except Exception:
                log.exception("denial callback failed")

    # -- inbound ---------------------------------------------------------------

    async def _accept_tls(
        self,
        ib: _InboundState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        prefix: bytes,
        ps: PolicySet,
        ident: Identity,
        peer: str,
    ) -> tuple[Stream, SpiffeId] | None:
        """Handshake, then the strict SVID check; None (and a denial) when refused."""

        def deny(reason: str, detail: str) -> None:
            self._deny(
                listener=ib.label, reason=reason, detail=detail, peer=peer, ps=ps, ident=ident
            )

        context = self._tls.server(ident)
        try:
            async with asyncio.timeout(self.config.handshake_timeout.total_seconds()):
                client, info = await self._core.tls_server(
                    reader, writer, prefix=prefix, context=context
                )
        except (HandshakeError, TimeoutError, OSError) as exc:
            deny("handshake_failed", str(exc) or "the tls handshake timed out")
            writer.transport.abort()
            return None
        if info.version != "TLSv1.3":  # a TLS 1.2 session id may now sit in its cache
            self._tls.retire_server(context)
        if info.session_reused:  # never expected: the session cache is off
            deny("resumed_session", "a resumed tls session skips validation: refused")
            client.abort()
            return None
        try:
            peer_id = check_peer_svid(
                info.peer_certificate_der,
                verified_chain_der=info.verified_chain_der,
                bundles=ident.bundles,
                now=self._clock.now(),
                role=PeerRole.CLIENT,
            )
        except PeerRejectedError as exc:
            deny(exc.code, str(exc))
            client.abort()
            return None
        return client, peer_id

    async def _handle_inbound(
        self, ib: _InboundState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer)
        ps = self._policy.current()
        ident = self._identity.current()
        if ident is None:  # cannot happen after start(); refuse rather than guess
            self._deny(
                listener=ib.label,
                reason="no_identity",
                detail="the proxy has no svid",
                peer=peer,
                ps=ps,
                ident=None,
            )
            writer.transport.abort()
            return
        own = ident.spiffe_id
        mode = self._inbound_mode(ib, ps, own)
        epoch = ib.mode_epoch
        client: Stream
        peer_id: SpiffeId | None = None
        if mode is PeerMode.DISABLE:
            client = self._core.plain(reader, writer)
            tls = False
        else:
            if self._pending >= self.config.sniff.max_pending:
                self._deny(
                    listener=ib.label,
                    reason="sniff_overload",
                    detail=f"{self._pending} connections are already being sniffed",
                    peer=peer,
                    ps=ps,
                    ident=ident,
                )
                writer.transport.abort()
                return
            self._pending += 1
            self.metrics.sniffing.inc()
            try:
                result, prefix = await sniff(
                    reader, timeout=self.config.sniff.timeout.total_seconds()
                )
                if result is SniffResult.TLS:
                    admitted = await self._accept_tls(ib, reader, writer, prefix, ps, ident, peer)
                    if admitted is None:
                        return
                    client, peer_id = admitted
                    tls = True
                elif result in (SniffResult.PLAINTEXT, SniffResult.SILENT):
                    if mode is PeerMode.STRICT:
                        reason = (
                            "plaintext_in_strict"
                            if result is SniffResult.PLAINTEXT
                            else "silent_in_strict"
                        )
                        self._deny(
                            listener=ib.label,
                            reason=reason,
                            detail="the listener is STRICT: only mTLS is accepted",
                            peer=peer,
                            ps=ps,
                            ident=ident,
                        )
                        writer.transport.abort()
                        return
                    client = self._core.plain(reader, writer, prefix)
                    tls = False
                elif result is SniffResult.STALLED:
                    self._deny(
                        listener=ib.label,
                        reason="sniff_stalled",
                        detail="a partial tls record header, then nothing",
                        peer=peer,
                        ps=ps,
                        ident=ident,
                    )
                    writer.transport.abort()
                    return
                else:  # closed before saying anything
                    writer.close()
                    return
            finally:
                self._pending -= 1
                self.metrics.sniffing.dec()

        authz = ps.authorize(own, ib.port, peer_id)
        if not authz.allowed:
            self._deny(
                listener=ib.label,
                reason="unauthorized",
                detail=authz.reason,
                peer=peer,
                ps=ps,
                ident=ident,
                peer_id=peer_id,
            )
            client.abort()
            return

        app_host, app_port = split_host_port(ib.config.app)
        try:
            async with asyncio.timeout(self.config.connect_timeout.total_seconds()):
                ar, aw = await asyncio.open_connection(app_host, app_port)
        except (OSError, TimeoutError) as exc:
            self.metrics.upstream_failures.labels(ib.label).inc()
            log.warning("app unreachable", listener=ib.label, app=ib.config.app, error=str(exc))
            client.abort()
            return
        app = self._core.plain(ar, aw)
        mode_label = "tls" if tls else "plaintext"
        self.metrics.connections.labels(ib.label, mode_label).inc()
        active = self.metrics.active.labels(ib.label, mode_label)
        active.inc()
        if tls:
            ib.tls_active += 1
            ib.tls_total += 1
        else:
            ib.plaintext_active += 1
            ib.plaintext_total += 1
            ib.last_plaintext_at = self._clock.now()
            if epoch == ib.mode_epoch:  # accepted under the mode the listener still enforces
                ib.plaintext_since_mode += 1
        counter = self.metrics.bytes
        to_app = counter.labels(ib.label, "to_app")
        from_app = counter.labels(ib.label, "from_app")
        try:
            await self._core.pump(
                client, app, count=lambda d, n: (to_app if d == "a_to_b" else from_app).inc(n)
            )
        finally:
            active.dec()
            if tls:
                ib.tls_active -= 1
            else:
                ib.plaintext_active -= 1

    # -- outbound --------------------------------------------------------------

    async def _handle_outbound(
        self, ob: _OutboundState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer)
        ps = self._policy.current()
        ident = self._identity.current()
        app = self._core.plain(reader, writer)
        if ident is None:
            self._deny(
                listener=ob.label,
                reason="no_identity",
                detail="the proxy has no svid",
                peer=peer,
                ps=ps,
                ident=None,
            )
            app.abort()
            return
        transport = self._outbound_transport(ob, ps, ident.spiffe_id)
        try:
            async with asyncio.timeout(self.config.connect_timeout.total_seconds()):
                ur, uw = await asyncio.open_connection(ob.dest_host, ob.dest_port)
        except (OSError, TimeoutError) as exc:
            self.metrics.upstream_failures.labels(ob.label).inc()
            log.warning(
                "destination unreachable",
                listener=ob.label,
                address=ob.config.address,
                error=str(exc),
            )
            app.abort()
            return
        upstream: Stream
        if transport is Transport.MTLS:
            try:
                async with asyncio.timeout(self.config.handshake_timeout.total_seconds()):
                    upstream, info = await self._core.tls_client(
                        ur, uw, context=self._tls.client(ident)
                    )
            except (HandshakeError, TimeoutError, OSError) as exc:
                self._deny(
                    listener=ob.label,
                    reason="handshake_failed",
                    detail=str(exc) or "the tls handshake timed out",
                    peer=ob.config.address,
                    ps=ps,
                    ident=ident,
                )
                uw.transport.abort()
                app.abort()
                return
            try:
                server_id = check_peer_svid(
                    info.peer_certificate_der,
                    verified_chain_der=info.verified_chain_der,
                    bundles=ident.bundles,
                    now=self._clock.now(),
                    role=PeerRole.SERVER,
                )
            except PeerRejectedError as exc:
                self._deny(
                    listener=ob.label,
                    reason=exc.code,
                    detail=str(exc),
                    peer=ob.config.address,
                    ps=ps,
                    ident=ident,
                )
                upstream.abort()
                app.abort()
                return
            if server_id != ob.destination:
                self._deny(
                    listener=ob.label,
                    reason="server_identity_mismatch",
                    detail=f"the server is {server_id}, not {ob.destination}",
                    peer=ob.config.address,
                    ps=ps,
                    ident=ident,
                    peer_id=server_id,
                )
                upstream.abort()
                app.abort()
                return
            mode_label = "tls"
        else:
            upstream = self._core.plain(ur, uw)
            mode_label = "plaintext"
        if transport is Transport.MTLS:
            ob.mtls_total += 1
        else:
            ob.plaintext_total += 1
        self.metrics.connections.labels(ob.label, mode_label).inc()
        active = self.metrics.active.labels(ob.label, mode_label)
        active.inc()
        to_dest = self.metrics.bytes.labels(ob.label, "from_app")
        to_app = self.metrics.bytes.labels(ob.label, "to_app")
        try:
            await self._core.pump(
                app, upstream, count=lambda d, n: (to_dest if d == "a_to_b" else to_app).inc(n)
            )
        finally:
            active.dec()


async def _listen(
    callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None],
    host: str,
    port: int,
    what: str,
) -> asyncio.Server:
    """A listening server; a port taken or not allowed is one line (ProxyConfigError)."""
    try:
        return await asyncio.start_server(callback, host, port, reuse_address=True, backlog=1024)
    except OSError as exc:
        raise ProxyConfigError(
            f"cannot listen on {what} ({host}:{port}): {exc.strerror or exc}; "
            "is another process (an earlier proxy, Envoy) using it?"
        ) from None


def _peer(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)
