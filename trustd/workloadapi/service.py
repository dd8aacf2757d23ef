"""The SPIFFE Workload API (``SpiffeWorkloadAPI``) on the agent socket (SPEC §7).

- Every call must carry the metadata ``workload.spiffe.io: true``; without it
  the call is refused with ``INVALID_ARGUMENT`` (clients do not retry that).
- ``UNAVAILABLE`` until the agent's first sync; ``PERMISSION_DENIED`` when no
  registration entry matches the caller.
- ``FetchX509SVID`` streams the caller's complete set of SVIDs, again each time
  one of them or a bundle changes; ``FetchX509Bundles`` streams the bundles.
  Bundles are the own trust domain's and those of the foreign trust domains the
  caller's entries federate with (``federated_bundles`` of ``FetchX509SVID``);
  the JWT bundles and ``ValidateJWTSVID`` see the same set.
- ``FetchJWTSVID`` gives a JWT-SVID per SPIFFE ID of the caller (or for the one
  it names) for the audience it names, which is required (``INVALID_ARGUMENT``
  without). ``FetchJWTBundles`` streams ``{trust domain ID: JWK set}`` of the
  JWT signing keys, again each time they change (rotation). ``ValidateJWTSVID``
  checks a token against those keys and answers its SPIFFE ID and claims, or
  ``INVALID_ARGUMENT`` saying why it is not valid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import structlog
from google.protobuf import struct_pb2
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from spiffe._proto import workload_pb2

from trustd.agent.cache import AgentCache, WorkloadKey, workload_key
from trustd.agent.endpoints import CallerOf, grpc_errors
from trustd.agent.keys import Svid
from trustd.agent.metrics import AgentMetrics
from trustd.agent.notify import Notifier
from trustd.bundle import Bundle
from trustd.ca.jwt import validate_jwt_svid
from trustd.entries import RegistrationEntry
from trustd.spiffeid import SpiffeId, TrustDomain

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
                self.fetch_jwt_svid,
                Cardinality.UNARY_UNARY,
                workload_pb2.JWTSVIDRequest,
                workload_pb2.JWTSVIDResponse,
            ),
            p + "FetchJWTBundles": Handler(
                self.fetch_jwt_bundles,
                Cardinality.UNARY_STREAM,
                workload_pb2.JWTBundlesRequest,
                workload_pb2.JWTBundlesResponse,
            ),
            p + "ValidateJWTSVID": Handler(
                self.validate_jwt_svid,
                Cardinality.UNARY_UNARY,
                workload_pb2.ValidateJWTSVIDRequest,
                workload_pb2.ValidateJWTSVIDResponse,
            ),
        }

    def _bundle_der(self, td: Any) -> bytes:
        b = self._cache.bundles.get(td)
        return b"".join(b.to_der_list()) if b is not None else b""

    def _visible(self, key: WorkloadKey) -> dict[TrustDomain, Bundle]:
        """The bundles this caller may see (own and federated with, by its entries)."""
        return self._cache.bundles_for(self._cache.matching_entries(key))

    def _svid_response(
        self, idents: list[tuple[RegistrationEntry, Svid]]
    ) -> workload_pb2.X509SVIDResponse:
        own_tds = {svid.spiffe_id.trust_domain for _, svid in idents}
        visible = self._cache.bundles_for(e for e, _ in idents)
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
                str(td.id): self._bundle_der(td) for td in visible if td not in own_tds
            },
        )

    def _bundles_version(self, key: WorkloadKey) -> str:
        cache = self._cache
        return ",".join(f"{td}={cache.bundle_version(td)}" for td in sorted(self._visible(key)))

    async def _open(self, stream: Stream[Any, Any]) -> WorkloadKey:
        key, _ = await self._open_with_request(stream)
        return key

    async def _open_with_request(self, stream: Stream[Any, Any]) -> tuple[WorkloadKey, Any]:
        _check_header(stream)
        request = await stream.recv_message()
        with grpc_errors():
            caller = self._caller_of(stream)
            self._cache.require_ready()
        return workload_key(caller), request

    def _require_identity(self, key: WorkloadKey) -> None:
        if not self._cache.matching_entries(key):
            raise GRPCError(
                Status.PERMISSION_DENIED,
                "no registration entry matches this process; create one with 'trustd entry create'",
            )

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
                        + self._bundles_version(key)
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
        await self._push_bundles(
            stream,
            self._bundles_version,
            lambda key: workload_pb2.X509BundlesResponse(
                bundles={str(td.id): self._bundle_der(td) for td in self._visible(key)}
            ),
        )

    async def _push_bundles(
        self,
        stream: Stream[Any, Any],
        version_of: Callable[[WorkloadKey], str],
        response: Callable[[WorkloadKey], Any],
    ) -> None:
        """A bundles stream (X.509 or JWT): the first answer, then one per version change."""
        key = await self._open(stream)
        notifier = Notifier()
        self._cache.subscribe(key, notifier)
        self._metrics.workloadapi_streams.inc()
        try:
            last = ""
            while True:
                self._require_identity(key)
                version = version_of(key)
                if version != last:
                    await stream.send_message(response(key))
                    self._metrics.pushes.labels(api="workloadapi").inc()
                    last = version
                await notifier.wait()
        finally:
            self._metrics.workloadapi_streams.dec()
            self._cache.unsubscribe(key, notifier)

    # ------------------------------------------------------------------ JWT-SVID profile

    async def fetch_jwt_svid(
        self, stream: Stream[workload_pb2.JWTSVIDRequest, workload_pb2.JWTSVIDResponse]
    ) -> None:
        key, request = await self._open_with_request(stream)
        audience = list(request.audience) if request is not None else []
        if not audience:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "audience is required: name the service the jwt-svid is for",
            )
        with grpc_errors():
            wanted = SpiffeId.parse(request.spiffe_id) if request.spiffe_id else None
            svids = await self._cache.jwt_svids(key, audience, spiffe_id=wanted)
        await stream.send_message(
            workload_pb2.JWTSVIDResponse(
                svids=[
                    workload_pb2.JWTSVID(spiffe_id=str(s.spiffe_id), svid=s.token) for s in svids
                ]
            )
        )

    def _jwt_bundles_version(self, key: WorkloadKey) -> str:
        cache = self._cache
        visible = sorted(self._visible(key))
        return ",".join(f"{td}={cache.jwt_bundle_version(td)}" for td in visible)

    async def fetch_jwt_bundles(
        self, stream: Stream[workload_pb2.JWTBundlesRequest, workload_pb2.JWTBundlesResponse]
    ) -> None:
        await self._push_bundles(
            stream,
            self._jwt_bundles_version,
            lambda key: workload_pb2.JWTBundlesResponse(
                bundles={str(td.id): b.to_jwks() for td, b in self._visible(key).items()}
            ),
        )

    async def validate_jwt_svid(
        self,
        stream: Stream[workload_pb2.ValidateJWTSVIDRequest, workload_pb2.ValidateJWTSVIDResponse],
    ) -> None:
        key, request = await self._open_with_request(stream)
        if request is None or not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience is required")
        if not request.svid:
            raise GRPCError(Status.INVALID_ARGUMENT, "svid is required: the jwt-svid to validate")
        self._require_identity(key)
        with grpc_errors():
            found = validate_jwt_svid(
                request.svid,
                request.audience,
                bundles=self._visible(key),
                now=self._cache.now(),
            )
        claims = struct_pb2.Struct()
        claims.update(found.claims)
        log.debug("jwt-svid validated", spiffe_id=str(found.spiffe_id), kid=found.key_id)
        await stream.send_message(
            workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(found.spiffe_id), claims=claims)
        )
