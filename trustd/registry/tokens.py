"""One-time join tokens: created by an admin, spent by exactly one agent join.

A token is shown once, to the admin who made it; only its salted HMAC is stored
and audited, so neither the store nor the audit log can give it back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from trustd import durations
from trustd.audit import AuditSink, record_failure
from trustd.audit.events import Actor
from trustd.audit.sink import event, record
from trustd.ca.errors import InvalidTtlError
from trustd.clock import Clock
from trustd.store.base import JoinTokenRecord, Store

ADMIN_TOKEN_CREATE = "admin.token.create"  # noqa: S105 - an event type, not a secret
MAX_TOKEN_TTL = dt.timedelta(days=1)
DEFAULT_TOKEN_TTL = dt.timedelta(minutes=10)
_KEY_DOC = "token.hmac_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateToken:
    ttl: dt.timedelta = DEFAULT_TOKEN_TTL  # how long it may be used; 1s to MAX_TOKEN_TTL


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedToken:
    token: str  # shown once; a bearer secret until it is used or expires
    expires_at: dt.datetime

    def __repr__(self) -> str:
        return f"CreatedToken(expires_at={self.expires_at.isoformat()})"


class TokenRegistry:
    def __init__(self, *, store: Store, audit: AuditSink, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._key = self._load_key()

    def _load_key(self) -> bytes:
        existing = self._store.get_doc(_KEY_DOC)
        if existing is None:
            self._store.put_doc(_KEY_DOC, secrets.token_hex(32), expect=None)
            existing = self._store.get_doc(_KEY_DOC)
        assert existing is not None
        return bytes.fromhex(existing)

    def hmac(self, token: str) -> str:
        """The salted HMAC under which a join token is stored and audited."""
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def create(self, actor: Actor, request: CreateToken) -> CreatedToken:
        ttl = request.ttl
        if ttl <= dt.timedelta(0) or ttl > MAX_TOKEN_TTL:
            exc = InvalidTtlError(
                f"token ttl must be between 1s and {durations.format(MAX_TOKEN_TTL)}"
            )
            record_failure(
                self._audit,
                event(
                    type_=ADMIN_TOKEN_CREATE, actor=actor, action="create", resource="token",
                    outcome="failure", reason=str(exc),
                ),
            )  # fmt: skip
            raise exc
        token = secrets.token_urlsafe(32)
        digest = self.hmac(token)
        now = self._clock.now()
        self._audit.check()
        self._store.create_token(
            JoinTokenRecord(token_hash=digest, expires_at=now + ttl, created_at=now)
        )
        record(
            self._audit,
            event(
                type_=ADMIN_TOKEN_CREATE,
                actor=actor,
                action="create",
                resource=f"token/{digest[:16]}",
                details={"token_hmac": digest, "expires_at": (now + ttl).isoformat()},
            ),
        )
        return CreatedToken(token=token, expires_at=now + ttl)

    def consume(self, digest: str, agent_id: str) -> bool:
        """Spend the token with this HMAC for ``agent_id``: True for exactly one caller."""
        return self._store.consume_token(digest, agent_id, self._clock.now())

    def release(self, digest: str, agent_id: str) -> bool:
        """Make a token spent by a join that then failed usable again."""
        return self._store.release_token(digest, agent_id)
