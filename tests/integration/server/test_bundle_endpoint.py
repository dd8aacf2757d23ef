"""The bundle endpoint of a real TrustdServer, in both profiles, fetched as a federated
peer fetches it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from dataplane_testing import ThrowawayCA

from trustd.config import load_server_config
from trustd.federation.check import parse_bundle
from trustd.federation.fetch import fetch_bundle_document
from trustd.federation.model import Relationship
from trustd.server.app import TrustdServer
from trustd.spiffeid import TrustDomain

pytestmark = pytest.mark.integration
TD = TrustDomain.parse("trustd.local")


async def _server(tmp: Path, federation: dict[str, object]) -> TrustdServer:
    cfg = load_server_config(
        None,
        {
            "dataDir": str(tmp / "server"),
            "serverAddress": "127.0.0.1:0",
            "metricsAddress": "127.0.0.1:0",
            "federation": federation,
        },
    )
    srv = TrustdServer(cfg)
    await srv.start()
    await srv.wait_ready()
    return srv


def _relationship(srv: TrustdServer, host: str, profile: str, endpoint_id: str) -> Relationship:
    now = dt.datetime.now(dt.UTC)
    return Relationship(
        trust_domain=TD,
        endpoint_url=f"https://{host}:{srv.bundle_endpoint_port}/",
        profile=profile,
        endpoint_spiffe_id=endpoint_id,
        bundle=srv.core.bundle(),
        refreshed_at=None,
        next_refresh_at=now,
        last_error="",
        created_at=now,
    )


def test_https_spiffe_endpoint_serves_x509_and_jwt_keys_with_the_server_svid(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        srv = await _server(
            tmp_path, {"bundleEndpoint": {"address": "127.0.0.1:0"}, "refreshHint": "45s"}
        )
        try:
            rel = _relationship(
                srv, "127.0.0.1", "https_spiffe", "spiffe://trustd.local/trustd/server"
            )
            doc = await asyncio.to_thread(fetch_bundle_document, rel, srv.core.bundle())
            data = json.loads(doc)
            own = srv.core.bundle()
            assert data["spiffe_sequence"] == own.sequence
            assert data["spiffe_refresh_hint"] == 45
            uses = [k["use"] for k in data["keys"]]
            assert uses.count("x509-svid") == len(own.x509_authorities) >= 1
            assert uses.count("jwt-svid") == len(own.jwt_authorities) >= 1
            parsed = parse_bundle(TD, doc)
            assert parsed.x509_authorities == own.x509_authorities
            assert {a.key_id for a in parsed.jwt_authorities} == {
                a.key_id for a in own.jwt_authorities
            }
        finally:
            await srv.stop()

    asyncio.run(main())


def test_https_web_endpoint_serves_the_configured_certificate(tmp_path: Path) -> None:
    web = ThrowawayCA("web.invalid")
    leaf = web.issue("spiffe://web.invalid/unused", uri_san=False, dns_names=["localhost"])
    cert, key = leaf.write(tmp_path, "web")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(web.bundle_pem)

    async def main() -> None:
        srv = await _server(
            tmp_path,
            {
                "bundleEndpoint": {
                    "address": "127.0.0.1:0",
                    "profile": "https_web",
                    "certFile": str(cert),
                    "keyFile": str(key),
                }
            },
        )
        try:
            rel = _relationship(srv, "localhost", "https_web", "")
            doc = await asyncio.to_thread(
                fetch_bundle_document, rel, srv.core.bundle(), ca_file=str(roots)
            )
            assert parse_bundle(TD, doc).x509_authorities == srv.core.bundle().x509_authorities
        finally:
            await srv.stop()

    asyncio.run(main())
