"""Effective policy: precedence, AUTO resolution, overlays, pending layers, authorization."""

from __future__ import annotations

import pytest

from trustd.policy import ClientMode, Overlay, PeerMode, PolicySet, Transport, load_text
from trustd.policy.effective import PolicyLayer
from trustd.spiffeid import SpiffeId

TD = "spiffe://td"
WEB = SpiffeId.parse(f"{TD}/ns/shop/sa/web")
DB = SpiffeId.parse(f"{TD}/ns/shop/sa/db")
OTHER = SpiffeId.parse(f"{TD}/ns/other/sa/x")
CLIENT = SpiffeId.parse(f"{TD}/ns/front/sa/ui")


def pa(
    name: str, ns: str, *, mode: str | None = None, selector: str | None = None, ports: str = ""
) -> str:
    spec = ""
    if selector:
        spec += f"  selector: {{spiffeIds: ['{selector}']}}\n"
    if mode:
        spec += f"  mtls: {{mode: {mode}}}\n"
    if ports:
        spec += f"  portLevelMtls: {ports}\n"
    return (
        f"apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec or '  {}'}\n---\n"
    )


def ct(
    name: str, ns: str, mode: str, *, dest: str | None = None, selector: str | None = None
) -> str:
    spec = f"  tls: {{mode: {mode}}}\n"
    if dest:
        spec += f"  destination: {{spiffeIds: ['{dest}']}}\n"
    if selector:
        spec += f"  selector: {{spiffeIds: ['{selector}']}}\n"
    return (
        f"apiVersion: trustd.io/v1alpha1\nkind: ClientTLSPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )


def authz(name: str, ns: str, body: str) -> str:
    return (
        f"apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}---\n"
    )


def policy(text: str) -> PolicySet:
    return PolicySet(version=1, layer=PolicyLayer(objects=load_text(text)))


# -- PeerAuthentication precedence -------------------------------------------------


def test_no_policy_means_permissive_and_auto_means_mtls() -> None:
    ps = PolicySet.empty()
    assert ps.peer_mode(WEB, 8080) is PeerMode.PERMISSIVE
    assert ps.explain_peer(WEB, 8080).source == "default"
    d = ps.explain_client(CLIENT, WEB, 8080)
    assert d.mode is ClientMode.AUTO and d.transport is Transport.MTLS


def test_mesh_applies_everywhere() -> None:
    ps = policy(pa("m", "trustd-system", mode="STRICT"))
    assert ps.peer_mode(WEB, 1) is PeerMode.STRICT
    assert ps.peer_mode(OTHER, 1) is PeerMode.STRICT


def test_namespace_beats_mesh_and_only_in_its_namespace() -> None:
    ps = policy(pa("m", "trustd-system", mode="STRICT") + pa("n", "shop", mode="DISABLE"))
    assert ps.peer_mode(WEB, 1) is PeerMode.DISABLE
    assert ps.explain_peer(WEB, 1).source == "PeerAuthentication/shop/n"
    assert ps.peer_mode(OTHER, 1) is PeerMode.STRICT


def test_workload_selector_beats_namespace() -> None:
    ps = policy(
        pa("n", "shop", mode="DISABLE")
        + pa("w", "shop", mode="STRICT", selector=f"{TD}/ns/shop/sa/web")
    )
    assert ps.peer_mode(WEB, 1) is PeerMode.STRICT
    assert ps.peer_mode(DB, 1) is PeerMode.DISABLE


def test_root_namespace_selector_is_mesh_wide_but_below_a_namespace_selector() -> None:
    ps = policy(
        pa("n", "shop", mode="DISABLE")
        + pa("rootsel", "trustd-system", mode="STRICT", selector=f"{TD}/ns/*/sa/web")
        + pa("nssel", "shop", mode="PERMISSIVE", selector=f"{TD}/ns/shop/sa/web")
    )
    assert ps.peer_mode(WEB, 1) is PeerMode.PERMISSIVE  # namespace + selector wins
    assert ps.peer_mode(SpiffeId.parse(f"{TD}/ns/other/sa/web"), 1) is PeerMode.STRICT
    assert ps.peer_mode(DB, 1) is PeerMode.DISABLE


def test_port_level_beats_workload_mode() -> None:
    ps = policy(
        pa(
            "w",
            "shop",
            mode="STRICT",
            selector=f"{TD}/ns/shop/sa/db",
            ports="{3306: {mode: PERMISSIVE}}",
        )
    )
    assert ps.peer_mode(DB, 3306) is PeerMode.PERMISSIVE
    assert ps.explain_peer(DB, 3306).source == "PeerAuthentication/shop/w port 3306"
    assert ps.peer_mode(DB, 3307) is PeerMode.STRICT


def test_port_level_of_a_namespace_object_beats_a_workload_mode() -> None:
    ps = policy(
        pa("n", "shop", ports="{3306: {mode: DISABLE}}")
        + pa("w", "shop", mode="STRICT", selector=f"{TD}/ns/shop/sa/db")
    )
    assert ps.peer_mode(DB, 3306) is PeerMode.DISABLE
    assert ps.peer_mode(DB, 80) is PeerMode.STRICT


def test_object_without_mtls_inherits() -> None:
    ps = policy(
        pa("n", "shop", mode="STRICT")
        + pa("w", "shop", selector=f"{TD}/ns/shop/sa/db", ports="{1: {mode: DISABLE}}")
    )
    assert ps.peer_mode(DB, 2) is PeerMode.STRICT


def test_ties_at_one_level_go_to_the_first_name() -> None:
    ps = policy(pa("b", "shop", mode="STRICT") + pa("a", "shop", mode="DISABLE"))
    assert ps.explain_peer(WEB, 1).source == "PeerAuthentication/shop/a"


# -- ClientTLSPolicy and AUTO ------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "transport"),
    [("STRICT", Transport.MTLS), ("PERMISSIVE", Transport.MTLS), ("DISABLE", Transport.PLAINTEXT)],
)
def test_auto_uses_mtls_exactly_when_the_destination_accepts_it(
    server: str, transport: Transport
) -> None:
    ps = policy(pa("n", "shop", mode=server))
    assert ps.client_transport(CLIENT, WEB, 8080) is transport


