"""The Store seam: everything the server must remember, in transactions.

SQLite is the embedded default; PostgreSQL serves several stateless servers.
Both run the one migration list in ``migrations.py``. Methods are blocking
and raise ``UnavailableError`` when the database cannot be reached, so that
issuance fails with UNAVAILABLE while agents keep serving what they hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from trustd.ca.kms.base import KeyRef
from trustd.entries import RegistrationEntry


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorityRecord:
    id: str  # hex subject key identifier of the CA certificate
    state: str  # "prepared" | "active" | "old"
    tainted: bool  # SVIDs it signed must be reissued
    revoked: bool  # dropped from the bundle; nothing it signed is trusted
    key_ref: KeyRef  # where its private key lives (never the key itself)
    certificate: x509.Certificate  # the CA certificate
    upstream_chain: tuple[x509.Certificate, ...] = ()  # intermediates above it, up to the root
    upstream_roots: tuple[x509.Certificate, ...] = ()  # upstream roots (go in the bundle)
    created_at: dt.datetime  # when it was prepared
    activated_at: dt.datetime | None = None  # when it started signing

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRecord:
    serial: str  # hex serial number
    spiffe_id: str  # identity in the certificate
    not_after: dt.datetime  # expiry
    authority_id: str  # issuing CA
    caller: str  # who asked (agent SPIFFE ID, "admin uid=N", ...)
    entry_id: str | None  # registration entry it was issued for, if any
    issued_at: dt.datetime  # when


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinTokenRecord:
    token_hash: str  # salted HMAC of the token; the token itself is never stored
    expires_at: dt.datetime  # after this it cannot be used
    created_at: dt.datetime
    used_at: dt.datetime | None = None  # set once, atomically, when an agent joins
    agent_id: str | None = None  # the agent that used it


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRecord:
    id: str  # agent id, the last path segment of its SPIFFE ID
    spiffe_id: str  # spiffe://TD/trustd/agent/join_token/<id>
    serial: str  # serial of its current agent SVID
    not_after: dt.datetime  # expiry of that SVID
    joined_at: dt.datetime
    last_seen: dt.datetime
    evicted: bool = False
    hostname: str = ""  # as reported at join, informative only
    meta: dict[str, object] = field(default_factory=dict)  # reported telemetry


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryChange:
    revision: int  # global, increasing
    entry_id: str
    entry: RegistrationEntry | None  # None when deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationRecord:
    """A federation relationship with a foreign trust domain and its last good bundle."""

    trust_domain: str  # the foreign trust domain's name ("other.example")
    endpoint_url: str  # https URL of its bundle endpoint
    profile: str  # "https_spiffe" | "https_web"
    endpoint_spiffe_id: str  # https_spiffe: the SPIFFE ID the endpoint must present; else ""
    bundle: str  # the last good bundle, SPIFFE bundle JSON (the bootstrap one first)
    sequence: int  # its spiffe_sequence: a refreshed bundle may not go below it
    refreshed_at: dt.datetime | None  # when the endpoint last served a good bundle
    next_refresh_at: dt.datetime  # when the bundle is fetched next
    last_error: str  # why the last refresh failed; "" when it succeeded
    created_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyReportRecord:
    proxy_id: str  # the reporting proxy instance
    spiffe_id: str  # the workload identity it serves
    acked_version: int  # newest policy version it acknowledged (reports and ACKs)
    report: str  # its latest status report, JSON (trustd.policy.status.ProxyStatus)
    server_id: str  # the server its agent relayed the report through
    updated_at: dt.datetime  # when a server last heard from it (freshness)


class AuditMirrorStore(Protocol):
    """Audit chains mirrored from each server's log (exact lines; checkpoints by line
    number): the part of the store trustd.audit.mirror ships to and reads from."""

    def audit_mirror_head(self, server_id: str) -> int: ...
    def mirror_audit_events(self, server_id: str, rows: Sequence[tuple[int, str, str]]) -> None: ...
    def audit_mirror_checkpoint_count(self, server_id: str) -> int: ...
    def mirror_audit_checkpoints(
        self, server_id: str, first: int, lines: Sequence[str]
    ) -> None: ...
    def mirror_audit_key(self, server_id: str, key_file: str) -> None: ...
    def audit_mirror_servers(self) -> list[str]: ...
    def audit_mirror_lines(
        self, server_id: str, *, after: int, limit: int
    ) -> list[tuple[int, str]]: ...
    def audit_mirror_checkpoint_lines(self, server_id: str) -> list[str]: ...
    def audit_mirror_key(self, server_id: str) -> str | None: ...


class Store(AuditMirrorStore, Protocol):
    kind: str

    # registration entries
    def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry: ...
    def get_entry(self, entry_id: str) -> RegistrationEntry: ...
    def list_entries(self) -> list[RegistrationEntry]: ...
    def delete_entry(self, entry_id: str) -> RegistrationEntry: ...
    def find_entries_by_spiffe_id(self, spiffe_id: str) -> list[RegistrationEntry]: ...
    def entry_changes_since(self, revision: int) -> tuple[int, list[EntryChange]]: ...

    # CA authorities
    def save_authority(self, record: AuthorityRecord) -> None: ...
    def list_authorities(self) -> list[AuthorityRecord]: ...
    def replace_authorities(
        self,
        records: Sequence[AuthorityRecord],
        *,
        expect: str | None = None,
        before_write: Callable[[], None] | None = None,
        bump: str | None = None,
    ) -> bool: ...
    def delete_authority(self, authority_id: str) -> None: ...

    # ledger of issued certificates
    def record_issued(self, record: LedgerRecord) -> None: ...
    def record_issued_many(self, records: Sequence[LedgerRecord]) -> None: ...
    def list_issued(self, *, authority_id: str | None = None) -> list[LedgerRecord]: ...
    def latest_not_after(self, authority_id: str) -> dt.datetime | None: ...

    # join tokens and agents
    def create_token(self, record: JoinTokenRecord) -> None: ...
    def consume_token(self, token_hash: str, agent_id: str, now: dt.datetime) -> bool: ...
    def release_token(self, token_hash: str, agent_id: str) -> bool: ...
    def save_agent(self, record: AgentRecord) -> None: ...
    def get_agent(self, agent_id: str) -> AgentRecord: ...
    def list_agents(self) -> list[AgentRecord]: ...

    # federation relationships (trust domain -> endpoint and last good bundle)
    def create_federation(self, record: FederationRecord) -> None: ...
    def get_federation(self, trust_domain: str) -> FederationRecord: ...
    def list_federations(self) -> list[FederationRecord]: ...
    def update_federation(self, record: FederationRecord, *, expect_sequence: int) -> bool: ...
    def delete_federation(self, trust_domain: str) -> None: ...

    # small named documents: policy set, rollout state, bundle sequence, audit key ref
    def get_doc(self, key: str) -> str | None: ...
    def put_doc(self, key: str, value: str, *, expect: str | None = ...) -> bool: ...
    def bump_counter(self, key: str) -> int: ...

    # proxy reports, shared by every server (a proxy silent for long ages out)
    def save_proxy_report(self, record: ProxyReportRecord) -> None: ...
    def ack_proxy(self, proxy_id: str, version: int, now: dt.datetime) -> bool: ...
    def list_proxy_reports(
        self, *, since: dt.datetime | None = None
    ) -> list[ProxyReportRecord]: ...
    def delete_proxy_report(self, proxy_id: str) -> None: ...
    def prune_proxy_reports(self, before: dt.datetime) -> int: ...

    # leases: one holder at a time, lost when it expires
    def take_lease(self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...

    def check(self) -> None: ...
    def close(self) -> None: ...
