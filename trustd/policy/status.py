"""What proxies report back: the policy version they run and what they see.

The rollout engine and the "would drop traffic" check read these. A proxy
sends one :class:`ProxyStatus` periodically and whenever it acknowledges a
policy version; the control plane keeps the latest per ``proxy_id``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trustd.spiffeid import SpiffeId

# Enforced modes are reported as plain strings (PeerMode / Transport values): this module
# sits below trustd.policy.effective and must not import it.


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundStats:
    port: int  # the inbound listener port (the port policy is evaluated for)
    plaintext_active: int = 0  # plaintext connections open now
    plaintext_total: int = 0  # plaintext connections accepted since the proxy started
    tls_active: int = 0  # mTLS connections open now
    tls_total: int = 0  # mTLS connections accepted since the proxy started
    last_plaintext_at: dt.datetime | None = None  # when the last plaintext connection was accepted
    # What the listener enforces for new connections now ("STRICT", "PERMISSIVE" or
    # "DISABLE"; None: not known, e.g. a proxy that predates the field), the policy version
    # it took effect in, and how many plaintext connections were accepted since then.
    mode: str | None = None
    mode_version: int | None = None
    plaintext_since_mode: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "mode": self.mode,
            "modeVersion": self.mode_version,
            "plaintextSinceMode": self.plaintext_since_mode,
            "plaintextActive": self.plaintext_active,
            "plaintextTotal": self.plaintext_total,
            "tlsActive": self.tls_active,
            "tlsTotal": self.tls_total,
            "lastPlaintextAt": self.last_plaintext_at.isoformat()
            if self.last_plaintext_at
            else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InboundStats:
        last = data.get("lastPlaintextAt")
        return cls(
            port=int(data["port"]),
            plaintext_active=int(data.get("plaintextActive", 0)),
            plaintext_total=int(data.get("plaintextTotal", 0)),
            tls_active=int(data.get("tlsActive", 0)),
            tls_total=int(data.get("tlsTotal", 0)),
            last_plaintext_at=dt.datetime.fromisoformat(last) if last else None,
            mode=str(data["mode"]) if data.get("mode") else None,
            mode_version=int(data["modeVersion"]) if data.get("modeVersion") is not None else None,
            plaintext_since_mode=int(data.get("plaintextSinceMode", 0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    spiffe_id: SpiffeId  # the server an outbound listener calls
    port: int  # the port it dials (the server proxy's inbound port)
    transport: str | None = None  # what new connections use now: "mtls" or "plaintext"
    mtls_total: int = 0  # connections opened with mTLS since the proxy started
    plaintext_total: int = 0  # connections opened in plaintext since the proxy started

    def to_json(self) -> dict[str, Any]:
        return {
            "spiffeId": str(self.spiffe_id),
            "port": self.port,
            "transport": self.transport,
            "mtlsTotal": self.mtls_total,
            "plaintextTotal": self.plaintext_total,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Destination:
        return cls(
            spiffe_id=SpiffeId.parse(str(data["spiffeId"])),
            port=int(data["port"]),
            transport=str(data["transport"]) if data.get("transport") else None,
            mtls_total=int(data.get("mtlsTotal", 0)),
            plaintext_total=int(data.get("plaintextTotal", 0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyStatus:
    proxy_id: str  # one proxy instance (a sidecar), stable across its restarts if configured
    spiffe_id: SpiffeId  # the workload identity the proxy serves (its SVID)
    acked_version: int  # the newest PolicySet version it applies to new connections
    inbound: tuple[InboundStats, ...] = ()  # one per inbound listener: it is a server
    destinations: tuple[Destination, ...] = ()  # one per outbound listener: it is a client
    reported_at: dt.datetime | None = None  # when the proxy made the report

    @property
    def is_server(self) -> bool:
        return bool(self.inbound)

    def to_json(self) -> dict[str, Any]:
        return {
            "proxyId": self.proxy_id,
            "spiffeId": str(self.spiffe_id),
            "ackedVersion": self.acked_version,
            "inbound": [i.to_json() for i in self.inbound],
            "destinations": [d.to_json() for d in self.destinations],
            "reportedAt": self.reported_at.isoformat() if self.reported_at else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyStatus:
        at = data.get("reportedAt")
        return cls(
            proxy_id=str(data["proxyId"]),
            spiffe_id=SpiffeId.parse(str(data["spiffeId"])),
            acked_version=int(data["ackedVersion"]),
            inbound=tuple(InboundStats.from_json(i) for i in data.get("inbound", ())),
            destinations=tuple(Destination.from_json(d) for d in data.get("destinations", ())),
            reported_at=dt.datetime.fromisoformat(at) if at else None,
        )
