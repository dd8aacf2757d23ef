"""Admin API methods for federation with other trust domains, on the same admin service."""

from __future__ import annotations

from typing import Any

from grpclib.server import Stream

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.convert import bundle_message, optional_timestamp, timestamp
from trustd.api.edge import Edge, unary
from trustd.audit.events import Actor
from trustd.errors import FailedPreconditionError, InvalidArgumentError
from trustd.federation.model import CreateFederation, Relationship
from trustd.federation.relationships import FederationRegistry


def federation_message(r: Relationship) -> pb.Federation:
    return pb.Federation(
        trust_domain=str(r.trust_domain),
        endpoint_url=r.endpoint_url,
        profile=r.profile,
        endpoint_spiffe_id=r.endpoint_spiffe_id,
        bundle=bundle_message(r.bundle),
        refreshed_at=optional_timestamp(r.refreshed_at),
        next_refresh_at=timestamp(r.next_refresh_at),
        last_error=r.last_error,
        created_at=timestamp(r.created_at),
    )


def _trust_domain(req: pb.FederationRequest | pb.CreateFederationRequest) -> str:
    if not req.trust_domain:
        raise InvalidArgumentError("trust_domain is required")
    return req.trust_domain


class FederationAdmin(Edge):
    federation: FederationRegistry | None

    def actor(self, stream: Stream[Any, Any]) -> Actor:
        raise NotImplementedError

    def _federations(self) -> FederationRegistry:
        if self.federation is None:
            raise FailedPreconditionError("federation is not available on this server")
        return self.federation

    @unary
    async def FederationCreate(
        self, s: Stream[Any, Any], req: pb.CreateFederationRequest
    ) -> pb.Federation:
        request = CreateFederation(
            trust_domain=_trust_domain(req),
            endpoint_url=req.endpoint_url,
            profile=req.profile,
            endpoint_spiffe_id=req.endpoint_spiffe_id,
            bundle=req.bundle,
        )
        return federation_message(
            await self.run(self._federations().create, self.actor(s), request)
        )

    @unary
    async def FederationList(
        self, s: Stream[Any, Any], req: pb.Empty
    ) -> pb.ListFederationsResponse:
        rels = await self.run(self._federations().all)
        return pb.ListFederationsResponse(federations=[federation_message(r) for r in rels])

    @unary
    async def FederationShow(self, s: Stream[Any, Any], req: pb.FederationRequest) -> pb.Federation:
        return federation_message(await self.run(self._federations().get, _trust_domain(req)))

    @unary
    async def FederationDelete(
        self, s: Stream[Any, Any], req: pb.FederationRequest
    ) -> pb.Federation:
        rel = await self.run(self._federations().delete, self.actor(s), _trust_domain(req))
        return federation_message(rel)

    @unary
    async def FederationRefresh(
        self, s: Stream[Any, Any], req: pb.FederationRequest
    ) -> pb.Federation:
        rel = await self.run(self._federations().refresh_now, self.actor(s), _trust_domain(req))
        return federation_message(rel)
