"""The agent's upstream when its server is remote: the agent API, gRPC over mTLS.

Joining: a one-time token and a bootstrap trust bundle (or, for labs only,
``insecureBootstrap``) get the agent its own SVID. The agent's key and SVID
are kept in the agent's data dir (0600), like SPIRE's, so a restart does not
need a new token; workload keys never touch disk. The agent SVID is renewed
at half life; the connection trusts the server only as
``spiffe://TD/trustd/server``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from trustd import tlsutil
from trustd.agent.upstream import (
    BundleUpdate,
    EntryUpdate,
    JwtSvidRequest,
    SignedJwtSvid,
    SvidRequest,
)
from trustd.api.agent.v1 import agent_pb2 as pb
from trustd.api.agent.v1.agent_grpc import AgentAPIStub
from trustd.api.convert import bundle_of, entry_of, time_of, x509_svid_of
from trustd.api.edge import error_of
from trustd.api.policy.v1 import policy_pb2
from trustd.backoff import Backoff, Retry
from trustd.ca.issuer import IssuedSvid
from trustd.errors import ConfigError, TrustdError, UnavailableError
from trustd.spiffeid import SpiffeId, TrustDomain

log = structlog.get_logger(__name__)

CALL_TIMEOUT = 30.0
T = TypeVar("T")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class ServerLink:
    """Implements the agent's Upstream protocol against a remote ``trustd server``."""

    def __init__(
        self,
        *,
        address: str,
        trust_domain: TrustDomain,
        data_dir: Path,
        join_token: str | None,
        bootstrap_bundle_pem: bytes | None,
        insecure_bootstrap: bool = False,
    ) -> None:
        # Several servers: "a:8081,b:8081", or one DNS name whose records name them all
        # (asyncio tries every address of a name when it connects).
        self.addresses = parse_server_addresses(address)
        self._current = 0  # the server the channel talks to; moves on when it fails
        self.td = trust_domain
        self.data_dir = data_dir
        self.join_token = join_token
        self.bootstrap_pem = bootstrap_bundle_pem
        self.insecure_bootstrap = insecure_bootstrap
        self.server_id = SpiffeId.parse(f"spiffe://{trust_domain}/trustd/server")
        self.agent_id: str | None = None
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._chain: list[x509.Certificate] = []
        self._bundle_pem: bytes = bootstrap_bundle_pem or b""
        self._ctx: ssl.SSLContext | None = None
        self._channel: Channel | None = None
        self._renew_task: asyncio.Task[None] | None = None

    # -- identity ------------------------------------------------------------
    @property
    def _svid_path(self) -> Path:
        return self.data_dir / "agent-svid.json"

    def _load_saved(self) -> bool:
        try:
            doc = json.loads(self._svid_path.read_text())
        except (OSError, ValueError):
            return False
        key = serialization.load_pem_private_key(doc["key_pem"].encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return False
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in doc["chain_der"]]
        if chain[0].not_valid_after_utc <= dt.datetime.now(dt.UTC):
            log.warning("saved agent svid has expired; joining again")
            return False
        self._key, self._chain, self.agent_id = key, chain, doc["agent_id"]
        self._bundle_pem = doc["bundle_pem"].encode()
        return True

    def _save(self) -> None:
        assert self._key is not None
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {
            "agent_id": self.agent_id,
            "chain_der": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                for c in self._chain
            ],
            "key_pem": self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            "bundle_pem": self._bundle_pem.decode(),
        }
        _write_private(self._svid_path, json.dumps(doc).encode())

    @staticmethod
    def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.DER)

    def _context(self, *, with_identity: bool) -> ssl.SSLContext:
        if self._bundle_pem:
            ctx = tlsutil.client_context(self._bundle_pem, self.server_id)
        elif self.insecure_bootstrap:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
        else:
            raise ConfigError("no trust bundle to verify the server: set trustBundlePath")
        if with_identity:
            assert self._key is not None
            tlsutil.load_identity(ctx, self._chain, self._key)
        return ctx

    @property
    def host(self) -> str:
        return self.addresses[self._current][0]

    @property
    def port(self) -> int:
        return self.addresses[self._current][1]

    def _new_channel(self) -> Channel:
        assert self._ctx is not None
        return Channel(self.host, self.port, ssl=self._ctx)

    def _fail_over(self, failed: Channel | None) -> None:
        """The server behind ``failed`` is gone: the next calls go to the next address.

        Every watch and call on the shared channel fails at once when its server dies;
        only the first of them moves on (the others find a newer channel already).
        """
        if failed is not self._channel or self._ctx is None:
            return
        before = f"{self.host}:{self.port}"
        self._current = (self._current + 1) % len(self.addresses)
        self._channel = self._new_channel()
        if failed is not None:
            failed.close()
        if len(self.addresses) > 1:
            log.warning(
                "server unreachable: failing over", failed=before, now=f"{self.host}:{self.port}"
            )

    async def _call(self, call: Callable[[AgentAPIStub], Awaitable[T]], channel: Channel) -> T:
        """One unary call; errors as the trustd error the status stands for."""
        try:
            return await call(AgentAPIStub(channel))
        except GRPCError as exc:
            err = error_of(exc)
            if isinstance(err, UnavailableError):
                self._fail_over(channel)
            raise err from None
        except (TimeoutError, OSError, ssl.SSLError, StreamTerminatedError) as exc:
            where = f"{self.host}:{self.port}"
            self._fail_over(channel)
            raise UnavailableError(f"cannot reach the server at {where}: {exc}") from None

    async def _once(self, ctx: ssl.SSLContext, call: Callable[[AgentAPIStub], Awaitable[T]]) -> T:
        """One unary call on a channel of its own (join, renewal), tried on each server once."""
        last: UnavailableError | None = None
        for _ in range(len(self.addresses)):
            channel = Channel(self.host, self.port, ssl=ctx)
            try:
                return await self._call(call, channel)
            except UnavailableError as exc:
                last = exc
                if len(self.addresses) > 1:
                    # the server is gone for the shared channel too: one move for both
                    if self._channel is not None:
                        self._fail_over(self._channel)
                    else:  # joining: no shared channel yet
                        self._current = (self._current + 1) % len(self.addresses)
            finally:
                channel.close()
        assert last is not None
        raise last

    async def start(self) -> None:
        """Join (or reuse the saved agent SVID), then keep the agent SVID renewed."""
        if not self._load_saved():
            if not self.join_token:
                raise ConfigError(
                    "this agent has not joined yet: set joinToken (trustd token create)"
                )
            key = ec.generate_private_key(ec.SECP256R1())
            request = pb.JoinRequest(
                token=self.join_token, csr_der=self._csr(key), hostname=socket.gethostname()
            )
            joined = await self._once(
                self._context(with_identity=False),
                lambda stub: stub.Join(request, timeout=CALL_TIMEOUT),
            )
            svid = x509_svid_of(joined.svid)
            self._key = key
            self._chain = [x509.load_der_x509_certificate(d) for d in svid.chain_der]
            self._bundle_pem = joined.bundle_pem
            self.agent_id = joined.agent_id
            self._save()
            log.info("agent joined", agent_id=self.agent_id, spiffe_id=str(svid.spiffe_id))
        self._ctx = self._context(with_identity=True)
        self._channel = self._new_channel()
        self._renew_task = asyncio.create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        retry = Retry(Backoff(initial=1.0, maximum=30.0))
        while True:
            leaf = self._chain[0]
            life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
            due = leaf.not_valid_before_utc + life / 2
            await asyncio.sleep(max(1.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
            try:
                key = ec.generate_private_key(ec.SECP256R1())
                assert self._ctx is not None
                request = pb.RenewAgentRequest(csr_der=self._csr(key))

                async def renew(
                    stub: AgentAPIStub, r: pb.RenewAgentRequest = request
                ) -> pb.RenewAgentResponse:
                    reply: pb.RenewAgentResponse = await stub.RenewAgent(r, timeout=CALL_TIMEOUT)
                    return reply

                renewed = await self._once(self._ctx, renew)
                self._key = key
                self._chain = [
                    x509.load_der_x509_certificate(d) for d in x509_svid_of(renewed.svid).chain_der
                ]
                self._save()
                self._ctx = self._context(with_identity=True)
                old, self._channel = self._channel, self._new_channel()
                if old is not None:
                    old.close()
                log.info(
                    "agent svid renewed", not_after=self._chain[0].not_valid_after_utc.isoformat()
                )
                retry.reset()
            except TrustdError as exc:
                log.warning("agent svid renewal failed; retrying", error=str(exc))
                await retry.sleep()

    async def close(self) -> None:
        if self._renew_task is not None:
            self._renew_task.cancel()
        if self._channel is not None:
            self._channel.close()

    # -- Upstream ------------------------------------------------------------
    def _stub(self) -> AgentAPIStub:
        assert self._channel is not None, "start() first"
        return AgentAPIStub(self._channel)

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        """The messages of one server stream, until the server ends it (UnavailableError)."""
        channel = self._channel
        try:
            async with method.open() as st:
                await st.send_message(request, end=True)
                async for msg in st:
                    yield msg
        except GRPCError as exc:
            err = error_of(exc)
            if isinstance(err, UnavailableError):
                self._fail_over(channel)
            raise err from None
        except (OSError, ssl.SSLError, StreamTerminatedError) as exc:
            where = f"{self.host}:{self.port}"
            self._fail_over(channel)
            raise UnavailableError(f"lost the server at {where}: {exc}") from None
        self._fail_over(channel)  # a server that is shutting down ends its streams
        raise UnavailableError("the server closed the stream")

    async def watch_entries(self, *, since_revision: int | None) -> AsyncIterator[EntryUpdate]:
        request = pb.WatchEntriesRequest(since_revision=since_revision)
        upd: pb.EntryUpdate
        async for upd in self._stream(self._stub().WatchEntries, request):
            yield EntryUpdate(
                revision=upd.revision,
                full=upd.full,
                upserted=tuple(entry_of(e) for e in upd.upserted),
                removed=tuple(upd.removed),
            )

    async def watch_bundles(self) -> AsyncIterator[BundleUpdate]:
        upd: pb.BundleUpdate
        async for upd in self._stream(self._stub().WatchBundles, pb.WatchBundlesRequest()):
            bundles = tuple(bundle_of(b) for b in upd.bundles)
            own = next((b for b in bundles if b.trust_domain == self.td), None)
            if own is not None and self._ctx is not None:
                self._bundle_pem = own.to_pem()
                self._ctx.load_verify_locations(cadata=self._bundle_pem.decode())
            yield BundleUpdate(bundles=bundles, tainted_key_ids=frozenset(upd.tainted_key_ids))

    async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
        request = pb.SignSvidsRequest(
            requests=[pb.SvidRequest(entry_id=r.entry_id, csr_der=r.csr_der) for r in requests]
        )
        signed = await self._call(
            lambda stub: stub.SignSvids(request, timeout=CALL_TIMEOUT), self._channel_or_fail()
        )
        return [x509_svid_of(s) for s in signed.svids]

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        msg = pb.SignJwtSvidRequest(entry_id=request.entry_id, audience=list(request.audience))
        signed = await self._call(
            lambda stub: stub.SignJwtSvid(msg, timeout=CALL_TIMEOUT), self._channel_or_fail()
        )
        return SignedJwtSvid(
            entry_id=signed.svid.entry_id,
            token=signed.svid.token,
            issued_at=time_of(signed.svid.issued_at),
            expires_at=time_of(signed.svid.expires_at),
        )

    def _channel_or_fail(self) -> Channel:
        assert self._channel is not None, "start() first"
        return self._channel

    async def watch_policy(self) -> AsyncIterator[policy_pb2.PolicySet]:
        msg: policy_pb2.WatchResponse
        async for msg in self._stream(self._stub().WatchPolicy, pb.WatchPolicyRequest()):
            yield msg.policy

    async def send_policy_reports(self, reports: pb.ReportPolicyRequest) -> None:
        assert self._ctx is not None, "start() first"
        await self._once(self._ctx, lambda stub: stub.ReportPolicy(reports, timeout=CALL_TIMEOUT))

    async def report(self, telemetry: dict[str, str]) -> None:
        assert self._ctx is not None
        request = pb.ReportRequest(telemetry=telemetry)
        await self._once(self._ctx, lambda stub: stub.Report(request, timeout=CALL_TIMEOUT))


async def run_remote_agent(cfg: Any, until: Any) -> None:
    """Join (or resume), serve SDS and the Workload API, until ``until()`` returns."""
    from trustd.agent.agent_config import AgentConfig
    from trustd.agent.service import AgentService
    from trustd.telemetry.http import HealthServer

    assert isinstance(cfg, AgentConfig)
    data_dir = Path(cfg.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = Path(cfg.trust_bundle_path).read_bytes() if cfg.trust_bundle_path else None
    link = ServerLink(
        address=cfg.server_address,
        trust_domain=TrustDomain.parse(cfg.trust_domain),
        data_dir=data_dir,
        join_token=cfg.token(),
        bootstrap_bundle_pem=bundle,
        insecure_bootstrap=cfg.insecure_bootstrap,
    )
    await link.start()
    agent = AgentService(
        upstream=link,
        socket_path=cfg.agent_socket_path,
        trust_domain=TrustDomain.parse(cfg.trust_domain),
        policy_upstream=link,
    )
    await agent.start()

    def readiness() -> tuple[bool, str]:
        try:
            ready = agent.cache.ready
        except RuntimeError:
            return False, "starting"
        return (True, "ok") if ready else (False, "waiting for the first sync with the server")

    health = HealthServer(registry=agent.metrics.registry, readiness=readiness)
    await health.start(cfg.metrics_address)
    log.info("agent running", agent_id=link.agent_id, socket=str(cfg.agent_socket_path))
    try:
        await until()
    finally:
        await health.stop()
        await agent.stop()
        await link.close()


def parse_server_addresses(text: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as (host, port) pairs; a ConfigError names a bad one."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"server address {part!r} is not host:port (several: a:8081,b:8081)")
        out.append((host, int(port)))
    if not out:
        raise ConfigError(
            "no server address: set serverAddress (host:port, or several a:8081,b:8081)"
        )
    return out
