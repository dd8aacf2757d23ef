"""ServerCore and JWT-SVIDs: issuing for entries and by admin mint, audit, bundle and rotation."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pytest

from trustd.audit import Actor, MemoryAuditSink
from trustd.audit.events import check_no_secrets
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.errors import InvalidTtlError, ReservedIdError
from trustd.ca.issuer import X509Issuer
from trustd.ca.jwt import validate_jwt_svid
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.entries import RegistrationEntry
from trustd.errors import InvalidArgumentError, UnavailableError
from trustd.selectors import Selector
from trustd.server.core import ServerCore
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.sqlite import SqliteStore
from trustd.telemetry.metrics import ServerMetrics

TD = TrustDomain.parse("trustd.local")
ADMIN = Actor(kind="unix", id="uid:0", uid=0, addr="/run/trustd/admin.sock")
AGENT = Actor(kind="spiffe", id="spiffe://trustd.local/trustd/agent/join_token/a1")
WEB = "spiffe://trustd.local/ns/shop/sa/web"
START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@dataclass
class Rig:
    core: ServerCore
    audit: MemoryAuditSink
    clock: FakeClock
    metrics: ServerMetrics


def make_rig() -> Rig:
    km = MemoryKeyManager()
    clock = FakeClock(START)
    store = SqliteStore(":memory:")
    authorities = AuthorityManager(
        store=store,
        key_manager=km,
        trust_domain=TD,
        schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
        clock=clock,
    )
    auditor = MemoryAuditSink()
    metrics = ServerMetrics()
    core = ServerCore(
        trust_domain=TD,
        store=store,
        key_manager=km,
        authorities=authorities,
        issuer=X509Issuer(
            key_manager=km, default_ttl=dt.timedelta(hours=1), max_ttl=dt.timedelta(hours=24)
        ),
        audit=auditor,
        clock=clock,
        metrics=metrics,
    )
    core.ensure_ca()
    return Rig(core=core, audit=auditor, clock=clock, metrics=metrics)


def _entry(spiffe_id: str = WEB) -> RegistrationEntry:
    return RegistrationEntry(
        id="e1",
        spiffe_id=SpiffeId.parse(spiffe_id),
        selectors=(Selector.parse("unix:uid:1000"),),
        created_at=START,
    )


def _validate(rig: Rig, token: str, audience: str) -> SpiffeId:
    found = validate_jwt_svid(token, audience, bundles={TD: rig.core.bundle()}, now=rig.clock.now())
    return found.spiffe_id


def test_ensure_ca_makes_an_active_jwt_key_too_and_audits_it() -> None:
    rig = make_rig()
    kinds = [(e.type, e.resource.split("/")[0]) for e in rig.audit.events]
    assert ("authority.activated", "jwt-authority") in kinds
    [jwt_event] = [e for e in rig.audit.events if e.resource.startswith("jwt-authority/")]
    assert jwt_event.details["jwt"] is True and jwt_event.details["automatic"] is True
    bundle = rig.core.bundle()
    assert len(bundle.jwt_authorities) == 1 and len(bundle.x509_authorities) == 1
    keys = bundle.to_spiffe_json()["keys"]
    assert isinstance(keys, list)
    uses = [k["use"] for k in keys]
    assert uses == ["x509-svid", "jwt-svid"]


def test_agent_jwt_svid_takes_the_identity_from_the_entry_and_is_audited_without_token() -> None:
    rig = make_rig()
    svid = rig.core.issue_jwt_svid(AGENT, entry=_entry(), audience=["backend"])
    assert _validate(rig, svid.token, "backend") == SpiffeId.parse(WEB)
    assert svid.expires_at - svid.issued_at == dt.timedelta(minutes=5)  # the default
    [event] = [e for e in rig.audit.events if e.type == "svid.issue"]
    assert event.actor == AGENT and event.resource == WEB and event.outcome == "success"
    assert event.details == {
        "jwt": True,
        "jti": svid.jti,
        "kid": svid.key_id,
        "exp": svid.expires_at.isoformat().replace("+00:00", "Z"),
        "entry_id": "e1",
    }
    check_no_secrets(event.details)  # what the real audit log would accept
    assert svid.token not in json.dumps(rig.audit.events, default=str)


def test_admin_mint_is_audited_as_admin_svid_mint_with_jwt_true() -> None:
    rig = make_rig()
    svid = rig.core.mint_jwt(
        ADMIN, spiffe_id=WEB, audience=["a", "b"], ttl=dt.timedelta(minutes=10)
    )
    assert svid.expires_at - svid.issued_at == dt.timedelta(minutes=10)
    assert _validate(rig, svid.token, "b") == SpiffeId.parse(WEB)
    [event] = [e for e in rig.audit.events if e.type == "admin.svid.mint"]
    assert event.action == "mint" and event.actor == ADMIN
    assert event.details["jwt"] is True and event.details["jti"] == svid.jti
    assert set(event.details) == {"jwt", "jti", "kid", "exp"}
    assert svid.token not in json.dumps(rig.audit.events, default=str)


@pytest.mark.parametrize(
    ("kwargs", "error", "why"),
    [
        ({"audience": []}, InvalidArgumentError, "audience is required"),
        ({"ttl": dt.timedelta(hours=2)}, InvalidTtlError, "above the server maximum"),
        ({"ttl": dt.timedelta(0)}, InvalidTtlError, "positive"),
        ({"spiffe_id": "spiffe://other.example/x"}, InvalidArgumentError, "trust domain"),
        ({"spiffe_id": "spiffe://trustd.local/trustd/agent/x"}, ReservedIdError, "reserved"),
        ({"spiffe_id": "not-an-id"}, InvalidArgumentError, "spiffe"),
    ],
)
def test_mint_refusals_are_audited_as_failures(
    kwargs: dict[str, object], error: type[Exception], why: str
) -> None:
    rig = make_rig()
    args: dict[str, object] = {"spiffe_id": WEB, "audience": ["backend"], "ttl": None, **kwargs}
    with pytest.raises(error) as err:
        rig.core.mint_jwt(ADMIN, **args)  # type: ignore[arg-type]
    assert why in str(err.value)
    [event] = [e for e in rig.audit.events if e.type == "admin.svid.mint"]
    assert event.outcome == "failure" and event.details == {"jwt": True}


def test_nothing_is_signed_when_audit_cannot_be_written() -> None:
    rig = make_rig()
    rig.audit.fail_with = UnavailableError("audit log is full")
    with pytest.raises(UnavailableError):
        rig.core.issue_jwt_svid(AGENT, entry=_entry(), audience=["backend"])


def test_rotate_tick_publishes_the_next_jwt_key_and_wakes_bundle_watchers() -> None:
    rig = make_rig()
    before = rig.core.bundle()
    seen = rig.core.hub.version("bundle")
    rig.clock.advance(dt.timedelta(hours=12, minutes=1))
    rig.core.rotate_tick()
    after = rig.core.bundle()
    assert len(after.jwt_authorities) == 2
    assert after.sequence > before.sequence
    assert rig.core.hub.version("bundle") > seen
    prepared = [
        e
        for e in rig.audit.events
        if e.type == "authority.prepared" and e.resource.startswith("jwt-authority/")
    ]
    assert len(prepared) == 1
