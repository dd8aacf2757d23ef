"""Agents in the registry: join with a one-time token, the agent's SVID checked on every
call, renewal, eviction, and signing only for the entries an agent may serve."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from server_rig import Rig, make_rig

from trustd.agent.upstream import JwtSvidRequest, SvidRequest
from trustd.audit import Actor
from trustd.ca.errors import InvalidCsrError, SigningError
from trustd.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from trustd.registry import CreateEntry, CreateToken, Join, RenewAgent

ADMIN = Actor(kind="unix", id="uid:0", uid=0)
WEB = "spiffe://trustd.local/ns/shop/sa/web"


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def _token(rig: Rig) -> str:
    return rig.registry.tokens.create(ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))).token


def _joins(rig: Rig) -> list[str]:
    return [e.outcome for e in rig.audit.events if e.type == "agent.join"]


def test_a_token_buys_exactly_one_join(rig: Rig) -> None:
    token = _token(rig)
    joined = rig.registry.agents.join(Join(token=token, csr_der=_csr(), hostname="n1"))
    assert str(joined.svid.spiffe_id) == f"spiffe://trustd.local/trustd/agent/{joined.agent.id}"
    assert [a.id for a in rig.registry.agents.all()] == [joined.agent.id]
    assert joined.agent.hostname == "n1" and joined.bundle.x509_authorities
    with pytest.raises(PermissionDeniedError, match="unknown, used or expired"):
        rig.registry.agents.join(Join(token=token, csr_der=_csr()))
    assert _joins(rig) == ["success", "failure"]
    assert token not in repr(rig.audit.events)  # only its salted HMAC is recorded
    [ok] = [e for e in rig.audit.events if e.type == "agent.join" and e.outcome == "success"]
    assert ok.details["token_hmac"] == rig.registry.tokens.hmac(token)


def test_a_bad_csr_does_not_spend_the_token(rig: Rig) -> None:
    token = _token(rig)
    with pytest.raises(InvalidCsrError):
        rig.registry.agents.join(Join(token=token, csr_der=b"garbage"))
    with pytest.raises(InvalidArgumentError, match="csr_der is required"):
        rig.registry.agents.join(Join(token=token, csr_der=b""))  # refused before any lookup
    with pytest.raises(InvalidArgumentError, match="hostname"):
        rig.registry.agents.join(Join(token=token, csr_der=_csr(), hostname="a\nb"))
    assert _joins(rig) == ["failure"]
    rig.registry.agents.join(Join(token=token, csr_der=_csr()))  # still good


def test_a_join_whose_issuance_fails_gives_the_token_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _token(rig)

    def down(*args: object, **kwargs: object) -> None:
        raise SigningError("the key manager is unavailable")

    monkeypatch.setattr(rig.core.issuer, "sign", down)
    with pytest.raises(UnavailableError):
        rig.registry.agents.join(Join(token=token, csr_der=_csr()))
    assert rig.registry.agents.all() == []
    monkeypatch.undo()
    rig.registry.agents.join(Join(token=token, csr_der=_csr()))
    assert _joins(rig) == ["failure", "success"]


def test_the_agent_svid_is_checked_on_every_call_and_eviction_cuts_it_off(rig: Rig) -> None:
    joined = rig.registry.agents.join(Join(token=_token(rig), csr_der=_csr()))
    cert = x509.load_der_x509_certificate(joined.svid.chain_der[0])
    assert rig.registry.agents.authenticate(cert).id == joined.agent.id
    with pytest.raises(UnauthenticatedError):
        rig.registry.agents.authenticate(None)
    rig.registry.agents.evict(ADMIN, joined.agent.id)
    with pytest.raises(PermissionDeniedError, match="evicted"):
        rig.registry.agents.authenticate(cert)
    rig.clock.advance(dt.timedelta(days=2))
    with pytest.raises(UnauthenticatedError, match="expired"):
        rig.registry.agents.authenticate(cert)


def test_renewal_records_the_new_serial(rig: Rig) -> None:
    joined = rig.registry.agents.join(Join(token=_token(rig), csr_der=_csr()))
    actor = Actor.spiffe(joined.agent.spiffe_id)
    svid = rig.registry.agents.renew(actor, RenewAgent(agent=joined.agent, csr_der=_csr()))
    assert svid.serial != joined.svid.serial
    [record] = rig.registry.agents.all()
    assert record.serial == svid.serial
    [renewed] = [e for e in rig.audit.events if e.type == "agent.renew"]
    assert renewed.resource == f"agent/{joined.agent.id}"


def test_an_agent_signs_only_the_entries_it_serves(rig: Rig) -> None:
    a = rig.registry.agents.join(Join(token=_token(rig), csr_der=_csr())).agent
    b = rig.registry.agents.join(Join(token=_token(rig), csr_der=_csr())).agent
    everywhere = rig.registry.entries.create(
        ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",))
    )
    only_b = rig.registry.entries.create(
        ADMIN, CreateEntry(spiffe_id=WEB + "-b", selectors=("unix:uid:2",), agent_id=b.id)
    )
    actor = Actor.spiffe(a.spiffe_id)
    [svid] = rig.registry.agents.sign_svids(
        actor, a.id, [SvidRequest(entry_id=everywhere.id, csr_der=_csr())]
    )
    assert svid.entry_id == everywhere.id and str(svid.spiffe_id) == WEB
    assert len(svid.chain_der) == 1  # the self-signed CA is in the bundle, not the chain
    with pytest.raises(PermissionDeniedError, match="pinned to another agent"):
        rig.registry.agents.sign_svids(
            actor, a.id, [SvidRequest(entry_id=only_b.id, csr_der=_csr())]
        )
    with pytest.raises(PermissionDeniedError, match="does not exist"):
        rig.registry.agents.sign_jwt(actor, a.id, JwtSvidRequest(entry_id="gone", audience=("x",)))
    assert [e.id for e in rig.registry.entries.snapshot_for(a.id).upserted] == [everywhere.id]
    assert {e.id for e in rig.registry.entries.snapshot_for(b.id).upserted} == {
        everywhere.id,
        only_b.id,
    }
