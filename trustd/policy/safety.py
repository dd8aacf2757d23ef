"""The "would this drop traffic?" check, and ``policy diff``.

Proxies pick up a new version at different moments, so for every client and
server the proxies report, a change is safe only when *each* of the client's
transports (before, after) is accepted by *each* of the server's modes (before,
after). On top of that, a server going STRICT must not have plaintext
connections open or accepted recently, and an AuthorizationPolicy change must
not deny a call that a reporting client makes (by the identity it presents: its
SPIFFE ID over mTLS, none over plaintext) or plaintext that a server still
sees. Workloads with no reporting proxy are not known to the check: it protects
the traffic it can see.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trustd.policy.effective import PeerMode, PolicySet, Transport
from trustd.policy.model import PolicyObject, dump
from trustd.policy.status import ProxyStatus

RECENT_PLAINTEXT = dt.timedelta(minutes=1)  # plaintext accepted this recently still counts


def check_change(
    current: PolicySet,
    proposed: PolicySet,
    statuses: Sequence[ProxyStatus],
    *,
    now: dt.datetime,
    recent: dt.timedelta = RECENT_PLAINTEXT,
    require_converged: bool = True,
) -> list[str]:
    """Every reason the change from ``current`` to ``proposed`` would drop traffic.

    An empty list means the change is safe for every reporting proxy. With
    ``require_converged``, a proxy that has not acknowledged ``current`` yet is a
    reason too: what it still runs is not known here.
    """
    reasons = _not_converged(current, statuses) if require_converged else []
    reasons += _transport_reasons(current, proposed, statuses)
    reasons += _strict_with_plaintext(current, proposed, statuses, now=now, recent=recent)
    reasons += authz_reasons(current, proposed, statuses, now=now, recent=recent)
    return list(dict.fromkeys(reasons))


def _not_converged(current: PolicySet, statuses: Sequence[ProxyStatus]) -> list[str]:
    behind = sorted(st.proxy_id for st in statuses if st.acked_version < current.version)
    if not behind:
        return []
    return [
        f"{len(behind)} proxy(ies) still run a version older than {current.version} "
        f"({', '.join(behind[:10])}): wait until `trustd policy status` shows every "
        "proxy on the current version"
    ]


def _transport_reasons(
    current: PolicySet, proposed: PolicySet, statuses: Sequence[ProxyStatus]
) -> list[str]:
    """Clients whose transport (before or after) a server's mode (before or after) refuses."""
    servers: dict[tuple[str, int], list[str]] = {}
    for st in statuses:
        for ib in st.inbound:
            servers.setdefault((str(st.spiffe_id), ib.port), []).append(st.proxy_id)
    reasons: list[str] = []
    for st in statuses:
        for dest in st.destinations:
            before = current.client_transport(st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id)
            after = proposed.client_transport(st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id)
            instances: list[str | None] = list(servers.get((str(dest.spiffe_id), dest.port), []))
            for inst in instances or [None]:
                modes = {
                    current.peer_mode(dest.spiffe_id, dest.port, inst),
                    proposed.peer_mode(dest.spiffe_id, dest.port, inst),
                }
                reasons += [
                    _incompatible(st, dest.spiffe_id, dest.port, transport, mode)
                    for transport in (before, after)
                    for mode in sorted(modes)
                    if not transport.compatible_with(mode)
                ]
    return reasons


def _strict_with_plaintext(
    current: PolicySet,
    proposed: PolicySet,
    statuses: Sequence[ProxyStatus],
    *,
    now: dt.datetime,
    recent: dt.timedelta,
) -> list[str]:
    """Server ports the change makes STRICT while they still see plaintext."""
    reasons: list[str] = []
    for st in statuses:
        for ib in st.inbound:
            was = current.peer_mode(st.spiffe_id, ib.port, st.proxy_id)
            will = proposed.peer_mode(st.spiffe_id, ib.port, st.proxy_id)
            if will is not PeerMode.STRICT or was is PeerMode.STRICT:
                continue
            recent_plain = ib.last_plaintext_at is not None and now - ib.last_plaintext_at < recent
            if ib.plaintext_active or recent_plain:
                reasons.append(
                    f"server {st.spiffe_id} port {ib.port} (proxy {st.proxy_id}) would go STRICT "
                    f"while it still sees plaintext ({ib.plaintext_active} open connection(s), "
                    f"last accepted {_ago(ib.last_plaintext_at, now)}): move its clients to mTLS "
                    "and wait for the plaintext to drain"
                )
    return reasons


