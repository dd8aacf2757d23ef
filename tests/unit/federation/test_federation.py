"""Federation relationships: the bootstrap and refresh checks, the refusals and their alarms,
and the bundle endpoint fetched over https_spiffe and https_web."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fakes import TestCA, run_async
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from dataplane_testing import ThrowawayCA

from trustd.audit.events import Actor
from trustd.audit.sink import MemoryAuditSink
from trustd.bundle import Bundle
from trustd.clock import FakeClock
from trustd.entries import RegistrationEntry
from trustd.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from trustd.federation import errors as fe
from trustd.federation.check import parse_bundle
from trustd.federation.endpoint import BundleEndpoint
from trustd.federation.fetch import fetch_bundle_document
from trustd.federation.model import CreateFederation, Relationship
from trustd.federation.relationships import FederationRegistry
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.sqlite import SqliteStore
from trustd.telemetry.metrics import FederationMetrics

OURS = TrustDomain.parse("trustd.local")
PARTNER = TrustDomain.parse("partner.example")
ENDPOINT_ID = "spiffe://partner.example/trustd/server"
ADMIN = Actor.unix(uid=1000, addr="/tmp/admin.sock")


class Served:
    """What the fake endpoint serves next (a document, or an error to raise)."""

    def __init__(self) -> None:
        self.document: bytes | Exception = b""
        self.calls = 0

    def __call__(self, rel: Relationship, current: Bundle) -> bytes:
        self.calls += 1
        if isinstance(self.document, Exception):
            raise self.document
        return self.document


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
        self.partner = TestCA(PARTNER, clock=self.clock, ttl=dt.timedelta(days=1))
        self.store = SqliteStore(tmp_path / "trustd.db")
        self.audit = MemoryAuditSink()
        self.metrics = FederationMetrics()
        self.notified: list[str] = []
        self.served = Served()
        self.fed = FederationRegistry(
            store=self.store,
            audit=self.audit,
            clock=self.clock,
            trust_domain=OURS,
            metrics=self.metrics,
            notify=self.notified.append,
            fetch=self.served,
        )

    def bootstrap(self) -> Relationship:
        return self.fed.create(
            ADMIN,
            CreateFederation(
                trust_domain="spiffe://partner.example",
                endpoint_url="https://127.0.0.1:8443/",
                profile="https_spiffe",
                endpoint_spiffe_id=ENDPOINT_ID,
                bundle=self.partner.bundle().to_spiffe().encode(),
            ),
        )

    def serve(self, bundle: Bundle, *, hint: int = 60) -> None:
        doc = bundle.to_spiffe_json()
        doc["spiffe_refresh_hint"] = hint
        self.served.document = json.dumps(doc).encode()

    def failures(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "trustd_federation_refresh_failures_total",
            {"trust_domain": "partner.example", "reason": reason},
        )
        return value or 0.0

    def types(self) -> list[str]:
        return [e.type for e in self.audit.events]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


def test_create_stores_the_bootstrap_bundle_and_audits(env: Env) -> None:
    rel = env.bootstrap()
    assert rel.trust_domain == PARTNER
    assert rel.bundle.x509_authorities == (env.partner.active.cert,)
    assert env.fed.get("partner.example").bundle.to_spiffe() == rel.bundle.to_spiffe()
    assert env.types() == ["admin.federation.create"]
    assert env.audit.events[0].details["endpoint_spiffe_id"] == ENDPOINT_ID
    assert env.notified == ["bundle"]
    assert [b.trust_domain for b in env.fed.bundles()] == [PARTNER]


def test_create_twice_is_refused(env: Env) -> None:
    env.bootstrap()
    with pytest.raises(AlreadyExistsError):
        env.bootstrap()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trust_domain": "trustd.local"}, "own trust domain"),
        ({"trust_domain": "Bad_TD!"}, "invalid trust domain"),
        ({"endpoint_url": "http://127.0.0.1:8443/"}, "invalid bundle endpoint url"),
        ({"endpoint_url": "https://:8443/"}, "invalid bundle endpoint url"),
        ({"profile": "https_spife"}, "unknown bundle endpoint profile"),
        ({"endpoint_spiffe_id": ""}, "needs --endpoint-spiffe-id"),
        ({"endpoint_spiffe_id": "spiffe://elsewhere.example/srv"}, "is not in partner.example"),
        ({"bundle": b""}, "bootstrap bundle of partner.example is required"),
        ({"bundle": b"{not json"}, "not a SPIFFE bundle document"),
        ({"bundle": b'{"keys": []}'}, "has no key"),
    ],
)
def test_bad_create_requests_are_refused_and_change_nothing(
    env: Env, change: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {
        "trust_domain": "partner.example",
        "endpoint_url": "https://127.0.0.1:8443/",
        "profile": "https_spiffe",
        "endpoint_spiffe_id": ENDPOINT_ID,
        "bundle": env.partner.bundle().to_spiffe().encode(),
        **change,
    }
    with pytest.raises((InvalidArgumentError, FailedPreconditionError)) as info:
        env.fed.create(ADMIN, CreateFederation(**fields))  # type: ignore[arg-type]
    assert message in str(info.value)
    assert env.fed.all() == []
    assert env.audit.events[-1].outcome == "failure"
    assert env.notified == []


def test_https_web_takes_no_endpoint_spiffe_id(env: Env) -> None:
    with pytest.raises(InvalidArgumentError, match="only for profile https_spiffe"):
        env.fed.create(
            ADMIN,
            CreateFederation(
                trust_domain="partner.example",
                endpoint_url="https://partner.example/bundle",
                profile="https_web",
                endpoint_spiffe_id=ENDPOINT_ID,
                bundle=env.partner.bundle().to_pem(),
            ),
        )


def test_a_pem_bootstrap_bundle_is_accepted(env: Env) -> None:
    rel = env.fed.create(
        ADMIN,
        CreateFederation(
            trust_domain="partner.example",
            endpoint_url="https://partner.example/bundle",
            profile="https_web",
            bundle=env.partner.bundle().to_pem(),
        ),
    )
    assert rel.bundle.x509_authorities == (env.partner.active.cert,)
    assert rel.endpoint_spiffe_id == ""


def test_refresh_replaces_the_bundle_and_schedules_by_the_refresh_hint(env: Env) -> None:
    env.bootstrap()
    env.partner.rotate()
    env.serve(env.partner.bundle(), hint=60)
    env.notified.clear()
    assert env.fed.refresh_due() == 1
    rel = env.fed.get("partner.example")
    assert len(rel.bundle.x509_authorities) == 2
    assert rel.bundle.sequence == env.partner.sequence
    assert rel.next_refresh_at == env.clock.now() + dt.timedelta(seconds=60)
    assert rel.refreshed_at == env.clock.now() and rel.last_error == ""
    assert env.types()[-1] == "federation.bundle.update"
    assert env.notified == ["bundle"]
    # not due again before the hint has passed
    assert env.fed.refresh_due() == 0
    env.clock.advance(dt.timedelta(seconds=60))
    assert env.fed.refresh_due() == 1
    assert env.types()[-1] == "federation.bundle.update"  # unchanged: no new event


def _assert_refused(env: Env, reason: str, good: Bundle) -> None:
    before = len(env.audit.events)
    env.notified.clear()
    env.fed.refresh_due()
    rel = env.fed.get("partner.example")
    assert rel.bundle.to_spiffe() == good.to_spiffe()  # the last good bundle stays in force
    assert rel.last_error
    assert env.failures(reason) == 1
    refused = env.audit.events[before:]
    assert [e.type for e in refused] == ["federation.bundle.refuse"]
    assert refused[0].outcome == "failure" and refused[0].details["reason"] == reason
    assert env.notified == []
    # the retry that fails the same way is counted, not audited again
    env.clock.advance(dt.timedelta(seconds=30))
    env.fed.refresh_due()
    assert env.failures(reason) == 2
    assert len(env.audit.events) == before + 1


def test_a_sequence_that_goes_backwards_is_refused(env: Env) -> None:
    env.bootstrap()
    env.partner.rotate()
    env.partner.rotate()
    env.serve(env.partner.bundle())
    env.fed.refresh_due()
    good = env.fed.get("partner.example").bundle
    older = Bundle(
        trust_domain=PARTNER,
        x509_authorities=good.x509_authorities[:1],
        sequence=good.sequence - 1,
    )
    env.serve(older)
    env.clock.advance(dt.timedelta(minutes=5))
    _assert_refused(env, fe.SEQUENCE_REGRESSED, good)


def test_a_bundle_of_another_trust_domain_is_refused(env: Env) -> None:
    good = env.bootstrap().bundle
    other = TestCA(TrustDomain.parse("other.example"), clock=env.clock, ttl=dt.timedelta(days=1))
    other.sequence = 99
    env.serve(other.bundle())
    _assert_refused(env, fe.WRONG_TRUST_DOMAIN, good)


def test_an_authority_that_is_not_a_ca_is_refused(env: Env) -> None:
    good = env.bootstrap().bundle
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = env.partner.issue(key.public_key(), SpiffeId.parse(ENDPOINT_ID), dt.timedelta(hours=1))
    env.serve(Bundle(trust_domain=PARTNER, x509_authorities=(leaf,), sequence=50))
    _assert_refused(env, fe.NOT_CA, good)


def test_an_empty_bundle_is_refused(env: Env) -> None:
    good = env.bootstrap().bundle
    env.served.document = b'{"keys": [], "spiffe_sequence": 7}'
    _assert_refused(env, fe.EMPTY, good)


def test_a_malformed_document_is_refused(env: Env) -> None:
    good = env.bootstrap().bundle
    env.served.document = b"<html>hello</html>"
    _assert_refused(env, fe.MALFORMED, good)


def test_an_endpoint_that_is_down_keeps_the_last_good_bundle(env: Env) -> None:
    good = env.bootstrap().bundle
    env.served.document = fe.EndpointFetchError(fe.UNREACHABLE, "cannot connect: refused")
    _assert_refused(env, fe.UNREACHABLE, good)
    # it comes back: the next retry succeeds and clears the error
    env.partner.rotate()
    env.serve(env.partner.bundle())
    env.clock.advance(dt.timedelta(seconds=30))
    env.fed.refresh_due()
    rel = env.fed.get("partner.example")
    assert rel.last_error == "" and len(rel.bundle.x509_authorities) == 2


def test_delete_is_refused_while_an_entry_federates_with_it(env: Env) -> None:
    env.bootstrap()
    entry = env.store.create_entry(
        RegistrationEntry(
            id="e1",
            spiffe_id=SpiffeId.parse("spiffe://trustd.local/web"),
            selectors=(Selector.parse("unix:uid:1000"),),
            federates_with=(PARTNER,),
        )
    )
    assert env.store.get_entry("e1").federates_with == (PARTNER,)
    with pytest.raises(FailedPreconditionError, match=r"entries federate with partner\.example"):
        env.fed.delete(ADMIN, "partner.example")
    env.store.delete_entry(entry.id)
    env.fed.delete(ADMIN, "spiffe://partner.example")
    assert env.fed.all() == []
    assert env.types()[-1] == "admin.federation.delete"


def test_manual_refresh_raises_why_it_failed(env: Env) -> None:
    env.bootstrap()
    env.served.document = b'{"keys": []}'
    with pytest.raises(fe.BundleRefusedError, match="has no key"):
        env.fed.refresh_now(ADMIN, "partner.example")
    assert env.types()[-2:] == ["admin.federation.refresh", "federation.bundle.refuse"]


# -- the bundle endpoint, fetched for real --------------------------------------------


def _svid(ca: TestCA, spiffe_id: str) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(key.public_key(), SpiffeId.parse(spiffe_id), dt.timedelta(hours=1))
    return [cert], key


def _relationship(bundle: Bundle, port: int, profile: str, endpoint_id: str) -> Relationship:
    now = dt.datetime.now(dt.UTC)
    return Relationship(
        trust_domain=bundle.trust_domain,
        endpoint_url=f"https://localhost:{port}/",
        profile=profile,
        endpoint_spiffe_id=endpoint_id,
        bundle=bundle,
        refreshed_at=None,
        next_refresh_at=now,
        last_error="",
        created_at=now,
    )


async def _serving(partner: TestCA, spiffe_id: str) -> BundleEndpoint:
    chain, key = _svid(partner, spiffe_id)

    async def bundle() -> Bundle:
        return partner.bundle()

    async def svid() -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey, dt.datetime]:
        return chain, key, chain[0].not_valid_after_utc

    endpoint = BundleEndpoint(bundle=bundle, refresh_hint=dt.timedelta(seconds=42), svid=svid)
    await endpoint.start("127.0.0.1:0")
    return endpoint


@run_async
async def test_https_spiffe_endpoint_serves_the_spiffe_bundle() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    endpoint = await _serving(partner, ENDPOINT_ID)
    try:
        assert endpoint.port is not None
        rel = _relationship(partner.bundle(), endpoint.port, "https_spiffe", ENDPOINT_ID)
        doc = await asyncio.to_thread(fetch_bundle_document, rel, partner.bundle())
        data = json.loads(doc)
        assert data["spiffe_refresh_hint"] == 42
        assert data["spiffe_sequence"] == partner.sequence
        assert {k["use"] for k in data["keys"]} == {"x509-svid"}
        parsed = parse_bundle(PARTNER, doc)
        assert parsed.x509_authorities == (partner.active.cert,)
    finally:
        await endpoint.stop()


@run_async
async def test_https_spiffe_refuses_an_endpoint_with_another_spiffe_id() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    endpoint = await _serving(partner, "spiffe://partner.example/ns/default/sa/web")
    try:
        assert endpoint.port is not None
        rel = _relationship(partner.bundle(), endpoint.port, "https_spiffe", ENDPOINT_ID)
        with pytest.raises(fe.EndpointFetchError, match="presented spiffe id") as info:
            await asyncio.to_thread(fetch_bundle_document, rel, partner.bundle())
        assert info.value.reason == fe.WRONG_ENDPOINT_ID
    finally:
        await endpoint.stop()


@run_async
async def test_https_spiffe_refuses_an_endpoint_not_signed_by_the_bundle() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    impostor = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    endpoint = await _serving(impostor, ENDPOINT_ID)
    try:
        assert endpoint.port is not None
        rel = _relationship(partner.bundle(), endpoint.port, "https_spiffe", ENDPOINT_ID)
        with pytest.raises(fe.EndpointFetchError, match="tls handshake") as info:
            await asyncio.to_thread(fetch_bundle_document, rel, partner.bundle())
        assert info.value.reason == fe.UNREACHABLE
    finally:
        await endpoint.stop()


def test_a_closed_port_is_unreachable() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
        rel = _relationship(partner.bundle(), port, "https_spiffe", ENDPOINT_ID)
        with pytest.raises(fe.EndpointFetchError, match="cannot connect") as info:
            fetch_bundle_document(rel, partner.bundle(), timeout=5)
    assert info.value.reason == fe.UNREACHABLE


def _web_pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A Web PKI root and a server certificate for 'localhost' (no SPIFFE ID)."""
    web = ThrowawayCA("web.invalid")
    leaf = web.issue("spiffe://web.invalid/unused", uri_san=False, dns_names=["localhost"])
    cert, key = leaf.write(tmp_path, "web")
    (tmp_path / "root.pem").write_bytes(web.bundle_pem)
    return tmp_path / "root.pem", cert, key


