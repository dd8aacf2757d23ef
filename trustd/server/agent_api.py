"""The agent API: agents join with a one-time token, then talk gRPC over mTLS.

- ``Join``: no client certificate yet. The request and its CSR are checked
  first; only then is the token consumed atomically (two racing joins: exactly
  one wins) and the agent gets its own SVID, ``spiffe://TD/trustd/agent/<id>``,
  signed from its CSR. A join that fails after that gives the token back.
- Every other call needs that SVID as the TLS client certificate. Besides the
  TLS layer's check, each call re-verifies it against the *current* bundle and
  the agent's record: an evicted agent is cut off, streams included.
- Entries go out as a snapshot then deltas; bundles on every change.
- ``SignJwtSvid``: a JWT-SVID for one of the agent's entries and an audience,
  signed with the server's JWT key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import ssl
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

import grpclib.server
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health

from trustd import tlsutil
from trustd.agent.upstream import JwtSvidRequest
from trustd.agent.upstream import SvidRequest as AgentSvidRequest
from trustd.ca.errors import InvalidCsrError
from trustd.ca.issuer import load_csr
from trustd.entries import RegistrationEntry
from trustd.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TrustdError,
    UnauthenticatedError,
    UnavailableError,
)
from trustd.server import core as core_mod
from trustd.server.audit_hook import SYSTEM, Actor
from trustd.server.changes import ChangeHub
from trustd.server.core import ServerCore
from trustd.server.inprocess import PolicyUpstreamInProcess, ServerUpstream
from trustd.server.policy_plane import PolicyPlane
from trustd.server.rpc import JsonService, run_blocking
from trustd.spiffeid import SpiffeId
from trustd.store.base import AgentRecord

log = structlog.get_logger(__name__)

SERVICE = "trustd.agent.v1.AgentAPI"
AGENT_PATH_PREFIX = "/trustd/agent/"
SERVER_PATH = "/trustd/server"
MAX_TOKEN_CHARS = 256


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _csr_der(value: object) -> bytes:
    """A ``csr_der`` field: the standard base64 of a PKCS#10 request."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError("csr_der is required: the base64 of a DER certificate request")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(
            "csr_der is not valid base64: send the base64 of a DER certificate request"
        ) from None


def entry_doc(e: RegistrationEntry) -> dict[str, Any]:
    return e.to_json()


