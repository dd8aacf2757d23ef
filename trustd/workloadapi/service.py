"""The SPIFFE Workload API (``SpiffeWorkloadAPI``) on the agent socket (SPEC §7).

- Every call must carry the metadata ``workload.spiffe.io: true``; without it
  the call is refused with ``INVALID_ARGUMENT`` (clients do not retry that).
- ``UNAVAILABLE`` until the agent's first sync; ``PERMISSION_DENIED`` when no
  registration entry matches the caller.
- ``FetchX509SVID`` streams the caller's complete set of SVIDs, again each time
  one of them or a bundle changes; ``FetchX509Bundles`` streams the bundles.
- The JWT calls are answered ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from spiffe._proto import workload_pb2

from trustd.agent.cache import AgentCache, WorkloadKey, workload_key
from trustd.agent.endpoints import CallerOf, grpc_errors
from trustd.agent.keys import Svid
from trustd.agent.metrics import AgentMetrics
from trustd.agent.notify import Notifier
from trustd.entries import RegistrationEntry

log = structlog.get_logger(__name__)

SERVICE = "SpiffeWorkloadAPI"
HEADER = "workload.spiffe.io"


def _check_header(stream: Stream[Any, Any]) -> None:
    values = stream.metadata.getall(HEADER, []) if stream.metadata is not None else []
    if "true" not in values:
        raise GRPCError(
            Status.INVALID_ARGUMENT,
            "security header missing from request; send metadata 'workload.spiffe.io: true'",
        )


class WorkloadApiService:
    def __init__(self, *, cache: AgentCache, caller_of: CallerOf, metrics: AgentMetrics) -> None:
        self._cache = cache
        self._caller_of = caller_of
        self._metrics = metrics

    def __mapping__(self) -> dict[str, Handler]:
        p = f"/{SERVICE}/"
        return {
            p + "FetchX509SVID": Handler(
                self.fetch_x509_svid,
                Cardinality.UNARY_STREAM,
                workload_pb2.X509SVIDRequest,
                workload_pb2.X509SVIDResponse,
            ),
            p + "FetchX509Bundles": Handler(
                self.fetch_x509_bundles,
                Cardinality.UNARY_STREAM,
                workload_pb2.X509BundlesRequest,
                workload_pb2.X509BundlesResponse,
            ),
            p + "FetchJWTSVID": Handler(
                self.unimplemented,
                Cardinality.UNARY_UNARY,
                workload_pb2.JWTSVIDRequest,
                workload_pb2.JWTSVIDResponse,
            ),
            p + "FetchJWTBundles": Handler(
                self.unimplemented,
                Cardinality.UNARY_STREAM,
                workload_pb2.JWTBundlesRequest,
                workload_pb2.JWTBundlesResponse,
            ),
            p + "ValidateJWTSVID": Handler(
                self.unimplemented,
                Cardinality.UNARY_UNARY,
                workload_pb2.ValidateJWTSVIDRequest,
                workload_pb2.ValidateJWTSVIDResponse,
            ),
        }

    async def unimplemented(self, stream: Stream[Any, Any]) -> None:
        _check_header(stream)
        raise GRPCError(Status.UNIMPLEMENTED, "jwt-svids are not served by this agent yet")

    def _bundle_der(self, td: Any) -> bytes:
        b = self._cache.bundles.get(td)
        return b"".join(b.to_der_list()) if b is not None else b""

    def _svid_response(
        self, idents: list[tuple[RegistrationEntry, Svid]]
    ) -> workload_pb2.X509SVIDResponse:
        own_tds = {svid.spiffe_id.trust_domain for _, svid in idents}
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=str(svid.spiffe_id),
                    x509_svid=svid.chain_der,
                    x509_svid_key=svid.key_pkcs8_der,
                    bundle=self._bundle_der(svid.spiffe_id.trust_domain),
                )
                for _, svid in idents
            ],
            federated_bundles={
                str(td.id): self._bundle_der(td) for td in self._cache.bundles if td not in own_tds
            },
        )

    def _bundles_version(self) -> str:
        cache = self._cache
        return ",".join(f"{td}={cache.bundle_version(td)}" for td in sorted(cache.bundles))

    async def _open(self, stream: Stream[Any, Any]) -> WorkloadKey:
        _check_header(stream)
        await stream.recv_message()
        with grpc_errors():
            caller = self._caller_of(stream)
            self._cache.require_ready()
        return workload_key(caller)

    async def fetch_x509_svid(
        self, stream: Stream[workload_pb2.X509SVIDRequest, workload_pb2.X509SVIDResponse]
    ) -> None:
        key = await self._open(stream)
        notifier = Notifier()
        self._cache.subscribe(key, notifier)
        self._metrics.workloadapi_streams.inc()
        try:
            last = ""
            while True:
                with grpc_errors():
                    idents = await self._cache.identities(key)
                version = hashlib.sha256(
                    (
                        ";".join(f"{e.id}:{s.serial:x}" for e, s in idents)
                        + "|"
                        + self._bundles_version()
                    ).encode()
                ).hexdigest()
                if version != last:
                    await stream.send_message(self._svid_response(idents))
                    self._metrics.pushes.labels(api="workloadapi").inc()
                    last = version
                await notifier.wait()
        finally:
            self._metrics.workloadapi_streams.dec()
            self._cache.unsubscribe(key, notifier)

    async def fetch_x509_bundles(
        self, stream: Stream[workload_pb2.X509BundlesRequest, workload_pb2.X509BundlesResponse]
    ) -> None:
        key = await self._open(stream)
        notifier = Notifier()
        self._cache.subscribe(key, notifier)
        self._metrics.workloadapi_streams.inc()
        try:
            last = ""
            while True:
                if not self._cache.matching_entries(key):
                    raise GRPCError(
                        Status.PERMISSION_DENIED,
                        "no registration entry matches this process; create one with "
                        "'trustd entry create'",
                    )
                version = self._bundles_version()
                if version != last:
                    await stream.send_message(
                        workload_pb2.X509BundlesResponse(
                            bundles={str(td.id): self._bundle_der(td) for td in self._cache.bundles}
                        )
                    )
                    self._metrics.pushes.labels(api="workloadapi").inc()
                    last = version
                await notifier.wait()
        finally:
            self._metrics.workloadapi_streams.dec()
            self._cache.unsubscribe(key, notifier)
