"""The SDS client against a fake SDS server on a Unix socket: fetch, ACK, NACK, rotation, reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from dataplane_helpers import run
from dataplane_testing import IssuedSvid, ThrowawayCA
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from trustd.dataplane.identity import Identity
from trustd.dataplane.sds import SECRET_TYPE_URL, SdsIdentitySource

ME = "spiffe://trustd.local/ns/shop/sa/frontend"


class FakeSds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Records every request; sends what the test pushes."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.pushes: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()

    async def StreamSecrets(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async def read() -> None:
            async for req in request_iterator:
                await self.requests.put(req)

        reader = asyncio.create_task(read())
        try:
            while (resp := await self.pushes.get()) is not None:
                yield resp
        finally:
            reader.cancel()


async def serve(sock: Path, fake: FakeSds) -> Any:
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    return server


def response(
    version: str,
    nonce: str,
    *,
    svid: IssuedSvid | None,
    bundle: bytes | None,
    key: bytes | None = None,
) -> discovery_pb2.DiscoveryResponse:
    resources = []
    if svid is not None:
        s = secret_pb2.Secret(
            name="default",
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain={"inline_bytes": svid.chain_pem},
                private_key={"inline_bytes": key if key is not None else svid.key_pem},
            ),
        )
        a = any_pb2.Any()
        a.Pack(s)
        resources.append(a)
    if bundle is not None:
        s = secret_pb2.Secret(
            name="ROOTCA",
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca={"inline_bytes": bundle}
            ),
        )
        a = any_pb2.Any()
        a.Pack(s)
        resources.append(a)
    return discovery_pb2.DiscoveryResponse(
        version_info=version, nonce=nonce, type_url=SECRET_TYPE_URL, resources=resources
    )


async def next_request(fake: FakeSds) -> discovery_pb2.DiscoveryRequest:
    async with asyncio.timeout(10):
        return await fake.requests.get()


@run
async def test_sds_client_fetches_acks_nacks_rotates_and_reconnects(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    sock = tmp_path / "agent.sock"
    fake = FakeSds()
    server = await serve(sock, fake)
    source = SdsIdentitySource(socket_path=str(sock), node_id="frontend-1")
    seen: list[Identity] = []
    source.subscribe(seen.append)
    await source.start()
    try:
        first = await next_request(fake)
        assert first.node.id == "frontend-1"
        assert list(first.resource_names) == ["default", "ROOTCA"]
        assert first.type_url == SECRET_TYPE_URL
        assert (first.version_info, first.response_nonce) == ("", "")

        svid1 = ca.issue(ME)
        await fake.pushes.put(response("v1", "n1", svid=svid1, bundle=ca.bundle_pem))
        ack = await next_request(fake)
        assert (ack.version_info, ack.response_nonce) == ("v1", "n1")
        assert not ack.HasField("error_detail")
        assert seen and str(seen[-1].spiffe_id) == ME
        assert seen[-1].serial == svid1.cert.serial_number

        # A key that does not match the certificate: NACK, keep the identity, do not re-ask.
        other = ca.issue(ME)
        await fake.pushes.put(
            response("v2", "n2", svid=other, bundle=ca.bundle_pem, key=svid1.key_pem)
        )
        nack = await next_request(fake)
        assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
        assert nack.HasField("error_detail") and "does not match" in nack.error_detail.message
        assert "PRIVATE KEY" not in nack.error_detail.message
        assert source.current() is not None and source.current().serial == svid1.cert.serial_number  # type: ignore[union-attr]
        assert len(seen) == 1

        # The next push is the next thing on the stream: no request was resent after the NACK.
        svid3 = ca.issue(ME)
        await fake.pushes.put(
            response("v3", "n3", svid=svid3, bundle=None)
        )  # SVID only: bundle kept
        ack3 = await next_request(fake)
        assert (ack3.version_info, ack3.response_nonce, ack3.HasField("error_detail")) == (
            "v3",
            "n3",
            False,
        )
        assert seen[-1].serial == svid3.cert.serial_number
        assert seen[-1].bundles  # still trusting the bundle of v1
        assert (source.acks, source.nacks) == (2, 1)

        # The agent restarts: the client reconnects and says which version it holds.
        await fake.pushes.put(None)
        await server.stop(None)
        fake2 = FakeSds()
        server = await serve(sock, fake2)
        again = await next_request(fake2)
        assert again.version_info == "v3" and again.response_nonce == ""
        assert source.current() is not None  # kept serving with what it had
        assert source.streams >= 2
    finally:
        await source.close()
        await server.stop(None)


@run
async def test_a_response_without_a_bundle_gives_no_identity_yet(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    sock = tmp_path / "agent.sock"
    fake = FakeSds()
    server = await serve(sock, fake)
    source = SdsIdentitySource(socket_path=str(sock), node_id="p")
    await source.start()
    try:
        await next_request(fake)
        await fake.pushes.put(response("v1", "n1", svid=ca.issue(ME), bundle=None))
        ack = await next_request(fake)
        assert ack.version_info == "v1"
        assert source.current() is None  # nothing could be verified without a bundle
        await fake.pushes.put(response("v2", "n2", svid=None, bundle=ca.bundle_pem))
        await next_request(fake)
        assert source.current() is not None and str(source.current().spiffe_id) == ME  # type: ignore[union-attr]
    finally:
        await source.close()
        await server.stop(None)
