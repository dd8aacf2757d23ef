"""Every message maps to its domain value and back without losing a field."""

from __future__ import annotations

import datetime as dt

import pytest

from trustd.api import convert
from trustd.dataplane.proxy import DenialEvent
from trustd.entries import RegistrationEntry
from trustd.errors import InvalidArgumentError
from trustd.policy.effective import ClientMode, Overlay, PeerMode, PolicySet
from trustd.policy.loader import load_text
from trustd.policy.status import Destination, InboundStats, ProxyStatus
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId

AT = dt.datetime(2026, 3, 1, 12, 0, 0, 654321, tzinfo=dt.UTC)
WEB = SpiffeId.parse("spiffe://trustd.local/ns/shop/sa/web")


@pytest.mark.parametrize(
    "entry",
    [
        RegistrationEntry(id="e-1", spiffe_id=WEB, selectors=(Selector.parse("unix:uid:1000"),), created_at=AT),
        RegistrationEntry(
            id="e-2", spiffe_id=WEB,
            selectors=(Selector.parse("unix:gid:5"), Selector.parse("unix:path:/usr/bin/web")),
            ttl=dt.timedelta(minutes=30), dns_names=("web", "web.shop"), revision=7,
            agent_id="a1", created_at=AT,
        ),
    ],
)  # fmt: skip
def test_entries_round_trip(entry: RegistrationEntry) -> None:
    back = convert.entry_of(convert.entry_message(entry))
    assert back == entry and back.to_json() == entry.to_json()


def test_proxy_status_and_denial_round_trip() -> None:
    status = ProxyStatus(
        proxy_id="p-1",
        spiffe_id=WEB,
        acked_version=3,
        inbound=(
            InboundStats(port=15006, mode="STRICT", mode_version=3, plaintext_total=2,
                         last_plaintext_at=AT),
            InboundStats(port=15007),
        ),
        destinations=(Destination(spiffe_id=WEB, port=16006, transport="mtls", mtls_total=9),),
        reported_at=AT,
    )  # fmt: skip
    assert convert.proxy_status_of(convert.proxy_status_message(status)) == status
    denial = DenialEvent(
        time=AT, proxy_id="p-1", listener="inbound:15006", reason="authz_denied",
        detail="no ALLOW rule", peer_address="10.0.0.1:5000", peer_spiffe_id=None,
        local_spiffe_id=str(WEB), policy_version=3,
    )  # fmt: skip
    assert convert.denial_of(convert.denial_message(denial)) == denial


def test_policy_sets_round_trip_and_a_wrong_hash_is_refused() -> None:
    objects = load_text(
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: trustd-system}\nspec:\n  mtls: {mode: STRICT}\n",
        source="t",
    )
    ps = PolicySet.empty().successor(objects=tuple(objects))
    ps = ps.successor(
        overlays=(
            Overlay(name="rollout:x", selector="spiffe://trustd.local/ns/shop/**",
                    server_mode=PeerMode.PERMISSIVE, canary_client_mode=ClientMode.MUTUAL,
                    canary_instances=frozenset({"p-1"}), since=1),
        )
    )  # fmt: skip
    msg = convert.policy_set_message(ps)
    back = convert.policy_set_of(msg)
    assert back.to_json() == ps.to_json() and back.content_hash == ps.content_hash
    msg.content_hash = "sha256:" + "0" * 64
    with pytest.raises(InvalidArgumentError, match="content hash"):
        convert.policy_set_of(msg)


def test_unset_timestamps_stay_unset() -> None:
    assert convert.optional_timestamp(None) is None
    assert convert.optional_time(None) is None
    assert convert.time_of(convert.timestamp(AT)) == AT