def test_auto_follows_the_destination_port() -> None:
    ps = policy(pa("n", "shop", mode="STRICT", ports="{3306: {mode: DISABLE}}"))
    assert ps.client_transport(CLIENT, WEB, 3306) is Transport.PLAINTEXT
    assert ps.client_transport(CLIENT, WEB, 8080) is Transport.MTLS


def test_mutual_and_disable_are_explicit() -> None:
    ps = policy(
        pa("n", "shop", mode="DISABLE")
        + ct("c", "front", "MUTUAL", dest=f"{TD}/ns/shop/**")
        + ct("d", "front", "DISABLE", dest=f"{TD}/ns/other/**")
    )
    assert ps.client_transport(CLIENT, WEB, 1) is Transport.MTLS
    assert ps.client_transport(CLIENT, OTHER, 1) is Transport.PLAINTEXT


def test_client_policy_applies_to_clients_of_its_namespace_only() -> None:
    ps = policy(ct("c", "elsewhere", "DISABLE"))
    assert ps.client_transport(CLIENT, WEB, 1) is Transport.MTLS


def test_most_specific_client_policy_wins() -> None:
    ps = policy(
        ct("mesh", "trustd-system", "DISABLE")
        + ct("ns", "front", "MUTUAL", dest=f"{TD}/ns/shop/**")
        + ct("exact", "front", "AUTO", dest=str(WEB))
        + pa("n", "shop", mode="DISABLE")
    )
    d = ps.explain_client(CLIENT, WEB, 1)
    assert d.source == "ClientTLSPolicy/front/exact" and d.transport is Transport.PLAINTEXT
    assert ps.explain_client(CLIENT, DB, 1).source == "ClientTLSPolicy/front/ns"
    assert ps.explain_client(CLIENT, OTHER, 1).source == "ClientTLSPolicy/trustd-system/mesh"


def test_global_switch_makes_clients_plaintext_where_the_server_still_accepts_it() -> None:
    base = policy(
        pa("n", "shop", mode="PERMISSIVE")
        + pa("s", "other", mode="STRICT")
        + ct("c", "front", "MUTUAL")
    )
    off = base.successor(client_tls_off_global=True).settle(10)
    assert off is not None and off.client_tls_off_global
    assert off.client_transport(CLIENT, WEB, 1) is Transport.PLAINTEXT  # beats MUTUAL
    assert off.client_transport(CLIENT, OTHER, 1) is Transport.MTLS  # STRICT: never plaintext
    assert off.explain_client(CLIENT, WEB, 1).global_off


def test_pending_layers_hold_auto_clients_until_servers_acknowledge() -> None:
    v1 = policy(pa("n", "shop", mode="DISABLE"))
    v2 = v1.successor(objects=load_text(pa("n", "shop", mode="PERMISSIVE")))
    assert v2.version == 2 and v2.peer_mode(WEB, 1) is PeerMode.PERMISSIVE
    assert v2.server_modes(WEB, 1) == {PeerMode.DISABLE, PeerMode.PERMISSIVE}
    assert (
        v2.client_transport(CLIENT, WEB, 1) is Transport.PLAINTEXT
    )  # a server may still be DISABLE
    assert v2.settle(1) is None  # servers still on version 1: nothing to drop
    v3 = v2.settle(2)
    assert v3 is not None and v3.version == 3 and not v3.pending
    assert v3.client_transport(CLIENT, WEB, 1) is Transport.MTLS


