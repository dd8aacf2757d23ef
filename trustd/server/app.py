"""``trustd server``: CA, KMS bridge, registry, audit and admin API in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpclib.server
import structlog
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health

from trustd.audit import AuditSink
from trustd.backoff import Backoff, Retry
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.issuer import X509Issuer
from trustd.ca.jwt import JwtKeyring, JwtSchedule
from trustd.ca.kms.base import KeyAlgorithm
from trustd.clock import Clock, SystemClock
from trustd.config import ServerConfig
from trustd.errors import FailedPreconditionError, TrustdError
from trustd.federation.endpoint import BundleEndpoint
from trustd.federation.relationships import FederationRegistry
from trustd.registry import Registry
from trustd.server import factory
from trustd.server.admin import AdminService
from trustd.server.agent_api import AgentApiServer
from trustd.server.auditing import ServerAudit, open_audit_log
from trustd.server.changes import ChangeHub
from trustd.server.core import ServerCore
from trustd.server.datadir_lock import DataDirLock
from trustd.server.policy_plane import PolicyPlane
from trustd.spiffeid import TrustDomain
from trustd.telemetry.http import HealthServer
from trustd.telemetry.metrics import ServerMetrics

log = structlog.get_logger(__name__)

ROTATION_CHECK_INTERVAL = 10.0  # seconds between automatic rotation checks
CA_BRING_UP_BACKOFF = Backoff(initial=0.5, maximum=30.0)  # KMS or audit log not there yet
FEDERATION_CHECK_INTERVAL = 5.0  # at most this long between looks for due bundle refreshes


def _served(path: Path) -> bool:
    """Does a process accept connections on this Unix socket now?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


