"""``envoy.service.secret.v3.SecretDiscoveryService`` on the agent socket (SPEC §6).

State of the world over ``StreamSecrets``, one answer over ``FetchSecrets``;
``DeltaSecrets`` is answered ``UNIMPLEMENTED``.

Per stream, as Envoy expects:

- the first request (and any request that changes the set of names) is
  answered at once, signing the caller's SVID on demand if needed;
- a request whose ``response_nonce`` is not the last nonce sent is stale and
  ignored entirely;
- a request with the last nonce and ``error_detail`` (or a ``version_info``
  other than the one just sent) is a NACK: logged and counted, and nothing is
  resent until the content really changes;
- changes reach the stream from ``AgentCache`` (it calls ``notify``); the
  stream re-derives its answer and sends only when the version differs.

The version of a response is derived from what it contains (SVID serials,
bundle digests), so an unchanged answer is never sent twice.

Names that resolve to nothing (``trustd.sds.resources``: unknown, malformed,
not entitled, no identity) are left out of the response, as an xDS server
leaves out resources it does not have: the rest of the stream is served and the
client waits for the missing ones (its initial fetch timeout). The stream
re-derives them on every change like the rest, so a name that comes to exist
(a federated bundle, an entry that makes the SPIFFE ID the caller's) is sent
then. Each refused name is logged (warning, the name and reason only) and
counted in ``trustd_agent_sds_unknown_resources_total{reason}`` once per stream
while it stays refused. A stream fails only when every name it asks for is
one the caller may not have or malformed (``Resolution.failure``: nothing
else to serve); ``FetchSecrets`` fails when none of its names resolves.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import structlog
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Stream

from trustd.agent.cache import AgentCache, WorkloadKey, workload_key
from trustd.agent.endpoints import CallerOf, PreEncoded, grpc_errors
from trustd.agent.metrics import AgentMetrics
from trustd.sds.resources import (
    REASONS,
    SECRET_TYPE_URL,
    BundleResource,
    Refusal,
    Resolution,
    SecretBuilder,
    SvidResource,
    resolve,
    resource_version,
    response_version,
)
from trustd.selectors import Caller

log = structlog.get_logger(__name__)

SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"

SdsStream = Stream[DiscoveryRequest, DiscoveryResponse]


class _StreamState:
    """One open StreamSecrets: what the reader queued and whether the cache said "changed"."""

    __slots__ = ("acked", "changed", "ended", "error", "requests", "waiter")

    def __init__(self) -> None:
        self.changed = False  # the cache notified since the last look
        self.ended = False  # the client half-closed or went away
        self.error: BaseException | None = None  # why reading stopped, if not a clean end
        self.requests: list[DiscoveryRequest] = []  # received, not yet handled
        self.waiter: asyncio.Future[None] | None = None  # set while the stream sleeps
        # (nonce, version, names) of the last response sent: a request that repeats them
        # is a plain ACK and is dropped by the reader without waking the stream.
        self.acked: tuple[str, str, frozenset[str]] | None = None

    def notify(self) -> None:  # called by AgentCache
        self.changed = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def add_request(self, req: DiscoveryRequest) -> None:
        acked = self.acked
        if (
            acked is not None
            and not self.requests
            and req.response_nonce == acked[0]
            and req.version_info == acked[1]
            and not req.HasField("error_detail")
            and req.type_url in ("", SECRET_TYPE_URL)
            and frozenset(req.resource_names) == acked[2]
        ):
            return  # a plain ACK of the last response: nothing to do
        self.requests.append(req)
        self._wake()

    def end(self, error: BaseException | None) -> None:
        self.ended = True
        self.error = error
        self._wake()

    async def wait(self) -> None:
        while not (self.changed or self.requests or self.ended):
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class _Answer:
    """What a set of names resolves to for one workload at one cache generation."""

    __slots__ = ("_body", "failure", "refused", "resources", "svids", "version", "versions")

    def __init__(
        self,
        plan: Resolution,
        versions: list[str],
        svids: dict[str, Any],
        version: str,
    ) -> None:
        self.resources = plan.resources  # resolved names, in request order
        self.refused = plan.refused  # names left out, in request order
        self.failure = plan.failure()  # set: a stream asking for these names fails with it
        self.versions = versions  # per-resource version strings
        self.svids = svids  # entry id -> Svid for the SVID resources
        self.version = version  # version_info of a response carrying these resources
        self._body: bytes | None = None  # the serialized response but for its nonce

    def body(self, builder: SecretBuilder) -> bytes:
        if self._body is None:
            self._body = DiscoveryResponse(
                version_info=self.version,
                resources=[
                    builder.packed(r, v, self.svids)
                    for r, v in zip(self.resources, self.versions, strict=True)
                ],
                type_url=SECRET_TYPE_URL,
            ).SerializeToString()
        return self._body


def _with_nonce(body: bytes, nonce: str) -> PreEncoded:
    """Append ``nonce`` (field 5) to a serialized DiscoveryResponse: protobuf merges fields
    of concatenated encodings, so this is the same as setting it before serializing."""
    raw = nonce.encode()
    n = len(raw)
    length = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            length.append(byte | 0x80)
        else:
            length.append(byte)
            break
    return PreEncoded(body + b"\x2a" + bytes(length) + raw)


class SecretDiscoveryService:
    def __init__(self, *, cache: AgentCache, caller_of: CallerOf, metrics: AgentMetrics) -> None:
        self._cache = cache
        self._caller_of = caller_of
        self._metrics = metrics
        self._builder = SecretBuilder(cache)
        self._nonces = itertools.count(1)
        self._pushes = metrics.pushes.labels(api="sds")
        self._refusals = {r: metrics.sds_unknown_resources.labels(reason=r) for r in REASONS}
        # One computed answer per (workload, names) and cache generation: after a bundle
        # change, thousands of identical streams share a single computation.
        self._answers: dict[tuple[WorkloadKey, tuple[str, ...]], _Answer] = {}
        self._answers_generation = -1

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/{SERVICE}/StreamSecrets": Handler(
                self.stream_secrets, Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            ),
            f"/{SERVICE}/FetchSecrets": Handler(
                self.fetch_secrets, Cardinality.UNARY_UNARY, DiscoveryRequest, DiscoveryResponse
            ),
            f"/{SERVICE}/DeltaSecrets": Handler(
                self.delta_secrets,
                Cardinality.STREAM_STREAM,
                DeltaDiscoveryRequest,
                DeltaDiscoveryResponse,
            ),
        }

    # ------------------------------------------------------------------ building answers

    def _plan(self, key: WorkloadKey, names: list[str]) -> Resolution:
        return resolve(self._cache, self._cache.matching_entries(key), names)

    async def _versions(
        self, key: WorkloadKey, resources: list[SvidResource | BundleResource]
    ) -> tuple[str, list[str], dict[str, Any]]:
        wanted = [r.entry for r in resources if isinstance(r, SvidResource)]
        svids: dict[str, Any] = {}
        if wanted:
            for entry, svid in await self._cache.identities(key, entries=wanted):
                svids[entry.id] = svid
        versions = [resource_version(self._cache, r, svids) for r in resources]
        return response_version(versions), versions, svids

    async def _answer(self, key: WorkloadKey, names: list[str]) -> _Answer:
        cache = self._cache
        if self._answers_generation != cache.generation:
            self._answers.clear()
            self._answers_generation = cache.generation
        memo_key = (key, tuple(names))
        hit = self._answers.get(memo_key)
        if hit is not None:
            return hit
        generation = cache.generation
        plan = self._plan(key, names)
        version, versions, svids = await self._versions(key, plan.resources)
        answer = _Answer(plan, versions, svids, version)
        if cache.generation == generation:  # nothing changed while signing
            if len(self._answers) >= 10_000:
                self._answers.clear()
            self._answers[memo_key] = answer
        return answer

    def _report(
        self, refused: list[Refusal], reported: frozenset[str], caller: Caller
    ) -> frozenset[str]:
        """Log and count the refused names not in ``reported``; returns the names refused now."""
        if not refused:
            return frozenset()
        fresh = False
        for r in refused:
            if r.name in reported:
                continue
            fresh = True
            self._refusals[r.reason].inc()
            log.warning(
                "sds resource not served",
                uid=caller.uid,
                pid=caller.pid,
                name=r.name[:200],
                reason=r.reason,
                detail=r.message,
            )
        if not fresh and len(reported) == len(refused):
            return reported
        return frozenset(r.name for r in refused)

    @staticmethod
    def _check_type(req: DiscoveryRequest) -> None:
        if req.type_url and req.type_url != SECRET_TYPE_URL:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"type_url must be {SECRET_TYPE_URL}",
            )

    # ------------------------------------------------------------------ RPCs

    async def fetch_secrets(self, stream: SdsStream) -> None:
        req = await stream.recv_message()
        assert req is not None
        self._check_type(req)
        with grpc_errors():
            caller = self._caller_of(stream)
            self._cache.require_ready()
            answer = await self._answer(workload_key(caller), list(req.resource_names))
            self._report(answer.refused, frozenset(), caller)
            if answer.refused and not answer.resources:
                raise answer.refused[0].error()
        await stream.send_message(PreEncoded(answer.body(self._builder)))

    async def delta_secrets(
        self, stream: Stream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]
    ) -> None:
        # Take the first request first, so the client's write completes before the answer.
        await stream.recv_message()
        raise GRPCError(Status.UNIMPLEMENTED, "DeltaSecrets is not served; use StreamSecrets")

    async def stream_secrets(self, stream: SdsStream) -> None:
        with grpc_errors():
            caller = self._caller_of(stream)
        key = workload_key(caller)
        state = _StreamState()
        reader = asyncio.ensure_future(self._read(stream, state))
        self._cache.subscribe(key, state)
        self._metrics.sds_streams.inc()
        try:
            with grpc_errors():
                await self._serve(stream, state, key, caller)
        except (StreamTerminatedError, ConnectionError):
            pass  # the client went away mid-push: nothing to answer
        finally:
            self._metrics.sds_streams.dec()
            self._cache.unsubscribe(key, state)
            reader.cancel()

    @staticmethod
    async def _read(stream: SdsStream, state: _StreamState) -> None:
        try:
            async for req in stream:
                state.add_request(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reset, connection lost, bad message
            state.end(exc)
        else:
            state.end(None)

    def _take_requests(
        self,
        state: _StreamState,
        names: list[str] | None,
        last_nonce: str,
        last_version: str | None,
        caller: Caller,
    ) -> tuple[list[str] | None, bool]:
        """Handle queued requests in order; returns the names to serve and whether they
        changed. (A method of its own, so no request outlives it in the stream's frame.)"""
        send = False
        requests, state.requests = state.requests, []
        for req in requests:
            self._check_type(req)
            if last_nonce:
                if req.response_nonce != last_nonce:
                    log.debug(
                        "sds stale nonce ignored",
                        pid=caller.pid,
                        nonce=req.response_nonce,
                        expected=last_nonce,
                    )
                    continue
                if req.HasField("error_detail") or req.version_info != last_version:
                    self._metrics.sds_nacks.inc()
                    log.warning(
                        "sds response rejected by client",
                        uid=caller.uid,
                        pid=caller.pid,
                        names=list(req.resource_names),
                        rejected_version=last_version,
                        client_version=req.version_info,
                        error=req.error_detail.message,
                    )
            new_names = list(req.resource_names)
            if names is None or set(new_names) != set(names):
                names = new_names
                send = True
        return names, send

    async def _serve(
        self, stream: SdsStream, state: _StreamState, key: WorkloadKey, caller: Caller
    ) -> None:
        names: list[str] | None = None  # None until the first request
        last_nonce = ""
        last_version: str | None = None
        reported: frozenset[str] = frozenset()  # names refused, logged and counted already
        while True:
            await state.wait()
            names, send = self._take_requests(state, names, last_nonce, last_version, caller)
            ended = state.ended
            changed, state.changed = state.changed, False
            if names is not None and (send or (changed and not ended)):
                if not self._cache.ready:
                    await self._cache.wait_ready()
                answer = await self._answer(key, names)
                reported = self._report(answer.refused, reported, caller)
                if answer.failure is not None:
                    raise answer.failure.error()
                if send or answer.version != last_version:
                    nonce = str(next(self._nonces))
                    await stream.send_message(_with_nonce(answer.body(self._builder), nonce))
                    last_nonce, last_version = nonce, answer.version
                    state.acked = (nonce, answer.version, frozenset(names))
                    self._pushes.inc()
            if ended:
                # The client half-closed (its last request was still answered) or went away.
                if state.error is not None:
                    log.debug(
                        "sds stream ended by client",
                        pid=caller.pid,
                        error=type(state.error).__name__,
                    )
                return
