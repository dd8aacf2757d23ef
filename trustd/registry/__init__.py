"""The registry at the centre of the server: registration entries, join tokens and
agents, each operation taking one typed request and writing to the one audit API
(``trustd.audit.AuditSink.append_many``).

The gRPC edges (``trustd.server.admin``, ``trustd.server.agent_api``) only turn
messages into these requests and errors into statuses; ``RegistryUpstream`` is the
same registry as an agent sees it, for ``trustd up``'s in-process agent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from trustd.audit import AuditSink
from trustd.bundle import Bundle
from trustd.clock import Clock
from trustd.registry.agents import AgentRegistry, Issuance, Join, Joined, RenewAgent
from trustd.registry.entries import CreateEntry, EntryRegistry, workload_id
from trustd.registry.tokens import CreatedToken, CreateToken, TokenRegistry
from trustd.store.base import Store


class Registry:
    """Entries, tokens and agents over one store and one audit sink."""

    def __init__(
        self,
        *,
        store: Store,
        audit: AuditSink,
        clock: Clock,
        issuance: Issuance,
        max_ttl: dt.timedelta,
        notify: Callable[[str], None],
        federated_bundles: Callable[[], Sequence[Bundle]] | None = None,
    ) -> None:
        self._issuance = issuance
        self._federated = federated_bundles  # the foreign bundles in force (federation)
        self.tokens = TokenRegistry(store=store, audit=audit, clock=clock)
        self.entries = EntryRegistry(
            store=store,
            audit=audit,
            clock=clock,
            trust_domain=issuance.trust_domain,
            max_ttl=max_ttl,
            notify=notify,
        )
        self.agents = AgentRegistry(
            store=store,
            audit=audit,
            clock=clock,
            tokens=self.tokens,
            issuance=issuance,
            notify=notify,
        )

    def bundle(self) -> Bundle:
        return self._issuance.bundle()

    def bundles(self) -> tuple[Bundle, ...]:
        """The own bundle first, then every federated trust domain's bundle in force."""
        own = self._issuance.bundle()
        foreign = tuple(self._federated()) if self._federated is not None else ()
        return (own, *(b for b in foreign if b.trust_domain != own.trust_domain))


__all__ = [
    "AgentRegistry",
    "CreateEntry",
    "CreateToken",
    "CreatedToken",
    "EntryRegistry",
    "Join",
    "Joined",
    "Registry",
    "RenewAgent",
    "TokenRegistry",
    "workload_id",
]