async def bind_unix_socket_server(server: grpclib.server.Server, path: Path, mode: int) -> None:
    """Start a grpclib server on a Unix socket that never exists with looser permissions.

    A stale socket file (nobody listening) is replaced; a live one is never touched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and _served(path):
        raise FailedPreconditionError(
            f"another process serves {path}: stop it first, or configure another socket path"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o777 & ~mode)
    try:
        await server.start(path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)


class TrustdServer:
    def __init__(
        self, cfg: ServerConfig, *, clock: Clock | None = None, audit: AuditSink | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.trust_domain = TrustDomain.parse(cfg.trust_domain)
        self.metrics = ServerMetrics()
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(cfg.data_path)
        self._lock.acquire()  # before anything is bound, created or removed
        try:
            self._build(cfg, audit)
        except BaseException:
            self._lock.release()
            raise

    def _build(self, cfg: ServerConfig, audit: AuditSink | None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="trustd-blocking")
        factory.prepare_data_dir(cfg.data_path)
        self.store = factory.make_store(cfg)
        self.key_manager = factory.make_key_manager(cfg, self.metrics)
        self.upstream = factory.make_upstream(cfg, self.metrics)
        # The audit key lives in the key manager, which may be down at start: the log is
        # opened (with retries) in _bring_up_ca; until then every audited action fails.
        self.server_id = factory.server_id(cfg.data_path)
        self._server_audit = (
            ServerAudit(
                server_id=self.server_id,
                mirror=self.store if self.store.kind == "postgresql" else None,
            )
            if audit is None
            else None
        )
        self.audit: AuditSink = audit or self._server_audit  # type: ignore[assignment]
        self.authorities = AuthorityManager(
            store=self.store,
            key_manager=self.key_manager,
            trust_domain=self.trust_domain,
            schedule=RotationSchedule(
                ca_ttl=cfg.ca.ttl, key_algorithm=KeyAlgorithm(cfg.ca.key_type)
            ),
            clock=self.clock,
            upstream=self.upstream,
        )
        self.issuer = X509Issuer(
            key_manager=self.key_manager,
            default_ttl=cfg.svid.default_ttl,
            max_ttl=cfg.svid.max_ttl,
        )
        self.hub = ChangeHub()
        self._change_feed = factory.make_change_feed(cfg, self.server_id, self.hub)
        self.authorities.subscribe(lambda _bundle: self.hub.notify("bundle"))
        self.core = ServerCore(
            trust_domain=self.trust_domain,
            store=self.store,
            key_manager=self.key_manager,
            authorities=self.authorities,
            issuer=self.issuer,
            audit=self.audit,
            clock=self.clock,
            metrics=self.metrics,
            hub=self.hub,
            jwt_keys=JwtKeyring(
                store=self.store,
                key_manager=self.key_manager,
                trust_domain=self.trust_domain,
                clock=self.clock,
                schedule=JwtSchedule(
                    key_ttl=cfg.jwt.key_ttl, key_algorithm=KeyAlgorithm(cfg.jwt.key_type)
                ),
            ),
            jwt_ttl=cfg.jwt.ttl,
            jwt_max_ttl=cfg.jwt.max_ttl,
        )
        self.policy = PolicyPlane(
            store=self.store,
            clock=self.clock,
            audit=self.audit,
            changes=self.hub,
            settle_period=cfg.rollout.settle_period,
            server_id=self.server_id,
        )
        self.federation = FederationRegistry(
            store=self.store,
            audit=self.audit,
            clock=self.clock,
            trust_domain=self.trust_domain,
            metrics=self.metrics.federation,
            notify=self.hub.notify,
            ca_file=cfg.federation.ca_file,
        )
        self.registry = Registry(
            store=self.store,
            audit=self.audit,
            clock=self.clock,
            issuance=self.core,
            max_ttl=self.issuer.max_ttl,
            notify=self.hub.notify,
            federated_bundles=self.federation.bundles,
        )
        self.agent_api = AgentApiServer(
            self.core, self.registry, self.hub, self.executor, self.policy
        )
        self.agent_api_port: int | None = None
        self.bundle_endpoint: BundleEndpoint | None = None
        self.bundle_endpoint_port: int | None = None
        self._admin_server: grpclib.server.Server | None = None
        self._admin_bound = False
        self._health = HealthServer(registry=self.metrics.registry, readiness=self.readiness)
        self._tasks: list[asyncio.Task[Any]] = []
        self._not_ready_reason = "starting"
        self.metrics_address: tuple[str, int] | None = None

    def _open_audit(self) -> None:
        server_audit = self._server_audit
        if server_audit is None or server_audit.is_open:
            return
        server_audit.open(
            *open_audit_log(self.cfg, self.key_manager, self.clock, metrics=self.metrics.audit)
        )

    def readiness(self) -> tuple[bool, str]:
        if self._not_ready_reason:
            self.metrics.ready.set(0)
            return False, self._not_ready_reason
        ok, reason = self.core.readiness()
        self.metrics.ready.set(1 if ok else 0)
        return ok, reason

    async def _bring_up_ca(self) -> None:
        """Activate a CA, retrying with backoff while the key manager is unavailable."""
        retry = Retry(CA_BRING_UP_BACKOFF, clock=self.clock)
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, self._open_audit)
                await asyncio.get_running_loop().run_in_executor(self.executor, self.core.ensure_ca)
                self.core.refresh_metrics()
                self.agent_api_port = await self.agent_api.start(self.cfg.server_address)
                await self._start_bundle_endpoint()
                self._not_ready_reason = ""
                self.metrics.ready.set(1)
                return
            except TrustdError as exc:
                server_audit = self._server_audit
                if server_audit is not None and not server_audit.is_open:
                    server_audit.reason = str(exc)
                    self._not_ready_reason = f"audit log cannot be opened: {exc}"
                else:
                    self._not_ready_reason = f"no active CA: {exc}"
                delay = retry.next_delay()
                log.warning(
                    "cannot activate a CA yet; retrying", error=str(exc), retry_in=round(delay, 2)
                )
                await self.clock.sleep(delay)

    async def _start_bundle_endpoint(self) -> None:
        ep = self.cfg.federation.bundle_endpoint
        if ep is None or self.bundle_endpoint is not None:
            return
        loop = asyncio.get_running_loop()

        async def bundle() -> Any:
            return await loop.run_in_executor(self.executor, self.core.bundle)

        async def svid() -> Any:
            return await loop.run_in_executor(self.executor, self.agent_api.server_svid)

        endpoint = BundleEndpoint(
            bundle=bundle,
            refresh_hint=self.cfg.federation.refresh_hint,
            svid=svid if ep.profile == "https_spiffe" else None,
            cert_file=ep.cert_file,
            key_file=ep.key_file,
            now=self.clock.now,
        )
        try:
            self.bundle_endpoint_port = await endpoint.start(ep.address)
        except OSError as exc:
            raise FailedPreconditionError(
                f"cannot listen on the bundle endpoint address {ep.address}: "
                f"{exc.strerror or exc} (set federation.bundleEndpoint.address)"
            ) from None
        self.bundle_endpoint = endpoint

    async def _federation_loop(self) -> None:
        """Refresh each foreign bundle when its refresh is due (its refresh hint)."""
        loop = asyncio.get_running_loop()
        while True:
            wait = FEDERATION_CHECK_INTERVAL
            if not self._not_ready_reason:  # the audit log is open
                try:
                    await loop.run_in_executor(self.executor, self.federation.refresh_due)
                    due = await loop.run_in_executor(self.executor, self.federation.next_due)
                    if due is not None:
                        left = (due - self.clock.now()).total_seconds()
                        wait = min(FEDERATION_CHECK_INTERVAL, max(0.2, left))
                except TrustdError as exc:
                    log.error("federated bundle refresh failed", error=str(exc))
            await asyncio.sleep(wait)

    async def _rotation_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ROTATION_CHECK_INTERVAL)
            if self._server_audit is not None:
                try:
                    await loop.run_in_executor(self.executor, self._server_audit.checkpoint_if_due)
                except TrustdError as exc:
                    log.error("audit checkpoint failed", error=str(exc))
            await loop.run_in_executor(self.executor, self.readiness)  # keeps trustd_ready current
            if self._not_ready_reason:
                continue
            await loop.run_in_executor(self.executor, self.core.rotate_tick)

    async def start(self) -> None:
        self.hub.bind(asyncio.get_running_loop())
        if self._change_feed is not None:
            self._change_feed.start()
        health = Health({})
        admin = AdminService(
            self.core,
            self.registry,
            executor=self.executor,
            socket_path=self.cfg.admin_socket_path,
            owner_uid=os.getuid(),
            policy=self.policy,
            server_audit=self._server_audit,
            federation=self.federation,
        )
        self._admin_server = grpclib.server.Server([admin, health])
        await bind_unix_socket_server(self._admin_server, self.cfg.admin_socket_path, 0o600)
        self._admin_bound = True
        try:
            self.metrics_address = await self._health.start(self.cfg.metrics_address)
        except OSError as exc:
            raise FailedPreconditionError(
                f"cannot listen on the metrics address {self.cfg.metrics_address}: "
                f"{exc.strerror or exc} (set metricsAddress or --metrics-address)"
            ) from None
        self._tasks.append(asyncio.create_task(self._bring_up_ca()))
        self._tasks.append(asyncio.create_task(self._rotation_loop()))
        self._tasks.append(asyncio.create_task(self._federation_loop()))
        self.policy.start()
        log.info(
            "server started",
            trust_domain=str(self.trust_domain),
            admin_socket=str(self.cfg.admin_socket_path),
            store=self.store.kind,
            key_manager=self.key_manager.kind,
            server_id=self.server_id,
        )
        _ = ServiceStatus  # health is SERVING for the overall service

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self._not_ready_reason:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(self._not_ready_reason)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.agent_api.stop()
        if self.bundle_endpoint is not None:
            await self.bundle_endpoint.stop()
        await self.policy.stop()
        if self._change_feed is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._change_feed.stop)
        if self._admin_server is not None and self._admin_bound:
            self._admin_server.close()
            await self._admin_server.wait_closed()
        await self._health.stop()
        if self._server_audit is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self._server_audit.close
            )
        self.executor.shutdown(wait=True)
        if self.upstream is not None:
            self.upstream.close()
        self.key_manager.close()
        self.store.close()
        if self._admin_bound:  # never the socket of another process that refused us
            with contextlib.suppress(FileNotFoundError):
                self.cfg.admin_socket_path.unlink()
            self._admin_bound = False
        self._lock.release()
        log.info("server stopped")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
