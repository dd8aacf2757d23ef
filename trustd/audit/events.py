"""What an audit event says: who (``Actor``), did what (``AuditEvent``), and the guards
that keep secrets out of the log.

The actor is who the kernel or mTLS says the caller is (uid and executable on a
Unix socket, SPIFFE ID over mTLS), never what the caller claims. Tokens appear
only as salted HMACs (``hmac_token``); an event whose details hold a PEM private
key, a raw token, a password or a PIN is refused with ``AuditSecretError`` so the
action that tried to record it fails instead of leaking it.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import hmac
import math
import pwd
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from trustd.audit.errors import AuditEventError, AuditSecretError

ActorKind = Literal["unix", "spiffe", "system"]
Outcome = Literal["success", "failure"]
ACTOR_KINDS: frozenset[str] = frozenset(get_args(ActorKind))
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))

# Event types trustd emits, one taxonomy (README "What an event holds"):
# - admin.<noun>.<verb>: an action someone asked for on the admin API (the CLI), whatever
#   its outcome: a refused revoke is admin.authority.revoke with outcome failure;
# - <noun>.<verb> without the prefix: trustd's own doing (automatic CA rotation, rollout
#   progress, the audit log itself) or a workload's and agent's requests (svid.*, agent.*),
#   and what proxies report (proxy.connection.deny).
# Others are accepted when they are dotted lower-case names; exporters map these by name.
ADMIN_ENTRY_CREATE = "admin.entry.create"
ADMIN_ENTRY_DELETE = "admin.entry.delete"
ADMIN_TOKEN_CREATE = "admin.token.create"  # noqa: S105 - an event type, not a secret
ADMIN_SVID_MINT = "admin.svid.mint"
ADMIN_AGENT_EVICT = "admin.agent.evict"
ADMIN_AUTHORITY_PREPARE = "admin.authority.prepare"
ADMIN_AUTHORITY_ACTIVATE = "admin.authority.activate"
ADMIN_AUTHORITY_TAINT = "admin.authority.taint"
ADMIN_AUTHORITY_REVOKE = "admin.authority.revoke"
ADMIN_POLICY_APPLY = "admin.policy.apply"
ADMIN_POLICY_CLIENT_TLS = "admin.policy.client_tls"
ADMIN_ROLLOUT_START = "admin.rollout.start"  # and .pause, .resume, .abort
ADMIN_AUDIT_EXPORT = "admin.audit.export"
SVID_ISSUE = "svid.issue"
SVID_DENY = "svid.deny"
AGENT_JOIN = "agent.join"
AGENT_RENEW = "agent.renew"
AUTHORITY_PREPARE = "authority.prepare"  # automatic rotation
AUTHORITY_ACTIVATE = "authority.activate"
ROLLOUT_STEP = "rollout.step"
PROXY_CONNECTION_DENY = "proxy.connection.deny"
AUDIT_TORN_TAIL = "audit.torn_tail"  # a torn last line was set aside at start
# the names the types had before the taxonomy, kept so that callers keep importing them
AGENT_EVICT = ADMIN_AGENT_EVICT
AUTHORITY_TAINT = ADMIN_AUTHORITY_TAINT
AUTHORITY_REVOKE = ADMIN_AUTHORITY_REVOKE
POLICY_APPLY = ADMIN_POLICY_APPLY
AUDIT_EXPORT = ADMIN_AUDIT_EXPORT

HMAC_PREFIX = "hmac-sha256:"

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_MAX_TYPE_LEN = 64
_MAX_TEXT_LEN = 4096  # action, resource, reason, actor id/addr
_MAX_DEPTH = 16

# A PEM private key of any flavour: PKCS#8, encrypted PKCS#8, SEC1 EC, PKCS#1 RSA, OpenSSH.
_PEM_PRIVATE_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# Bearer credentials that have a recognisable shape: Vault/OpenBao service, batch and
# recovery tokens (hvs./hvb./hvr. and the legacy s./b./r. forms), JWTs, HTTP bearer values.
_TOKEN_RE = re.compile(
    r"(?:^|[^A-Za-z0-9_.-])(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."
    r"|(?i:\bbearer\s+[A-Za-z0-9._~+/-]{16,})"
)
# Words in a details key that mark its value as a secret ...
_SECRET_WORDS = frozenset(
    {
        "token",
        "password",
        "passwd",
        "secret",
        "pin",
        "passphrase",
        "kek",
        "credential",
        "credentials",
        "bearer",
        "authorization",
        "cookie",
        "privkey",
        "apikey",
    }
)
_SECRET_JOINED = ("privatekey", "apikey", "jointoken", "sopin", "userpin")
# ... unless another word says the value is only about the secret, not the secret itself.
_QUALIFIER_WORDS = frozenset(
    {
        "hmac",
        "hash",
        "sha256",
        "fingerprint",
        "id",
        "ttl",
        "expiry",
        "expires",
        "expiration",
        "at",
        "count",
        "type",
        "kind",
        "name",
        "label",
        "path",
        "file",
        "ref",
        "len",
        "length",
        "version",
        "source",
        "used",
        "set",
        "configured",
    }
)
_WORD_SPLIT_RE = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who did it, as the transport proved it."""

    kind: ActorKind  # "unix" (kernel peer credentials), "spiffe" (mTLS peer), "system" (trustd itself)
    id: str  # the SPIFFE ID, the caller's executable path (or "uid:N"), or the component name
    uid: int | None = None  # the caller's uid on a Unix socket; None otherwise
    addr: str | None = None  # "IP:PORT" of an mTLS peer, the socket path for Unix callers, or None

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise AuditEventError(
                f"invalid actor kind {self.kind!r}: use one of {', '.join(sorted(ACTOR_KINDS))}"
            )
        if not isinstance(self.id, str) or not self.id or len(self.id) > _MAX_TEXT_LEN:
            raise AuditEventError("actor id must be a non-empty string of at most 4096 characters")
        if self.uid is not None and (
            isinstance(self.uid, bool) or not isinstance(self.uid, int) or self.uid < 0
        ):
            raise AuditEventError("actor uid must be a non-negative integer or None")
        if self.addr is not None and (not isinstance(self.addr, str) or len(self.addr) > 1024):
            raise AuditEventError("actor addr must be a string of at most 1024 characters or None")

    @classmethod
    def unix(cls, *, uid: int, addr: str | None = None) -> Actor:
        """A local caller on a Unix socket, as the kernel names it: its user (``id`` is the
        user name, or ``uid:N`` without one; ``uid`` the number), ``addr`` the socket. Not
        the executable: for every CLI call that is the Python interpreter, not the admin."""
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid:{uid}"
        return cls(kind="unix", id=name, uid=uid, addr=addr)

    @classmethod
    def spiffe(cls, spiffe_id: str, *, addr: str | None = None) -> Actor:
        """A peer authenticated by its X.509-SVID over mTLS."""
        return cls(kind="spiffe", id=str(spiffe_id), addr=addr)

    @classmethod
    def system(cls, component: str = "trustd") -> Actor:
        """trustd acting on its own (rotation, retention, rollout steps)."""
        return cls(kind="system", id=component)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "uid": self.uid, "addr": self.addr}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One thing to record. The log adds id, seq, time, prev_hash and hash.

    ``details`` is normalised on construction: keys sorted, datetimes turned into
    RFC 3339 UTC text, enums into their values, tuples into lists. Anything that is
    not JSON data, or that looks like a secret, raises ``AuditEventError`` /
    ``AuditSecretError``.
    """

    type: str  # dotted lower-case event type, e.g. "svid.issue", "admin.entry.create"
    actor: Actor  # who did it, as the kernel or mTLS proved
    action: str  # the operation, e.g. "create", "issue", "MintX509SVID"
    resource: str = ""  # what it was done to: a SPIFFE ID, entry id, authority id, policy name
    outcome: Outcome = "success"  # "success" or "failure"
    reason: str = ""  # why it failed or was denied; empty on plain success
    details: Mapping[str, Any] = field(default_factory=dict)  # extra JSON data (serial, not_after)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not _type_ok(self.type):
            raise AuditEventError(
                f"invalid audit event type {str(self.type)[:80]!r}: "
                "use a dotted lower-case name such as svid.issue"
            )
        if not isinstance(self.actor, Actor):
            raise AuditEventError("audit event actor must be an Actor")
        if self.outcome not in OUTCOMES:
            raise AuditEventError(
                f"invalid audit outcome {str(self.outcome)[:40]!r}: use success or failure"
            )
        for name in ("action", "resource", "reason"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _MAX_TEXT_LEN:
                raise AuditEventError(f"audit event {name} must be a string of at most 4096 chars")
        if not self.action:
            raise AuditEventError("audit event action must not be empty")
        if not isinstance(self.details, Mapping):
            raise AuditEventError("audit event details must be a mapping")
        details = _normalise(self.details, "details", 0)
        assert isinstance(details, dict)
        object.__setattr__(self, "details", details)
        for name in ("action", "resource", "reason"):
            _check_text(getattr(self, name), name)
        _check_text(self.actor.id, "actor.id")
        if self.actor.addr is not None:
            _check_text(self.actor.addr, "actor.addr")


def hmac_token(secret: str, salt_key: bytes) -> str:
    """The only form in which a token may appear in an event: ``hmac-sha256:<hex>``.

    ``salt_key`` is a per-deployment random key (``AuditLog.token_hmac`` uses the
    log's own), so the same token always maps to the same value in one deployment
    and cannot be brute-forced from an export alone.
    """
    if not isinstance(salt_key, bytes | bytearray) or len(salt_key) < 16:
        raise AuditEventError("the token HMAC key must be at least 16 random bytes")
    digest = hmac.new(bytes(salt_key), secret.encode("utf-8"), hashlib.sha256).hexdigest()
    return HMAC_PREFIX + digest


def is_hmac_token(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith(HMAC_PREFIX)
        and len(value) == len(HMAC_PREFIX) + 64
        and all(c in "0123456789abcdef" for c in value[len(HMAC_PREFIX) :])
    )


def check_no_secrets(details: Mapping[str, Any]) -> None:
    """Raise ``AuditSecretError`` when ``details`` holds what looks like a secret.

    Refused: PEM private keys anywhere; strings shaped like Vault/OpenBao tokens,
    JWTs or bearer credentials anywhere; and any value under a key that names a
    secret (``token``, ``join_token``, ``password``, ``pin``, ``private_key``,
    ``secret_id`` ...) unless it is an ``hmac_token`` or null/bool. Keys that only
    describe a secret (``token_id``, ``token_ttl``, ``pin_file``, ``token_hmac``)
    are allowed. ``AuditEvent`` runs this on construction.
    """
    _normalise(details, "details", 0)


@functools.lru_cache(maxsize=1024)
def _type_ok(event_type: str) -> bool:
    return len(event_type) <= _MAX_TYPE_LEN and _TYPE_RE.fullmatch(event_type) is not None


@functools.lru_cache(maxsize=4096)
def _key_is_secret(key: str) -> bool:
    words = [w.lower() for w in _WORD_SPLIT_RE.split(key) if w]
    if not words:
        return False
    joined = "".join(words)
    if joined.endswith("secretid"):
        return True  # an AppRole secret_id: "id" is part of the secret's name here
    if any(w in _QUALIFIER_WORDS for w in words):
        return False
    return any(w in _SECRET_WORDS for w in words) or any(s in joined for s in _SECRET_JOINED)


def _check_text(value: str, where: str) -> None:
    if "PRIVATE KEY" in value and _PEM_PRIVATE_RE.search(value):
        raise AuditSecretError(
            f"audit event {where} contains a PEM private key: record the key id or fingerprint"
        )
    # Substring tests first (10x cheaper than any regex): the regex only runs on the few
    # strings that could match.
    if (
        "s." in value
        or "b." in value
        or "r." in value
        or "eyJ" in value
        or "earer" in value
        or "EARER" in value
    ) and _TOKEN_RE.search(value):
        raise AuditSecretError(
            f"audit event {where} contains what looks like a raw token: "
            "record hmac_token(token) instead"
        )


def _normalise(value: Any, where: str, depth: int) -> Any:
    """JSON data with sorted keys, or AuditEventError / AuditSecretError."""
    if depth > _MAX_DEPTH:
        raise AuditEventError(f"audit event {where} is nested too deeply (max {_MAX_DEPTH})")
    t = type(value)  # exact types first: this runs for every field of every event
    if t is str:
        _check_text(value, where)
        return value
    if t is int or t is bool or value is None:
        return value
    if t is dict:
        return _normalise_mapping(value, where, depth)
    if t is dt.datetime and value.tzinfo is not None:
        return format_time(value)
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        _check_text(value, where)
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditEventError(f"audit event {where} must be a finite number")
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise AuditEventError(f"audit event {where} must be a timezone-aware datetime")
        return format_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return _normalise_mapping(value, where, depth)
    if isinstance(value, list | tuple):
        return [_normalise(v, f"{where}[]", depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        raise AuditEventError(
            f"audit event {where} is raw bytes: record a hex fingerprint or an id instead"
        )
    raise AuditEventError(
        f"audit event {where} has a value of type {type(value).__name__}: use JSON data"
    )


def _normalise_mapping(value: Mapping[Any, Any], where: str, depth: int) -> dict[str, Any]:
    for key in value:
        if type(key) is not str:
            raise AuditEventError(f"audit event {where} keys must be strings")
    out: dict[str, Any] = {}
    for key in sorted(value):
        item = value[key]
        child = f"{where}.{key}"
        if _key_is_secret(key) and not (
            item is None or isinstance(item, bool) or is_hmac_token(item)
        ):
            raise AuditSecretError(
                f"audit event {child[:120]} looks like a secret: "
                "record hmac_token(value) or leave it out"
            )
        out[key] = _normalise(item, child, depth + 1)
    return out


def format_time(when: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: fixed width, so text order is time order."""
    text = when.isoformat(timespec="microseconds")
    if text.endswith("+00:00") and len(text) == 32:
        return text[:26] + "Z"
    return when.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class AuditSink(Protocol):
    """Where actions record their events: the one audit API. ``append_many`` fails loudly
    (``AuditWriteError``, an ``UnavailableError``) and the action waits for it, so nothing
    happens unrecorded. ``AuditLog`` is one; ``MemoryAuditSink`` keeps events for tests."""

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Write the events in one write, all or none; return their seqs."""
        ...

    def check(self) -> None:
        """Raise ``UnavailableError`` when an event could not be written right now."""
        ...