class AgentApi(JsonService):
    service_name = SERVICE

    def __init__(
        self,
        core: ServerCore,
        hub: ChangeHub,
        executor: Executor | None,
        policy: PolicyPlane | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.hub = hub
        self.executor = executor
        self.policy = policy
        self.unary("Join", self._join)
        self.unary("RenewAgent", self._renew)
        self.unary("SignSvids", self._sign)
        self.unary("SignJwtSvid", self._sign_jwt)
        self.unary("Report", self._report)
        self.server_stream("WatchEntries", self._watch_entries)
        self.server_stream("WatchBundles", self._watch_bundles)
        self.server_stream("WatchPolicy", self._watch_policy)
        self.unary("ReportPolicy", self._report_policy)

    # -- identity of the caller ---------------------------------------------
    def _peer_cert(self, stream: grpclib.server.Stream[Any, Any]) -> x509.Certificate | None:
        transport = getattr(stream.peer, "_transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        return x509.load_der_x509_certificate(der) if der else None

    def _agent_of(self, stream: grpclib.server.Stream[Any, Any]) -> AgentRecord:
        """Re-check the client certificate against the current bundle and the agent record."""
        cert = self._peer_cert(stream)
        if cert is None:
            raise UnauthenticatedError("this call needs the agent's SVID as client certificate")
        now = self.core.clock.now()
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise UnauthenticatedError("the agent's SVID has expired: join again")
        bundle = self.core.bundle()
        if not any(_issued_by(cert, ca) for ca in bundle.x509_authorities):
            raise UnauthenticatedError("the agent's SVID is not signed by a trusted CA")
        sid = tlsutil.spiffe_id_of(cert)
        td = self.core.trust_domain
        if sid is None or sid.trust_domain != td or not sid.path.startswith(AGENT_PATH_PREFIX):
            raise PermissionDeniedError("only agents may call the agent API")
        agent_id = sid.path[len(AGENT_PATH_PREFIX) :]
        try:
            rec = self.core.store.get_agent(agent_id)
        except NotFoundError:
            raise PermissionDeniedError(f"agent {agent_id} is unknown") from None
        if rec.evicted:
            raise PermissionDeniedError(f"agent {agent_id} was evicted: it must join again")
        return rec

    def _actor(self, rec: AgentRecord, stream: grpclib.server.Stream[Any, Any]) -> Actor:
        addr = stream.peer.addr()
        return Actor(kind="spiffe", id=rec.spiffe_id, addr=f"{addr[0]}:{addr[1]}" if addr else None)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await run_blocking(self.executor, fn, *args)

    # -- calls ---------------------------------------------------------------
    def _issue_agent_svid(self, actor: Actor, agent_id: str, csr: bytes) -> Any:
        sid = SpiffeId.parse(f"spiffe://{self.core.trust_domain}{AGENT_PATH_PREFIX}{agent_id}")
        entry = RegistrationEntry(
            id=f"agent:{agent_id}", spiffe_id=sid, selectors=(), created_at=self.core.clock.now()
        )
        return self.core.issue_internal_svid(
            actor, core_mod.SvidRequest(entry=entry, csr=csr), source="agent"
        )

    def _join_blocking(
        self, token: str, csr: bytes, hostname: str, addr: str | None
    ) -> dict[str, Any]:
        """Check the request, then consume the token, issue and record, all or nothing.

        Nothing that the request itself gets wrong can spend the token: the CSR
        is checked before it is consumed. A failure after that (KMS, store,
        audit log) gives the token back, so the agent can retry with it.
        """
        now = self.core.clock.now()
        agent_id = uuid.uuid4().hex
        digest = self.core.token_hash(token)
        resource = f"token/{digest[:16]}"
        actor = Actor(
            kind="unix" if addr is None else "spiffe", id=f"join_token:{digest[:16]}", addr=addr
        )
        try:
            load_csr(csr)
        except InvalidCsrError as bad_csr:
            self.core._audit_failure("agent.join", actor, "join", resource, bad_csr)
            raise
        if not self.core.store.consume_token(digest, agent_id, now):
            exc = PermissionDeniedError(
                "the join token is unknown, used or expired: create a new one"
            )
            self.core._audit_failure("agent.join", actor, "join", resource, exc)
            raise exc
        try:
            svid = self._issue_agent_svid(actor, agent_id, csr)
            self.core._audit(
                "agent.join",
                actor,
                "join",
                f"agent/{agent_id}",
                details={
                    "spiffe_id": str(svid.spiffe_id),
                    "serial": svid.serial,
                    "token_hmac": digest,
                },
            )
            self.core.store.save_agent(
                AgentRecord(
                    id=agent_id,
                    spiffe_id=str(svid.spiffe_id),
                    serial=svid.serial,
                    not_after=svid.not_after,
                    joined_at=now,
                    last_seen=now,
                    hostname=hostname[:255],
                )
            )
        except Exception as exc:
            self._give_token_back(digest, agent_id, actor, resource, exc)
            raise
        log.info("agent joined", agent_id=agent_id, spiffe_id=str(svid.spiffe_id))
        return {
            "agent_id": agent_id,
            "spiffe_id": str(svid.spiffe_id),
            "chain_der": [_b64(d) for d in svid.chain_der],
            "bundle_pem": self.core.bundle().to_pem().decode(),
        }

    def _give_token_back(
        self, digest: str, agent_id: str, actor: Actor, resource: str, exc: Exception
    ) -> None:
        """After a join failed past consuming its token: make the token usable again."""
        try:
            released = self.core.store.release_token(digest, agent_id)
        except TrustdError:
            released = False
        if released:
            log.warning(
                "join failed after its token was consumed; the token can be used again",
                token_hmac=digest[:16],
                error=str(exc),
            )
        else:
            log.error(
                "join failed after its token was consumed; the token could not be given back",
                token_hmac=digest[:16],
                error=str(exc),
            )
        self.core._audit_failure("agent.join", actor, "join", resource, exc)

    async def _join(self, stream: Any, d: dict[str, Any]) -> Any:
        token = d.get("token")
        if not isinstance(token, str) or not token:
            raise InvalidArgumentError("join needs a token: create one with 'trustd token create'")
        if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
            raise InvalidArgumentError(
                "the join token is malformed: use the token 'trustd token create' printed"
            )
        csr = _csr_der(d.get("csr_der"))
        hostname = d.get("hostname")
        if hostname is None:
            hostname = ""
        if not isinstance(hostname, str) or not hostname.isprintable():
            raise InvalidArgumentError("hostname must be a printable string")
        addr = stream.peer.addr()
        return await self._run(
            self._join_blocking,
            token,
            csr,
            hostname,
            f"{addr[0]}:{addr[1]}" if addr else None,
        )

    async def _renew(self, stream: Any, d: dict[str, Any]) -> Any:
        rec = await self._run(self._agent_of, stream)
        actor = self._actor(rec, stream)
        csr = _csr_der(d.get("csr_der"))

        def renew() -> dict[str, Any]:
            svid = self._issue_agent_svid(actor, rec.id, csr)
            now = self.core.clock.now()
            self.core.store.save_agent(
                replace(rec, serial=svid.serial, not_after=svid.not_after, last_seen=now)
            )
            self.core._audit(
                "agent.renew", actor, "renew", f"agent/{rec.id}", details={"serial": svid.serial}
            )
            return {"chain_der": [_b64(x) for x in svid.chain_der]}

        return await self._run(renew)

    async def _sign(self, stream: Any, d: dict[str, Any]) -> Any:
        rec = await self._run(self._agent_of, stream)
        reqs = [
            AgentSvidRequest(entry_id=str(r["entry_id"]), csr_der=_csr_der(r["csr_der"]))
            for r in d.get("requests", [])
        ]
        upstream = ServerUpstream(self.core, self.hub, self.executor, self._actor(rec, stream))
        signed = await upstream.sign_x509_svids(reqs)
        return {
            "svids": [
                {
                    "entry_id": s.entry_id,
                    "chain_der": [_b64(x) for x in s.cert_chain_der],
                    "not_after": s.not_after.isoformat(),
                }
                for s in signed
            ]
        }

    async def _sign_jwt(self, stream: Any, d: dict[str, Any]) -> Any:
        rec = await self._run(self._agent_of, stream)
        entry_id = d.get("entry_id")
        audience = d.get("audience")
        if not isinstance(entry_id, str) or not entry_id:
            raise InvalidArgumentError("entry_id is required")
        if not isinstance(audience, list) or not all(isinstance(a, str) for a in audience):
            raise InvalidArgumentError("audience must be a list of strings")
        upstream = ServerUpstream(self.core, self.hub, self.executor, self._actor(rec, stream))
        signed = await upstream.sign_jwt_svid(
            JwtSvidRequest(entry_id=entry_id, audience=tuple(audience))
        )
        return {
            "entry_id": signed.entry_id,
            "token": signed.token,
            "issued_at": signed.issued_at.isoformat(),
            "expires_at": signed.expires_at.isoformat(),
        }

    async def _report(self, stream: Any, d: dict[str, Any]) -> Any:
        rec = await self._run(self._agent_of, stream)
        meta = d.get("telemetry") if isinstance(d.get("telemetry"), dict) else {}
        await self._run(
            self.core.store.save_agent,
            replace(rec, last_seen=self.core.clock.now(), meta=meta or {}),
        )
        return {}

    async def _cut_off_when_evicted(self, stream: Any) -> None:
        """Raise once the agent is evicted (checked on every agent change and every 30 s)."""
        seen = self.hub.version("agents")
        while True:
            seen = await self.hub.wait("agents", seen, 30.0)
            await self._run(self._agent_of, stream)

    async def _guarded(self, stream: Any, source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        guard = asyncio.ensure_future(self._cut_off_when_evicted(stream))
        try:
            while True:
                nxt = asyncio.ensure_future(source.__anext__())
                done, _ = await asyncio.wait({nxt, guard}, return_when=asyncio.FIRST_COMPLETED)
                if guard in done:
                    nxt.cancel()
                    guard.result()  # raises PermissionDeniedError
                try:
                    yield nxt.result()
                except StopAsyncIteration:
                    return
        finally:
            guard.cancel()

    async def _watch_entries(self, stream: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        rec = await self._run(self._agent_of, stream)
        since = d.get("since_revision")
        upstream = ServerUpstream(self.core, self.hub, self.executor, self._actor(rec, stream))
        source = upstream.watch_entries(since_revision=int(since) if since is not None else None)
        async for upd in self._guarded(stream, source):
            yield {
                "revision": upd.revision,
                "full": upd.full,
                "upserted": [entry_doc(e) for e in upd.upserted],
                "removed": list(upd.removed),
            }

    async def _watch_policy(self, stream: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        rec = await self._run(self._agent_of, stream)
        upstream = _policy_upstream(self, rec, stream)
        async for doc in self._guarded(stream, upstream.watch_policy()):
            yield {"policy": doc}

    async def _report_policy(self, stream: Any, d: dict[str, Any]) -> Any:
        rec = await self._run(self._agent_of, stream)
        upstream = _policy_upstream(self, rec, stream)
        await upstream.send_policy_reports(
            acks=[(str(a[0]), int(a[1])) for a in d.get("acks", [])],
            statuses=[s for s in d.get("statuses", []) if isinstance(s, dict)],
            denials=[e for e in d.get("denials", []) if isinstance(e, dict)],
        )
        return {}

    async def _watch_bundles(self, stream: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        rec = await self._run(self._agent_of, stream)
        upstream = ServerUpstream(self.core, self.hub, self.executor, self._actor(rec, stream))
        async for upd in self._guarded(stream, upstream.watch_bundles()):
            yield {
                "bundles": [
                    {"trust_domain": str(b.trust_domain), "spiffe": b.to_spiffe_json()}
                    for b in upd.bundles
                ],
                "tainted_key_ids": sorted(k.hex() for k in upd.tainted_key_ids),
            }


def _policy_upstream(api: AgentApi, rec: AgentRecord, stream: Any) -> PolicyUpstreamInProcess:
    if api.policy is None:
        raise UnavailableError("this server has no policy plane")
    return PolicyUpstreamInProcess(api.policy, api.hub, api._actor(rec, stream))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature and mismatched issuers
        return False
    return True


class AgentApiServer:
    """The TLS listener for agents, with the server's own SVID, renewed at half life."""

    def __init__(
        self,
        core: ServerCore,
        hub: ChangeHub,
        executor: Executor | None,
        policy: PolicyPlane | None = None,
    ) -> None:
        self.core = core
        self.hub = hub
        self.executor = executor
        self.api = AgentApi(core, hub, executor, policy)
        self._server: grpclib.server.Server | None = None
        self._ctx: ssl.SSLContext | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._bundle_task: asyncio.Task[None] | None = None
        self.port: int | None = None

    def _server_svid(
        self,
    ) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey, dt.datetime]:
        from cryptography.hazmat.primitives import hashes, serialization

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        sid = SpiffeId.parse(f"spiffe://{self.core.trust_domain}{SERVER_PATH}")
        entry = RegistrationEntry(
            id="server", spiffe_id=sid, selectors=(), created_at=self.core.clock.now()
        )
        res = self.core.issue_internal_svid(
            SYSTEM, core_mod.SvidRequest(entry=entry, csr=csr), source="server"
        )
        chain = [x509.load_der_x509_certificate(d) for d in res.chain_der]
        return chain, key, res.not_after

    async def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        chain, key, not_after = await run_blocking(self.executor, self._server_svid)
        bundle_pem = self.core.bundle().to_pem()
        self._ctx = tlsutil.server_context(bundle_pem)
        tlsutil.load_identity(self._ctx, chain, key)
        self._server = grpclib.server.Server([self.api, Health()])
        await self._server.start(host or "127.0.0.1", int(port), ssl=self._ctx, reuse_address=True)
        listener: Any = self._server._server  # grpclib keeps the asyncio.Server privately
        sockets = listener.sockets if listener is not None else []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        self._renew_task = asyncio.create_task(self._renew_loop(not_after))
        self._bundle_task = asyncio.create_task(self._bundle_loop())
        log.info("agent api listening", address=f"{host}:{self.port}")
        return self.port

    async def _renew_loop(self, not_after: dt.datetime) -> None:
        while True:
            now = self.core.clock.now()
            wait = max(5.0, (not_after - now).total_seconds() / 2)
            await asyncio.sleep(wait)
            try:
                chain, key, not_after = await run_blocking(self.executor, self._server_svid)
                assert self._ctx is not None
                tlsutil.load_identity(self._ctx, chain, key)
                log.info("server svid renewed", not_after=not_after.isoformat())
            except TrustdError as exc:
                log.warning("server svid renewal failed; retrying", error=str(exc))
                not_after = now + dt.timedelta(seconds=20)

    async def _bundle_loop(self) -> None:
        """New CAs are trusted for new handshakes as soon as they are in the bundle."""
        seen = self.hub.version("bundle")
        while True:
            seen = await self.hub.wait("bundle", seen, 30.0)
            assert self._ctx is not None
            pem = (await run_blocking(self.executor, self.core.bundle)).to_pem()
            self._ctx.load_verify_locations(cadata=pem.decode())

    async def stop(self) -> None:
        for task in (self._renew_task, self._bundle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


__all__ = ["AgentApi", "AgentApiServer", "GRPCError", "Status"]
