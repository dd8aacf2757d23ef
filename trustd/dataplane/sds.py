"""An IdentitySource that speaks Envoy SDS v3 to the node agent, as Envoy does.

One ``StreamSecrets`` stream over the agent's Unix socket asks for two
resources: ``default`` (our SVID: ``tls_certificate`` with the PEM chain and
PKCS#8 key inline) and ``ROOTCA`` (our trust domain's bundle:
``validation_context.trusted_ca`` inline). Each response is checked before it
is used; like Envoy the client then

- ACKs: the next request carries the response's ``version_info`` and nonce;
- NACKs a response it cannot use: the nonce, the *previous* accepted
  ``version_info`` and an ``error_detail``, keeping the previous identity;
- never re-requests after a NACK: it waits for the server to push again;
- reconnects with jittered backoff when the stream breaks, keeping the
  identity it has (the proxy goes on serving with it).

The key stays in memory; it is never logged, and error details never contain it.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from trustd.dataplane.errors import InvalidIdentityError
from trustd.dataplane.identity import Identity, StaticIdentitySource
from trustd.spiffeid import TrustDomain

log = structlog.get_logger(__name__)

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
INVALID_ARGUMENT = 3  # google.rpc.Code


def _spiffe_validator_bundles(vc: Any) -> dict[TrustDomain, bytes]:
    """Each trust domain's bundle of a SPIFFE validator config (SDS ``ALL``)."""
    cfg = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
    if not vc.custom_validator_config.typed_config.Unpack(cfg):
        return {}
    return {TrustDomain.parse(t.name): _inline(t.trust_bundle) or b"" for t in cfg.trust_domains}


def _inline(source: Any) -> bytes | None:
    if source.HasField("inline_bytes"):
        return bytes(source.inline_bytes)
    if source.HasField("inline_string"):
        return str(source.inline_string).encode()
    return None


class SdsIdentitySource(StaticIdentitySource):
    """SVID and bundle from the agent's SDS server (a grpcio client)."""

    def __init__(
        self,
        *,
        socket_path: str,
        node_id: str,
        cluster: str = "trustd-proxy",
        svid_name: str = "default",
        bundle_name: str = "ROOTCA",
        backoff_max: float = 10.0,
    ) -> None:
        super().__init__()
        self._target = "unix:" + os.path.abspath(socket_path)
        self._node = base_pb2.Node(id=node_id, cluster=cluster)
        self._names = [svid_name, bundle_name]
        self._svid_name = svid_name
        self._bundle_name = bundle_name
        self._backoff_max = backoff_max
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self.accepted_version = ""  # the version_info of the last response we ACKed
        self.acks = 0  # responses accepted
        self.nacks = 0  # responses refused
        self.streams = 0  # streams opened (1 + reconnects)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sds-client")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _request(
        self, *, version: str, nonce: str, error: str | None = None
    ) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(
            version_info=version,
            node=self._node,
            resource_names=self._names,
            type_url=SECRET_TYPE_URL,
            response_nonce=nonce,
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return req

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._stream()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "sds stream failed",
                    target=self._target,
                    code=exc.code().name,
                    detail=exc.details(),
                )
            except Exception as exc:
                log.warning("sds stream failed", target=self._target, error=str(exc))
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(self._backoff_max, delay * 2)

    async def _stream(self) -> None:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(self._channel)
        call = stub.StreamSecrets()
        self.streams += 1
        await call.write(self._request(version=self.accepted_version, nonce=""))
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                log.info("sds stream closed by the agent", target=self._target)
                return
            try:
                ident = self._apply(resp)
            except InvalidIdentityError as exc:
                self.nacks += 1
                log.error(
                    "sds response rejected",
                    version=resp.version_info,
                    nonce=resp.nonce,
                    error=str(exc),
                )
                await call.write(
                    self._request(version=self.accepted_version, nonce=resp.nonce, error=str(exc))
                )
                continue
            self.accepted_version = resp.version_info
            self.acks += 1
            if ident is not None and (
                self.current() is None or ident.version != self.current_version
            ):
                self.set(ident)  # in use before the ACK says so
            await call.write(self._request(version=resp.version_info, nonce=resp.nonce))

    @property
    def current_version(self) -> str | None:
        cur = self.current()
        return cur.version if cur is not None else None

    def _apply(self, resp: discovery_pb2.DiscoveryResponse) -> Identity | None:
        """Check a response; return the identity it makes (None: still incomplete)."""
        if resp.type_url and resp.type_url != SECRET_TYPE_URL:
            raise InvalidIdentityError(f"unexpected type_url {resp.type_url!r}")
        incoming: dict[str, secret_pb2.Secret] = {}
        for res in resp.resources:
            secret = secret_pb2.Secret()
            if not res.Unpack(secret):
                raise InvalidIdentityError("a resource is not an envoy Secret")
            if secret.name not in self._names:
                raise InvalidIdentityError(f"unexpected secret {secret.name!r}")
            incoming[secret.name] = secret
        merged = {**self._secrets, **incoming}
        svid = merged.get(self._svid_name)
        bundle = merged.get(self._bundle_name)
        ident: Identity | None = None
        if svid is not None:
            if not svid.HasField("tls_certificate"):
                raise InvalidIdentityError(f"secret {self._svid_name!r} has no tls_certificate")
            chain = _inline(svid.tls_certificate.certificate_chain)
            key = _inline(svid.tls_certificate.private_key)
            if not chain or not key:
                raise InvalidIdentityError(
                    f"secret {self._svid_name!r} must carry its chain and key inline"
                )
            bundles: dict[TrustDomain, bytes] = {}
            ident = Identity.from_pem(cert_chain_pem=chain, private_key_pem=key)
            if bundle is not None:
                if not bundle.HasField("validation_context"):
                    raise InvalidIdentityError(
                        f"secret {self._bundle_name!r} has no validation_context"
                    )
                bundles.update(_spiffe_validator_bundles(bundle.validation_context))  # ALL
                pem = _inline(bundle.validation_context.trusted_ca)
                if not pem and not bundles:
                    raise InvalidIdentityError(
                        f"secret {self._bundle_name!r} must carry trusted_ca inline"
                    )
                bundles.update({ident.spiffe_id.trust_domain: pem} if pem else {})
                ident = ident.with_bundles(bundles)
            else:
                ident = None  # no bundle yet: nothing could be verified
        self._secrets = merged
        return ident