def test_successor_with_the_same_content_adds_nothing_pending() -> None:
    v1 = policy(pa("n", "shop", mode="DISABLE"))
    v2 = v1.successor()
    assert v2.version == 2 and v2.content_hash == v1.content_hash and not v2.pending


# -- overlays ----------------------------------------------------------------------


def test_overlay_beats_every_object_for_its_servers_and_their_clients() -> None:
    ps = policy(
        pa("w", "shop", mode="DISABLE", ports="{1: {mode: DISABLE}}") + ct("c", "front", "DISABLE")
    )
    ov = Overlay(
        name="r",
        selector=f"{TD}/ns/shop/**",
        server_mode=PeerMode.STRICT,
        client_mode=ClientMode.MUTUAL,
    )
    ps2 = ps.with_overlay(ov, name="r").settle(99)
    assert ps2 is not None
    assert ps2.peer_mode(WEB, 1) is PeerMode.STRICT
    assert ps2.client_transport(CLIENT, WEB, 1) is Transport.MTLS
    assert ps2.peer_mode(OTHER, 1) is PeerMode.PERMISSIVE


def test_canary_overlay_applies_to_its_instances_and_auto_waits_for_all() -> None:
    ps = policy(pa("n", "shop", mode="DISABLE"))
    ov = Overlay(
        name="r",
        selector=f"{TD}/ns/shop/**",
        canary_instances=frozenset({"web-1"}),
        canary_server_mode=PeerMode.PERMISSIVE,
    )
    ps2 = ps.with_overlay(ov, name="r").settle(99)
    assert ps2 is not None
    assert ps2.peer_mode(WEB, 1, "web-1") is PeerMode.PERMISSIVE
    assert ps2.peer_mode(WEB, 1, "web-2") is PeerMode.DISABLE
    assert ps2.server_modes(WEB, 1) == {PeerMode.DISABLE, PeerMode.PERMISSIVE}
    assert ps2.client_transport(CLIENT, WEB, 1) is Transport.PLAINTEXT


def test_held_clients_decide_as_if_the_overlay_did_not_exist() -> None:
    ps = policy(pa("n", "shop", mode="DISABLE"))
    ov = Overlay(
        name="r", selector=f"{TD}/ns/shop/**", server_mode=PeerMode.PERMISSIVE, hold_clients=True
    )
    ps2 = ps.with_overlay(ov, name="r").settle(99)
    assert ps2 is not None and not ps2.pending
    assert ps2.peer_mode(WEB, 1) is PeerMode.PERMISSIVE
    d = ps2.explain_client(CLIENT, WEB, 1)
    assert d.transport is Transport.PLAINTEXT and "held by overlay r" in d.source
    released = ps2.with_overlay(
        Overlay(
            name="r",
            selector=f"{TD}/ns/shop/**",
            server_mode=PeerMode.PERMISSIVE,
            client_mode=ClientMode.MUTUAL,
        ),
        name="r",
    )
    assert released.client_transport(CLIENT, WEB, 1) is Transport.MTLS


# -- authorization -----------------------------------------------------------------

FRONT = SpiffeId.parse(f"{TD}/ns/shop/sa/front")
LEGACY = SpiffeId.parse(f"{TD}/ns/legacy/sa/old")


def test_no_allow_policy_lets_every_peer_in() -> None:
    d = PolicySet.empty().authorize(WEB, 80, FRONT)
    assert d.allowed and d.policy is None


def test_allow_policy_admits_only_matching_principals_and_ports() -> None:
    ps = policy(
        authz(
            "a",
            "shop",
            f"  selector: {{spiffeIds: ['{WEB}']}}\n  rules:\n"
            f"  - from: [{{principals: ['{TD}/ns/shop/sa/fr*']}}]\n    to: [{{ports: [80]}}]\n",
        )
    )
    assert ps.authorize(WEB, 80, FRONT).allowed
    assert not ps.authorize(WEB, 81, FRONT).allowed
    assert not ps.authorize(WEB, 80, LEGACY).allowed
    assert not ps.authorize(WEB, 80, None).allowed  # a plaintext peer has no principal
    assert ps.authorize(DB, 80, LEGACY).allowed  # the selector does not cover db


def test_deny_is_evaluated_before_allow() -> None:
    ps = policy(
        authz("allow-all", "shop", "  rules:\n  - {}\n")
        + authz(
            "deny-legacy", "shop", "  action: DENY\n  rules:\n  - from: [{namespaces: [legacy]}]\n"
        )
    )
    assert ps.authorize(WEB, 1, FRONT).allowed
    d = ps.authorize(WEB, 1, LEGACY)
    assert not d.allowed and d.policy == "AuthorizationPolicy/shop/deny-legacy"