def authz_reasons(
    current: PolicySet,
    proposed: PolicySet,
    statuses: Sequence[ProxyStatus],
    *,
    now: dt.datetime,
    recent: dt.timedelta = RECENT_PLAINTEXT,
) -> list[str]:
    """Calls the proxies report that the current policy allows and the proposed denies."""
    reasons: list[str] = []
    for st in statuses:
        for dest in st.destinations:
            now_t = current.client_transport(st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id)
            then_t = proposed.client_transport(st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id)
            now_peer = st.spiffe_id if now_t is Transport.MTLS else None
            if not current.authorize(dest.spiffe_id, dest.port, now_peer).allowed:
                continue  # denied already: nothing flows that the change could drop
            for transport in dict.fromkeys((now_t, then_t)):  # both, while proxies catch up
                peer = st.spiffe_id if transport is Transport.MTLS else None
                verdict = proposed.authorize(dest.spiffe_id, dest.port, peer)
                if not verdict.allowed:
                    who = f"client {st.spiffe_id} (proxy {st.proxy_id}, {transport.value})"
                    reasons.append(
                        f"{who} calls {dest.spiffe_id} port {dest.port}, which the change would "
                        f"deny ({verdict.reason}): allow it first, or stop the client"
                    )
    for st in statuses:
        for ib in st.inbound:
            recent_plain = ib.last_plaintext_at is not None and now - ib.last_plaintext_at < recent
            if not (ib.plaintext_active or recent_plain):
                continue
            if not current.authorize(st.spiffe_id, ib.port, None).allowed:
                continue
            verdict = proposed.authorize(st.spiffe_id, ib.port, None)
            if not verdict.allowed:
                reasons.append(
                    f"server {st.spiffe_id} port {ib.port} (proxy {st.proxy_id}) still sees "
                    f"plaintext ({ib.plaintext_active} open, last accepted "
                    f"{_ago(ib.last_plaintext_at, now)}), which the change would deny "
                    f"({verdict.reason}): move those clients to mTLS first"
                )
    return reasons


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "never"
    return f"{max(0, int((now - when).total_seconds()))}s ago"


def _incompatible(
    client: ProxyStatus, server: object, port: int, transport: Transport, mode: PeerMode
) -> str:
    who = f"client {client.spiffe_id} (proxy {client.proxy_id})"
    if transport is Transport.PLAINTEXT:
        return (
            f"server {server} port {port} would be STRICT while {who} still sends plaintext: "
            "move the client to mTLS first (a PERMISSIVE server lets AUTO clients follow)"
        )
    return (
        f"{who} would use mTLS to {server} port {port}, which does not accept TLS ({mode}): "
        "make the server PERMISSIVE first, or move the client to plaintext before the server"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectChange:
    ref: str  # Kind/namespace/name
    change: str  # "added", "removed" or "changed"
    fields: tuple[str, ...] = ()  # for "changed": "spec.mtls.mode: 'PERMISSIVE' -> 'STRICT'"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyDiff:
    objects: tuple[ObjectChange, ...]  # per object, sorted by ref
    client_tls_off_global: tuple[bool, bool] | None  # (before, after) when it changes

    @property
    def is_empty(self) -> bool:
        return not self.objects and self.client_tls_off_global is None

    def lines(self) -> list[str]:
        out: list[str] = []
        for ch in self.objects:
            mark = {"added": "+", "removed": "-", "changed": "~"}[ch.change]
            out.append(f"{mark} {ch.ref}")
            out.extend(f"    {f}" for f in ch.fields)
        if self.client_tls_off_global is not None:
            before, after = self.client_tls_off_global
            out.append(f"~ client-tls off --global: {before} -> {after}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": [
                {"ref": c.ref, "change": c.change, "fields": list(c.fields)} for c in self.objects
            ],
            "clientTlsOffGlobal": list(self.client_tls_off_global)
            if self.client_tls_off_global
            else None,
        }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(data, list):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: data}


def diff_objects(
    old: Sequence[PolicyObject],
    new: Sequence[PolicyObject],
) -> tuple[ObjectChange, ...]:
    before = {o.ref: o for o in old}
    after = {o.ref: o for o in new}
    changes: list[ObjectChange] = []
    for ref in sorted(before.keys() | after.keys()):
        if ref not in after:
            changes.append(ObjectChange(ref=ref, change="removed"))
        elif ref not in before:
            changes.append(ObjectChange(ref=ref, change="added"))
        else:
            a, b = _flatten(dump(before[ref])), _flatten(dump(after[ref]))
            fields = tuple(
                f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k, "(unset)") != b.get(k, "(unset)")
            )
            if fields:
                changes.append(ObjectChange(ref=ref, change="changed", fields=fields))
    return tuple(changes)


def diff(old: PolicySet, new: PolicySet | Sequence[PolicyObject]) -> PolicyDiff:
    """What ``new`` (a policy set, or the objects of a file) changes against ``old``.

    Given bare objects, as ``policy diff -f FILE`` has, the global switch is
    compared as unchanged.
    """
    if isinstance(new, PolicySet):
        objs: Sequence[PolicyObject] = new.objects
        flag = (
            (old.client_tls_off_global, new.client_tls_off_global)
            if old.client_tls_off_global != new.client_tls_off_global
            else None
        )
    else:
        objs, flag = new, None
    return PolicyDiff(objects=diff_objects(old.objects, objs), client_tls_off_global=flag)
