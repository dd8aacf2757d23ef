"""The CLI prints from the admin API's messages exactly what the policy engine's own
documents say: the same keys, in the same order, with the same values (so -o json and
-o yaml are byte for byte what they were when the documents themselves travelled)."""

from __future__ import annotations

import datetime as dt
import json

from trustd.api.convert import proxy_status_message, proxy_status_of
from trustd.cli import views
from trustd.policy.effective import ClientMode, Overlay, PeerMode, PolicySet
from trustd.policy.loader import load_text
from trustd.policy.rollout import RolloutState, RolloutStatus, Target
from trustd.policy.safety import diff
from trustd.policy.status import Destination, InboundStats, ProxyStatus
from trustd.server.admin_policy import diff_message, enforcement, rollout_message, show_message
from trustd.spiffeid import SpiffeId

TEXT = """apiVersion: trustd.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: trustd-system}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: trustd.io/v1alpha1
kind: PeerAuthentication
metadata: {name: db, namespace: shop}
spec:
  selector: {spiffeIds: ["spiffe://trustd.local/ns/shop/sa/db"]}
  mtls: {mode: STRICT}
  portLevelMtls: {"3306": {mode: DISABLE}}
---
apiVersion: trustd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{principals: ["spiffe://trustd.local/ns/x/**"]}]}]
"""
DB = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/db")
WEB = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/web")
AT = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _policy() -> PolicySet:
    ps = PolicySet.empty().successor(objects=tuple(load_text(TEXT, source="t")))
    overlay = Overlay(
        name="rollout:spiffe://trustd.local/ns/shop/**",
        selector="spiffe://trustd.local/ns/shop/**",
        server_mode=PeerMode.PERMISSIVE,
        client_mode=ClientMode.AUTO,
        canary_instances=frozenset({"db-1"}),
        since=1,
    )
    return ps.successor(overlays=(overlay,))


def _statuses() -> list[ProxyStatus]:
    return [
        ProxyStatus(
            proxy_id="db-1",
            spiffe_id=DB,
            acked_version=1,
            inbound=(
                InboundStats(port=3306, mode="DISABLE", mode_version=1, plaintext_total=4),
                InboundStats(port=5432, plaintext_active=1, last_plaintext_at=AT),
            ),
            reported_at=AT,
        ),
        ProxyStatus(
            proxy_id="web-1",
            spiffe_id=WEB,
            acked_version=2,
            destinations=(Destination(spiffe_id=DB, port=3306, transport="plaintext"),),
        ),
    ]


def test_policy_show_prints_what_policyset_show_says() -> None:
    ps = _policy()
    for port in (None, 3306, 5432):
        shown = ps.show(DB, port)
        assert views.policy_show(show_message(shown)) == shown
        assert json.dumps(views.policy_show(show_message(shown))) == json.dumps(shown)


def test_policy_status_rows_keep_their_keys_per_side() -> None:
    ps, statuses = _policy(), _statuses()
    rows = enforcement(ps, statuses)
    shown = [views._status_row(r) for r in rows]
    server = ps.peer_mode(DB, 3306, "db-1").value
    assert shown[0] == {
        "proxyId": "db-1", "spiffeId": str(DB), "side": "server", "port": 3306,
        "enforced": "DISABLE", "policy": server, "plaintextTotal": 4, "tlsTotal": 0,
        "plaintextSinceMode": 0, "agrees": True,  # not acknowledged the current version yet
    }  # fmt: skip
    assert ps.version == 2 and server != "DISABLE"
    assert shown[1]["enforced"] is None and shown[1]["port"] == 5432
    assert list(shown[2]) == [
        "proxyId", "spiffeId", "side", "destination", "port", "enforced", "policy",
        "mtlsTotal", "plaintextTotal", "agrees",
    ]  # fmt: skip
    assert [proxy_status_of(proxy_status_message(s)).to_json() for s in statuses] == [
        s.to_json() for s in statuses
    ]


def test_rollout_status_prints_what_the_engine_reports() -> None:
    st = RolloutStatus(
        id="r-1",
        state=RolloutState.FAILED,
        step="servers PERMISSIVE",
        step_index=0,
        phase="canary",
        target=Target.STRICT,
        selector="spiffe://trustd.local/ns/shop/**",
        canary=1,
        canary_instances=("db-1",),
        policy_version=None,
        waiting_for=("db-1",),
        not_enforced=("db-1 port 3306 enforces DISABLE",),
        enforcement=(
            {
                "proxyId": "db-1",
                "spiffeId": str(DB),
                "side": "server",
                "port": 3306,
                "enforced": None,
                "wanted": "PERMISSIVE",
                "plaintextSinceMode": 2,
                "ok": False,
                "text": "db-1 port 3306 enforces DISABLE",
            },
            {
                "proxyId": "web-1",
                "spiffeId": str(WEB),
                "side": "client",
                "destination": str(DB),
                "port": 3306,
                "enforced": "plaintext",
                "wanted": None,
                "ok": True,
                "text": "web-1 -> db",
            },
        ),
        reason="step timed out",
        started_at=AT,
        updated_at=AT + dt.timedelta(minutes=5),
    )
    assert views.rollout(rollout_message(st)) == st.to_json()
    assert json.dumps(views.rollout(rollout_message(st))) == json.dumps(st.to_json())
    done = RolloutStatus(**{**{f: getattr(st, f) for f in st.__dataclass_fields__},
                            "state": RolloutState.COMPLETE, "policy_version": 7, "reason": None})  # fmt: skip
    assert views.rollout(rollout_message(done)) == done.to_json()


def test_policy_diff_prints_the_change_set() -> None:
    ps = _policy()
    proposed = load_text(TEXT.replace("mode: STRICT", "mode: PERMISSIVE"), source="t")
    change = diff(ps, proposed)
    msg = diff_message(change)
    expected = {"empty": change.is_empty, "lines": change.lines(), **change.to_json()}
    assert views.policy_diff(msg) == expected
    assert not change.is_empty