def test_allow_with_no_rules_denies_everything() -> None:
    ps = policy(authz("nothing", "shop", "  action: ALLOW\n"))
    assert not ps.authorize(WEB, 1, FRONT).allowed


def test_rule_without_from_matches_plaintext_peers() -> None:
    ps = policy(authz("ports", "shop", "  rules:\n  - to: [{ports: [80]}]\n"))
    assert ps.authorize(WEB, 80, None).allowed
    assert not ps.authorize(WEB, 81, None).allowed


def test_mesh_authorization_applies_to_every_namespace() -> None:
    ps = policy(
        authz(
            "deny",
            "trustd-system",
            "  action: DENY\n  rules:\n  - from: [{namespaces: [legacy]}]\n",
        )
    )
    assert not ps.authorize(OTHER, 1, LEGACY).allowed


# -- identity of a policy set -------------------------------------------------------


def test_json_round_trip_keeps_version_hash_and_decisions() -> None:
    ps = policy(
        pa("n", "shop", mode="STRICT", ports="{3306: {mode: DISABLE}}") + ct("c", "front", "MUTUAL")
    )
    ps = ps.with_overlay(
        Overlay(
            name="r",
            selector=f"{TD}/**",
            server_mode=PeerMode.PERMISSIVE,
            canary_instances=frozenset({"x"}),
            canary_server_mode=PeerMode.STRICT,
        ),
        name="r",
    ).successor(client_tls_off_global=True)
    back = PolicySet.from_json(ps.to_json())
    assert back == ps
    assert back.content_hash == ps.content_hash
    assert back.peer_mode(WEB, 3306, "x") is PeerMode.STRICT


def test_content_hash_changes_with_content_only() -> None:
    a = policy(pa("n", "shop", mode="STRICT"))
    b = policy(pa("n", "shop", mode="STRICT"))
    c = policy(pa("n", "shop", mode="DISABLE"))
    assert a.content_hash == b.content_hash != c.content_hash


def test_show_explains_the_effective_policy() -> None:
    ps = policy(pa("n", "shop", mode="STRICT") + authz("a", "shop", "  rules:\n  - {}\n"))
    out = ps.show(WEB, 8080)
    assert out["peerAuthentication"] == {
        "mode": "STRICT",
        "source": "PeerAuthentication/shop/n",
        "instanceModes": ["STRICT"],
    }
    assert out["authorizationPolicies"] == ["AuthorizationPolicy/shop/a"]


# -- federated peers: authenticated by a foreign bundle, never authorized by default ------

FOREIGN = SpiffeId.parse("spiffe://other.td/ns/shop/sa/front")


def test_a_federated_peer_needs_an_allow_rule_naming_it() -> None:
    nothing = policy("")
    d = nothing.authorize(WEB, 80, FOREIGN)
    assert not d.allowed and "another trust domain" in d.reason
    assert nothing.authorize(WEB, 80, FRONT).allowed  # our own peers: allowed as before

    allow_all = policy(authz("all", "shop", "  rules:\n  - {}\n"))
    assert allow_all.authorize(WEB, 80, FRONT).allowed
    assert not allow_all.authorize(WEB, 80, FOREIGN).allowed  # "every source" is not a name

    by_ns = policy(authz("ns", "shop", "  rules:\n  - from: [{namespaces: [shop]}]\n"))
    assert by_ns.authorize(WEB, 80, FRONT).allowed
    assert not by_ns.authorize(WEB, 80, FOREIGN).allowed  # other.td's "shop" is not ours

    named = policy(
        authz(
            "named",
            "shop",
            f"  rules:\n  - from: [{{principals: ['{FOREIGN}']}}]\n    to: [{{ports: [80]}}]\n",
        )
    )
    assert named.authorize(WEB, 80, FOREIGN).allowed
    assert not named.authorize(WEB, 81, FOREIGN).allowed  # the rule's ports still hold
    assert not named.authorize(WEB, 80, FRONT).allowed  # and it names nobody else


def test_deny_still_applies_to_a_named_federated_peer() -> None:
    ps = policy(
        authz("named", "shop", f"  rules:\n  - from: [{{principals: ['{FOREIGN}']}}]\n")
        + authz(
            "deny",
            "shop",
            "  action: DENY\n  rules:\n  - from: [{principals: ['spiffe://other.td/**']}]\n",
        )
    )
    d = ps.authorize(WEB, 80, FOREIGN)
    assert not d.allowed and d.policy == "AuthorizationPolicy/shop/deny"