@run_async
async def test_https_web_endpoint_is_checked_by_web_pki_and_hostname(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    root, cert, key = _web_pki(tmp_path)

    async def bundle() -> Bundle:
        return partner.bundle()

    endpoint = BundleEndpoint(
        bundle=bundle, refresh_hint=dt.timedelta(minutes=5), cert_file=str(cert), key_file=str(key)
    )
    await endpoint.start("127.0.0.1:0")
    try:
        assert endpoint.port is not None
        rel = _relationship(partner.bundle(), endpoint.port, "https_web", "")
        doc = await asyncio.to_thread(
            fetch_bundle_document, rel, partner.bundle(), ca_file=str(root)
        )
        assert parse_bundle(PARTNER, doc).x509_authorities == (partner.active.cert,)
        # the certificate is for localhost, not 127.0.0.1: the hostname check refuses it
        wrong_host = Relationship(
            **{
                **{f: getattr(rel, f) for f in rel.__dataclass_fields__},
                "endpoint_url": f"https://127.0.0.1:{endpoint.port}/",
            }
        )
        with pytest.raises(fe.EndpointFetchError, match="tls handshake"):
            await asyncio.to_thread(
                fetch_bundle_document, wrong_host, partner.bundle(), ca_file=str(root)
            )
        # without the test root, the system roots do not know it
        with pytest.raises(fe.EndpointFetchError, match="tls handshake"):
            await asyncio.to_thread(fetch_bundle_document, rel, partner.bundle())
    finally:
        await endpoint.stop()


@run_async
async def test_the_endpoint_answers_only_get() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    partner = TestCA(PARTNER, clock=clock, ttl=dt.timedelta(days=1))
    endpoint = await _serving(partner, ENDPOINT_ID)
    try:
        assert endpoint.port is not None
        ctx = ssl.create_default_context(cadata=partner.bundle().to_pem().decode())
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port, ssl=ctx)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 405 ")
    finally:
        await endpoint.stop()


def test_a_refresh_that_cannot_be_audited_changes_nothing(env: Env) -> None:
    good = env.bootstrap().bundle
    env.partner.rotate()
    env.serve(env.partner.bundle())
    env.audit.fail_with = fe.EndpointFetchError(fe.UNREACHABLE, "audit log unavailable")
    env.notified.clear()
    env.fed.refresh_due()
    env.audit.fail_with = None
    assert env.fed.get("partner.example").bundle.to_spiffe() == good.to_spiffe()
    assert env.notified == []


def test_an_endpoint_url_with_credentials_is_refused_without_echoing_them(env: Env) -> None:
    with pytest.raises(InvalidArgumentError, match="must not carry credentials") as info:
        env.fed.create(
            ADMIN,
            CreateFederation(
                trust_domain="partner.example",
                endpoint_url="https://admin:s3cret@partner.example/",
                profile="https_web",
                bundle=env.partner.bundle().to_pem(),
            ),
        )
    assert "s3cret" not in str(info.value)
    assert env.audit.events and all("s3cret" not in repr(e) for e in env.audit.events)
