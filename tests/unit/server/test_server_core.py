"""ServerCore: entries, issuance, minting, authorities and join tokens, with a real CA and store."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from server_rig import START, Rig, make_rig

from trustd.audit import Actor, AuditEvent, MemoryAuditSink
from trustd.ca.errors import InvalidCsrError, InvalidTtlError, NoActiveAuthorityError, SigningError
from trustd.ca.issuer import IssuedSvid
from trustd.ca.kms.base import KeyRef
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.entries import RegistrationEntry
from trustd.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    TrustdError,
    UnavailableError,
)
from trustd.registry import CreateEntry, CreateToken, Registry
from trustd.selectors import InvalidSelectorError, Selector
from trustd.server.core import SvidRequest
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId

ADMIN = Actor(kind="unix", id="uid:0", uid=0, addr="/run/trustd/admin.sock")
AGENT = Actor(kind="spiffe", id="spiffe://trustd.local/trustd/agent/join_token/a1")
WEB = "spiffe://trustd.local/ns/shop/sa/web"


def replace_audit(rig: Rig, audit: MemoryAuditSink) -> Registry:
    """The rig's registry, writing to ``audit`` instead."""
    rig.core.audit = audit
    return Registry(
        store=rig.store,
        audit=audit,
        clock=rig.clock,
        issuance=rig.core,
        max_ttl=rig.core.issuer.max_ttl,
        notify=rig.core.hub.notify,
    )


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def _csr(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _sample(rig: Rig, name: str, labels: dict[str, str] | None = None) -> float:
    value = rig.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _events(rig: Rig, type_: str) -> list[AuditEvent]:
    return [e for e in rig.audit.events if e.type == type_]


# -- entries ----------------------------------------------------------------------------


def test_create_entry_stores_it_and_records_who_did_it(rig: Rig) -> None:
    entry = rig.registry.entries.create(
        ADMIN,
        CreateEntry(
            spiffe_id=WEB,
            selectors=("unix:uid:1000", "unix:path:/usr/bin/web", "unix:uid:1000"),
            ttl=dt.timedelta(minutes=30),
            dns_names=("Web.Shop.svc.",),
        ),
    )
    assert rig.store.get_entry(entry.id) == entry
    assert entry.selectors == tuple(
        sorted({Selector.parse("unix:uid:1000"), Selector.parse("unix:path:/usr/bin/web")})
    )
    assert entry.dns_names == ("web.shop.svc",)
    [event] = _events(rig, "admin.entry.create")
    assert event.actor == ADMIN
    assert event.outcome == "success"
    assert event.resource == f"entry/{entry.id}"


def test_duplicate_entry_is_already_exists_and_audited(rig: Rig) -> None:
    rig.registry.entries.create(ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1000",)))
    with pytest.raises(AlreadyExistsError, match="exists already"):
        rig.registry.entries.create(ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1000",)))
    assert len(rig.store.list_entries()) == 1
    assert [e.outcome for e in _events(rig, "admin.entry.create")] == ["success", "failure"]


@pytest.mark.parametrize(
    ("spiffe_id", "selectors", "error", "why"),
    [
        ("spiffe://Trustd.local/a", ("unix:uid:1",), InvalidSpiffeIdError, "lower-case"),
        ("spiffe://trustd.local/a/../b", ("unix:uid:1",), InvalidSpiffeIdError, "'..'"),
        ("spiffe://other.example/a", ("unix:uid:1",), InvalidArgumentError, "trust domain"),
        ("spiffe://trustd.local", ("unix:uid:1",), InvalidArgumentError, "needs a path"),
        ("spiffe://trustd.local/trustd/agent/x", ("unix:uid:1",), InvalidArgumentError, "reserved"),
        (WEB, (), InvalidArgumentError, "at least one --selector"),
        (WEB, ("k8s:ns:default",), InvalidSelectorError, "unknown selector type 'k8s'"),
        (WEB, ("unix:uid:root",), InvalidSelectorError, "must be a whole number"),
    ],
)
def test_invalid_entries_are_refused_and_nothing_is_stored(
    rig: Rig, spiffe_id: str, selectors: tuple[str, ...], error: type[TrustdError], why: str
) -> None:
    with pytest.raises(error, match=why):
        rig.registry.entries.create(ADMIN, CreateEntry(spiffe_id=spiffe_id, selectors=selectors))
    assert rig.store.list_entries() == []
    [event] = _events(rig, "admin.entry.create")
    assert event.outcome == "failure"


@pytest.mark.parametrize(
    ("ttl", "why"),
    [
        (dt.timedelta(0), "ttl must be positive"),
        (dt.timedelta(minutes=-5), "ttl must be positive"),
        (dt.timedelta(hours=24, seconds=1), "above the server maximum"),
    ],
    ids=["zero", "negative", "above-max"],
)
def test_entry_ttl_out_of_range_is_refused(rig: Rig, ttl: dt.timedelta, why: str) -> None:
    with pytest.raises(InvalidTtlError, match=why):
        rig.registry.entries.create(
            ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",), ttl=ttl)
        )
    assert rig.store.list_entries() == []


@pytest.mark.parametrize(
    "name",
    ["spiffe://trustd.local/ns/admin", "-bad.example", "a..b", "under_score.example", "x" * 64],
)
def test_bad_dns_names_are_refused(rig: Rig, name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid dns name"):
        rig.registry.entries.create(
            ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",), dns_names=(name,))
        )


def test_entry_is_not_created_when_the_audit_log_is_down(rig: Rig) -> None:
    rig.audit.fail_with = UnavailableError("audit log unavailable")
    with pytest.raises(UnavailableError):
        rig.registry.entries.create(ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",)))
    assert rig.store.list_entries() == []


class RecordFailsAuditor(MemoryAuditSink):
    """The audit log passes its check, then fails to write the success event."""

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        if any(e.outcome == "success" for e in events):
            raise UnavailableError("audit disk full")
        return super().append_many(events)


def test_entry_is_undone_when_its_audit_event_cannot_be_written(rig: Rig) -> None:
    rig.registry = replace_audit(rig, RecordFailsAuditor())
    with pytest.raises(UnavailableError):
        rig.registry.entries.create(ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",)))
    assert rig.store.list_entries() == []


def test_delete_entry(rig: Rig) -> None:
    entry = rig.registry.entries.create(
        ADMIN, CreateEntry(spiffe_id=WEB, selectors=("unix:uid:1",))
    )
    assert rig.registry.entries.delete(ADMIN, entry.id) == entry
    assert rig.store.list_entries() == []
    with pytest.raises(NotFoundError):
        rig.registry.entries.delete(ADMIN, entry.id)
    assert [e.outcome for e in _events(rig, "admin.entry.delete")] == ["success", "failure"]


# -- issuance ---------------------------------------------------------------------------


def _entry(rig: Rig, spiffe_id: str = WEB, ttl: dt.timedelta | None = None) -> RegistrationEntry:
    return rig.registry.entries.create(
        ADMIN, CreateEntry(spiffe_id=spiffe_id, selectors=("unix:uid:1000",), ttl=ttl)
    )


def test_a_batch_signs_the_good_requests_and_fails_the_bad_alone(rig: Rig) -> None:
    web = _entry(rig)
    api = _entry(rig, "spiffe://trustd.local/ns/shop/sa/api", ttl=dt.timedelta(minutes=10))
    out = rig.core.issue_svids(
        AGENT,
        [
            SvidRequest(entry=web, csr=_csr()),
            SvidRequest(entry=api, csr=b"garbage"),
            SvidRequest(entry=api, csr=_csr()),
        ],
    )
    assert isinstance(out[0], IssuedSvid) and isinstance(out[2], IssuedSvid)
    assert isinstance(out[1], InvalidCsrError)
    assert str(out[0].spiffe_id) == WEB
    assert out[2].not_after == START + dt.timedelta(minutes=10)
    ledger = rig.store.list_issued()
    assert sorted((r.serial, r.entry_id, r.caller) for r in ledger) == sorted(
        [(out[0].serial, web.id, AGENT.id), (out[2].serial, api.id, AGENT.id)]
    )
    assert _sample(rig, "trustd_svids_issued_total", {"source": "agent"}) == 2
    assert _sample(rig, "trustd_svids_denied_total", {"reason": "invalid_csr"}) == 1
    assert _sample(rig, "trustd_signing_duration_seconds_count") == 1
    assert len(_events(rig, "svid.issue")) == 2
    [deny] = _events(rig, "svid.deny")
    assert deny.outcome == "failure" and "csr" in deny.reason


def test_an_entry_ttl_above_the_maximum_is_denied(rig: Rig) -> None:
    entry = RegistrationEntry(
        id="e-long",
        spiffe_id=SpiffeId.parse(WEB),
        selectors=(Selector.parse("unix:uid:1"),),
        ttl=dt.timedelta(days=2),
        created_at=START,
    )
    [result] = rig.core.issue_svids(AGENT, [SvidRequest(entry=entry, csr=_csr())])
    assert isinstance(result, InvalidTtlError)
    assert _sample(rig, "trustd_svids_denied_total", {"reason": "invalid_ttl"}) == 1
    assert rig.store.list_issued() == []


def test_identity_comes_from_the_entry_not_the_csr(rig: Rig) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "root")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://trustd.local/admin")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    [svid] = rig.core.issue_svids(AGENT, [SvidRequest(entry=_entry(rig), csr=csr)])
    assert isinstance(svid, IssuedSvid)
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert (
        svid.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    )
    assert svid.certificate.subject == x509.Name([])


class WrongKeyManager:
    """Signs with a key that is not the CA's."""

    kind = "memory"

    def __init__(self, real: MemoryKeyManager) -> None:
        self.real = real
        self.other = ec.generate_private_key(ec.SECP256R1())

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        return self.other.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return [self.sign(ref, d) for d in digests]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_signature_that_does_not_verify_issues_nothing() -> None:
    rig = make_rig(km=WrongKeyManager)
    entry = _entry(rig)
    with pytest.raises(SigningError, match="nothing was issued"):
        rig.core.issue_svids(AGENT, [SvidRequest(entry=entry, csr=_csr()) for _ in range(3)])
    assert rig.store.list_issued() == []
    assert _sample(rig, "trustd_svids_issued_total", {"source": "agent"}) == 0
    assert _sample(rig, "trustd_svids_denied_total", {"reason": "unavailable"}) == 3
    assert _events(rig, "svid.issue") == []


def test_no_active_ca_is_unavailable() -> None:
    rig = make_rig(activate=False)
    entry = RegistrationEntry(
        id="e", spiffe_id=SpiffeId.parse(WEB), selectors=(Selector.parse("unix:uid:1"),)
    )
    with pytest.raises(NoActiveAuthorityError) as err:
        rig.core.issue_svids(AGENT, [SvidRequest(entry=entry, csr=_csr())])
    assert isinstance(err.value, UnavailableError)
    ready, reason = rig.core.readiness()
    assert not ready and "no active CA" in reason


def _reserved_entry(spiffe_id: str) -> RegistrationEntry:
    return RegistrationEntry(
        id="e-reserved",
        spiffe_id=SpiffeId.parse(spiffe_id),
        selectors=(Selector.parse("unix:uid:1"),),
        created_at=START,
    )


def test_issuance_refuses_a_reserved_id_alone_even_from_a_stored_entry(rig: Rig) -> None:
    web = _entry(rig)
    out = rig.core.issue_svids(
        AGENT,
        [
            SvidRequest(entry=_reserved_entry("spiffe://trustd.local/trustd/server"), csr=_csr()),
            SvidRequest(entry=web, csr=_csr()),
            SvidRequest(entry=_reserved_entry("spiffe://trustd.local/trustd/agent/x"), csr=_csr()),
        ],
    )
    assert isinstance(out[0], InvalidArgumentError) and isinstance(out[2], InvalidArgumentError)
    assert "/trustd/" in str(out[0]) and "reserved" in str(out[0])
    assert isinstance(out[1], IssuedSvid) and str(out[1].spiffe_id) == WEB
    assert [r.spiffe_id for r in rig.store.list_issued()] == [WEB]
    assert _sample(rig, "trustd_svids_denied_total", {"reason": "reserved_id"}) == 2
    assert len(_events(rig, "svid.deny")) == 2


def test_the_ca_issuer_signs_a_reserved_id_only_when_told_it_is_internal(rig: Rig) -> None:
    from trustd.ca.issuer import SvidTemplate, load_csr

    signer = rig.core.authorities.active_signer()
    _, pub = load_csr(_csr())
    template = SvidTemplate(
        spiffe_id=SpiffeId.parse("spiffe://trustd.local/trustd/server"),
        public_key=pub,
        not_before=START,
        not_after=START + dt.timedelta(minutes=5),
    )
    with pytest.raises(InvalidArgumentError, match="reserved"):
        rig.core.issuer.sign(signer, [template])
    [svid] = rig.core.issuer.sign(signer, [template], allow_reserved=True)
    assert str(svid.spiffe_id) == "spiffe://trustd.local/trustd/server"


def test_the_internal_path_issues_the_server_and_agent_ids(rig: Rig) -> None:
    for sid in ("spiffe://trustd.local/trustd/server", "spiffe://trustd.local/trustd/agent/a1"):
        svid = rig.core.issue_internal_svid(
            AGENT, SvidRequest(entry=_reserved_entry(sid), csr=_csr()), source="agent"
        )
        assert str(svid.spiffe_id) == sid
    assert len(rig.store.list_issued()) == 2


# -- minting ----------------------------------------------------------------------------


def test_mint_uses_the_default_ttl_and_records_the_admin(rig: Rig) -> None:
    svid = rig.core.mint(ADMIN, spiffe_id=WEB, csr=_csr(), ttl=None)
    assert svid.not_after == START + dt.timedelta(hours=1)
    [rec] = rig.store.list_issued()
    assert rec.caller == ADMIN.id and rec.entry_id is None
    assert _sample(rig, "trustd_svids_issued_total", {"source": "mint"}) == 1


@pytest.mark.parametrize(
    ("ttl", "why"),
    [
        (dt.timedelta(0), "ttl must be positive"),
        (dt.timedelta(seconds=-30), "ttl must be positive"),
        (dt.timedelta(hours=25), "above the server maximum 1d"),
    ],
    ids=["zero", "negative", "above-max"],
)
def test_mint_ttl_out_of_range_is_refused(rig: Rig, ttl: dt.timedelta, why: str) -> None:
    with pytest.raises(InvalidTtlError, match=why):
        rig.core.mint(ADMIN, spiffe_id=WEB, csr=_csr(), ttl=ttl)
    assert rig.store.list_issued() == []


@pytest.mark.parametrize(
    ("spiffe_id", "error"),
    [
        ("spiffe://other.example/a", InvalidArgumentError),
        ("spiffe://trustd.local/a?b", InvalidSpiffeIdError),
    ],
)
def test_mint_refuses_ids_outside_the_trust_domain_or_invalid(
    rig: Rig, spiffe_id: str, error: type[TrustdError]
) -> None:
    with pytest.raises(error):
        rig.core.mint(ADMIN, spiffe_id=spiffe_id, csr=_csr(), ttl=None)
    assert _sample(rig, "trustd_svids_denied_total", {"reason": "invalid_request"}) == 1


def test_mint_refuses_a_bad_csr(rig: Rig) -> None:
    with pytest.raises(InvalidCsrError):
        rig.core.mint(
            ADMIN, spiffe_id=WEB, csr=b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n", ttl=None
        )


# -- authorities ------------------------------------------------------------------------


def test_authority_operations_are_audited_and_counted(rig: Rig) -> None:
    old = rig.core.authorities.active_signer().id
    prepared = rig.core.authority_op(ADMIN, "prepare")
    activated = rig.core.authority_op(ADMIN, "activate")
    assert activated.id == prepared.id
    rig.core.authority_op(ADMIN, "taint", old)
    assert rig.core.bundle().tainted_key_ids == frozenset({old})
    assert [e.type for e in rig.audit.events] == [
        "admin.authority.prepare",
        "admin.authority.activate",
        "admin.authority.taint",
    ]
    assert _sample(rig, "trustd_ca_rotations_total", {"event": "prepare"}) == 1
    assert _sample(rig, "trustd_ca_expiry_timestamp_seconds", {"slot": "active"}) == (
        activated.not_after.timestamp()
    )
    with pytest.raises(InvalidArgumentError, match="unknown authority operation"):
        rig.core.authority_op(ADMIN, "explode")


def test_refused_authority_operations_are_audited_as_failures(rig: Rig) -> None:
    active = rig.core.authorities.active_signer().id
    with pytest.raises(TrustdError, match="is active"):
        rig.core.authority_op(ADMIN, "taint", active)
    [event] = rig.audit.events
    assert event.outcome == "failure" and event.type == "admin.authority.taint"


# -- join tokens ------------------------------------------------------------------------


def test_join_token_is_stored_and_audited_only_as_an_hmac(rig: Rig) -> None:
    created = rig.registry.tokens.create(ADMIN, CreateToken(ttl=dt.timedelta(minutes=10)))
    token, expires = created.token, created.expires_at
    assert expires == START + dt.timedelta(minutes=10)
    digest = rig.registry.tokens.hmac(token)
    key = bytes.fromhex(rig.store.get_doc("token.hmac_key") or "")
    assert digest == hmac.new(key, token.encode(), hashlib.sha256).hexdigest()
    with rig.store._tx() as run:
        rows = run("SELECT * FROM join_tokens").fetchall()
    assert [r[0] for r in rows] == [digest]
    assert token not in repr(rows)
    assert token not in repr(rig.audit.events)
    assert rig.store.consume_token(digest, "agent-1", START)
    assert not rig.store.consume_token(digest, "agent-2", START)


@pytest.mark.parametrize(
    "ttl", [dt.timedelta(0), dt.timedelta(minutes=-1), dt.timedelta(days=1, seconds=1)]
)
def test_join_token_ttl_out_of_range_is_refused(rig: Rig, ttl: dt.timedelta) -> None:
    with pytest.raises(InvalidTtlError):
        rig.registry.tokens.create(ADMIN, CreateToken(ttl=ttl))
    with rig.store._tx() as run:
        assert run("SELECT COUNT(*) FROM join_tokens").fetchone()[0] == 0


def test_ready_when_store_key_manager_and_ca_are(rig: Rig) -> None:
    assert rig.core.readiness() == (True, "ok")
