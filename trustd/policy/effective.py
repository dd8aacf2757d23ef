"""Effective policy: what a proxy does for one workload, port and peer.

A :class:`PolicySet` is immutable and versioned. It holds one
:class:`PolicyLayer` (the policy objects, the rollout overlays and the global
client-TLS switch) and the earlier layers that server proxies may still be
running (``pending``), which AUTO clients take into account until every server
proxy has acknowledged the new version (see :meth:`PolicySet.settle`).

Resolution rules (SPEC §8):

- Scope. An object in the root namespace ``trustd-system`` is mesh-wide; in
  any other namespace it covers the workloads whose SPIFFE ID path starts
  ``/ns/<namespace>/``; ``spec.selector.spiffeIds`` narrows either further.
  Specificity, from most to least: own namespace + selector, root namespace +
  selector, own namespace, mesh.
- PeerAuthentication: a ``portLevelMtls`` entry for the port beats every
  workload-wide ``mtls`` (among port entries the most specific object wins),
  then the most specific ``mtls``; with none, PERMISSIVE. Ties between objects
  at the same level go to the first by (namespace, name).
- ClientTLSPolicy: scoped on the *client*; the object that applies to the
  client, matches the destination and is most specific (client scope first,
  then an exact destination ID over a glob over no destination) wins; the
  default is AUTO. AUTO means mTLS exactly when every instance of the
  destination accepts TLS on that port (PERMISSIVE or STRICT), in the current
  layer and in every pending one; plaintext when they all accept plaintext.
- The global client-TLS switch makes every client use plaintext wherever all
  server instances still accept it, and mTLS elsewhere.
- Rollout overlays and objects: the later word wins. Inside its selector a
  rollout overlay (newest first) beats every PeerAuthentication for the servers
  it matches, and every ClientTLSPolicy for the clients calling them, *unless*
  the object that would decide was applied or changed in a later version than
  the one in which the rollout last set the overlay: then the object decides
  (``policy apply`` after a rollout says otherwise). ``policy show`` names the
  object an overlay overrides, and the overlay an object overrides. A canary
  overlay gives its own modes to the listed proxy instances. While a rollout is
  active the server refuses PeerAuthentication and ClientTLSPolicy changes
  unless forced (trustd.server.policy_plane), so this only decides after one.
- AuthorizationPolicy: every applicable object counts. A matching DENY rule
  denies; then, if any ALLOW policy applies, some ALLOW rule must match; with no
  ALLOW policy every peer the PeerAuthentication let in is allowed. An object
  with no rules matches nothing (an ALLOW with no rules denies everything). A
  ``from`` entry matches only an authenticated peer whose SPIFFE ID matches one
  of its principals (when given) and whose namespace is listed (when given);
  a plaintext peer has no identity and matches only rules without ``from``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trustd.policy.glob import SpiffeGlob
from trustd.policy.loader import parse_object
from trustd.policy.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    ClientTLSPolicy,
    PeerAuthentication,
    PolicyObject,
    WorkloadSelector,
    dump,
)
from trustd.spiffeid import SpiffeId


class PeerMode(enum.StrEnum):
    STRICT = "STRICT"  # mTLS only
    PERMISSIVE = "PERMISSIVE"  # mTLS and plaintext on the same port
    DISABLE = "DISABLE"  # plaintext only

    @property
    def accepts_tls(self) -> bool:
        return self is not PeerMode.DISABLE

    @property
    def accepts_plaintext(self) -> bool:
        return self is not PeerMode.STRICT


class ClientMode(enum.StrEnum):
    AUTO = "AUTO"  # mTLS exactly when the destination accepts it
    MUTUAL = "MUTUAL"  # always mTLS
    DISABLE = "DISABLE"  # always plaintext


class Transport(enum.StrEnum):
    MTLS = "mtls"
    PLAINTEXT = "plaintext"

    def compatible_with(self, mode: PeerMode) -> bool:
        return mode.accepts_tls if self is Transport.MTLS else mode.accepts_plaintext


DEFAULT_PEER_MODE = PeerMode.PERMISSIVE
DEFAULT_CLIENT_MODE = ClientMode.AUTO


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> SpiffeGlob:
    return SpiffeGlob.parse(pattern)


def _selector_matches(selector: WorkloadSelector | None, spiffe_id: SpiffeId) -> bool:
    return selector is None or any(compile_glob(g).matches(spiffe_id) for g in selector.spiffe_ids)


def scope_level(
    namespace: str, selector: WorkloadSelector | None, spiffe_id: SpiffeId
) -> int | None:
    """How specifically an object applies to a workload: 3 own namespace + selector,
    2 root namespace + selector, 1 own namespace, 0 mesh; None: it does not apply."""
    if namespace == ROOT_NAMESPACE:
        base = 0
    elif spiffe_id.namespace == namespace:
        base = 1
    else:
        return None
    if selector is None:
        return base
    if not _selector_matches(selector, spiffe_id):
        return None
    return base + 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Overlay:
    """Modes a rollout imposes on the servers its selector matches (and their clients)."""

    name: str  # owner, e.g. "rollout:spiffe://td/ns/shop/**"; one overlay per name
    selector: str  # glob of the server SPIFFE IDs covered
    server_mode: PeerMode | None = None  # for every matched server instance; None: fall through
    client_mode: ClientMode | None = None  # for every client calling a matched server
    hold_clients: bool = False  # client_mode None: clients decide as if this overlay did not exist
    canary_instances: frozenset[str] = frozenset()  # proxy ids that get the canary modes
    canary_server_mode: PeerMode | None = None  # for canary server instances
    canary_client_mode: ClientMode | None = None  # for canary client instances
    since: int = 0  # the policy version the rollout last set it in (objects applied later win)

    def matches(self, spiffe_id: SpiffeId) -> bool:
        return compile_glob(self.selector).matches(spiffe_id)

    def server_for(self, instance: str | None) -> PeerMode | None:
        if instance is not None and instance in self.canary_instances and self.canary_server_mode:
            return self.canary_server_mode
        return self.server_mode

    def client_for(self, instance: str | None) -> ClientMode | None:
        if instance is not None and instance in self.canary_instances and self.canary_client_mode:
            return self.canary_client_mode
        return self.client_mode

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "selector": self.selector,
            "serverMode": self.server_mode.value if self.server_mode else None,
            "clientMode": self.client_mode.value if self.client_mode else None,
            "holdClients": self.hold_clients,
            "canaryInstances": sorted(self.canary_instances),
            "canaryServerMode": self.canary_server_mode.value if self.canary_server_mode else None,
            "canaryClientMode": self.canary_client_mode.value if self.canary_client_mode else None,
            "since": self.since,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Overlay:
        def peer(v: Any) -> PeerMode | None:
            return PeerMode(v) if v else None

        def client(v: Any) -> ClientMode | None:
            return ClientMode(v) if v else None

        compile_glob(str(data["selector"]))
        return cls(
            name=str(data["name"]),
            selector=str(data["selector"]),
            server_mode=peer(data.get("serverMode")),
            client_mode=client(data.get("clientMode")),
            hold_clients=bool(data.get("holdClients", False)),
            canary_instances=frozenset(str(i) for i in data.get("canaryInstances", ())),
            canary_server_mode=peer(data.get("canaryServerMode")),
            canary_client_mode=client(data.get("canaryClientMode")),
            since=int(data.get("since", 0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDecision:
    mode: PeerMode  # what the server-side proxy accepts
    source: str  # what decided it, e.g. "PeerAuthentication/shop/db port 3306" or "default"
    overrides: str | None = None  # what it beat: the object under an overlay, or the overlay


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDecision:
    transport: Transport  # what the client-side proxy uses for new connections
    mode: ClientMode  # the effective ClientTLSPolicy mode (AUTO when no object applies)
    source: str  # what decided the mode
    server_modes: frozenset[PeerMode]  # every mode a destination instance may be running
    global_off: bool  # the emergency switch decided it
    overrides: str | None = None  # what it beat: the object under an overlay, or the overlay


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzDecision:
    allowed: bool  # let the connection through
    reason: str  # why, in words (shown in denial events)
    policy: str | None  # the AuthorizationPolicy that decided, if one did


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyLayer:
    """One complete statement of policy: objects, overlays and the global switch."""

    objects: tuple[PolicyObject, ...] = ()  # as applied, in apply order
    overlays: tuple[Overlay, ...] = ()  # rollout overlays, oldest first
    client_tls_off_global: bool = False  # the emergency switch (policy client-tls off --global)
    # (Kind/namespace/name, the version it was last created or changed in); 0 when absent
    object_versions: tuple[tuple[str, int], ...] = ()

    def since(self, ref: str) -> int:
        """The version an object was last applied with a change (0: unknown, oldest)."""
        return dict(self.object_versions).get(ref, 0)

    # -- servers ---------------------------------------------------------

    def _objects_peer(self, spiffe_id: SpiffeId, port: int) -> tuple[PeerDecision, str | None]:
        cands: list[tuple[int, PeerAuthentication]] = []
        for obj in self.objects:
            if isinstance(obj, PeerAuthentication):
                level = scope_level(obj.metadata.namespace, obj.spec.selector, spiffe_id)
                if level is not None:
                    cands.append((level, obj))
        cands.sort(key=lambda c: (-c[0], c[1].metadata.namespace, c[1].metadata.name))
        for _, obj in cands:
            port_level = obj.spec.port_level_mtls or {}
            if port in port_level:
                mode = PeerMode(port_level[port].mode)
                return PeerDecision(mode=mode, source=f"{obj.ref} port {port}"), obj.ref
        for _, obj in cands:
            if obj.spec.mtls is not None:
                return PeerDecision(mode=PeerMode(obj.spec.mtls.mode), source=obj.ref), obj.ref
        return PeerDecision(mode=DEFAULT_PEER_MODE, source="default"), None

    def peer_decision(self, spiffe_id: SpiffeId, port: int, instance: str | None) -> PeerDecision:
        objects, ref = self._objects_peer(spiffe_id, port)
        for ov in reversed(self.overlays):
            if ov.matches(spiffe_id):
                mode = ov.server_for(instance)
                if mode is not None:
                    if ref is not None and self.since(ref) > ov.since:  # applied after it
                        return replace(objects, overrides=f"overlay {ov.name}")
                    return PeerDecision(mode=mode, source=f"overlay {ov.name}", overrides=ref)
        return objects

    def peer_modes(self, spiffe_id: SpiffeId, port: int) -> frozenset[PeerMode]:
        """The modes the instances of a server may run: the common one and the canaries'."""
        modes = {self.peer_decision(spiffe_id, port, None).mode}
        for ov in self.overlays:
            if ov.canary_instances and ov.canary_server_mode and ov.matches(spiffe_id):
                for inst in ov.canary_instances:
                    modes.add(self.peer_decision(spiffe_id, port, inst).mode)
        return frozenset(modes)

    # -- clients ---------------------------------------------------------

    def client_overlay(
        self, destination: SpiffeId, instance: str | None
    ) -> tuple[ClientMode | None, Overlay | None]:
        """The overlay that decides a client's mode: (mode, overlay), or (None, holding overlay),
        or (None, None) when the objects decide."""
        for ov in reversed(self.overlays):
            if ov.matches(destination):
                mode = ov.client_for(instance)
                if mode is not None:
                    return mode, ov
                if ov.hold_clients:
                    return None, ov
        return None, None

    def without_overlay(self, name: str) -> PolicyLayer:
        return replace(self, overlays=tuple(o for o in self.overlays if o.name != name))

    def objects_client_mode(
        self, client: SpiffeId, destination: SpiffeId
    ) -> tuple[ClientMode, str]:
        """The mode the ClientTLSPolicy objects give a client for a destination."""
        cands: list[tuple[tuple[int, int], ClientTLSPolicy]] = []
        for obj in self.objects:
            if not isinstance(obj, ClientTLSPolicy):
                continue
            level = scope_level(obj.metadata.namespace, obj.spec.selector, client)
            if level is None:
                continue
            if obj.spec.destination is None:
                dest_rank = 0
            else:
                hits = [
                    compile_glob(g)
                    for g in obj.spec.destination.spiffe_ids
                    if compile_glob(g).matches(destination)
                ]
                if not hits:
                    continue
                dest_rank = 2 if any(g.is_exact for g in hits) else 1
            cands.append(((level, dest_rank), obj))
        if not cands:
            return DEFAULT_CLIENT_MODE, "default"
        cands.sort(key=lambda c: (-c[0][0], -c[0][1], c[1].metadata.namespace, c[1].metadata.name))
        best = cands[0][1]
        return ClientMode(best.spec.tls.mode), best.ref

    # -- authorization ---------------------------------------------------

    def authorize(self, server: SpiffeId, port: int, peer: SpiffeId | None) -> AuthzDecision:
        """DENY rules first, then ALLOW (none applying: allowed), as Istio does, with one
        addition for federation: a peer from another trust domain is only ever allowed by
        an ALLOW rule that names it in ``principals``. Federating makes a foreign bundle
        trusted for authentication; it never makes a foreign workload authorized by
        default, nor through a rule that names only namespaces or every source."""
        foreign = peer is not None and peer.trust_domain != server.trust_domain
        allows: list[AuthorizationPolicy] = []
        for obj in self.objects:
            if not isinstance(obj, AuthorizationPolicy):
                continue
            if scope_level(obj.metadata.namespace, obj.spec.selector, server) is None:
                continue
            if obj.spec.action == "DENY":
                if any(_rule_matches(r, peer, port, server) for r in obj.spec.rules):
                    return AuthzDecision(
                        allowed=False, reason=f"denied by {obj.ref}", policy=obj.ref
                    )
            else:
                allows.append(obj)
        if foreign:
            for obj in allows:
                if any(_names_peer(r, peer, port) for r in obj.spec.rules):
                    return AuthzDecision(
                        allowed=True, reason=f"allowed by {obj.ref}", policy=obj.ref
                    )
            return AuthzDecision(
                allowed=False,
                reason=f"{peer} is from another trust domain: only an AuthorizationPolicy "
                "ALLOW rule naming it in principals admits a federated peer",
                policy=None,
            )
        if not allows:
            return AuthzDecision(allowed=True, reason="no ALLOW policy applies", policy=None)
        for obj in allows:
            if any(_rule_matches(r, peer, port, server) for r in obj.spec.rules):
                return AuthzDecision(allowed=True, reason=f"allowed by {obj.ref}", policy=obj.ref)
        names = ", ".join(o.ref for o in allows)
        who = str(peer) if peer is not None else "a plaintext peer"
        return AuthzDecision(
            allowed=False, reason=f"no ALLOW rule matches {who} (policies: {names})", policy=None
        )

    # -- serialisation ---------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": [dump(o) for o in self.objects],
            "overlays": [o.to_json() for o in self.overlays],
            "clientTlsOffGlobal": self.client_tls_off_global,
            "objectVersions": dict(self.object_versions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyLayer:
        return cls(
            objects=tuple(
                parse_object(o, source="stored policy", index=i + 1)
                for i, o in enumerate(data.get("objects", ()))
            ),
            overlays=tuple(Overlay.from_json(o) for o in data.get("overlays", ())),
            client_tls_off_global=bool(data.get("clientTlsOffGlobal", False)),
            object_versions=tuple(
                sorted((str(k), int(v)) for k, v in data.get("objectVersions", {}).items())
            ),
        )

    def digest(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _layer_modes(
    layers: list[PolicyLayer], destination: SpiffeId, port: int
) -> frozenset[PeerMode]:
    modes: set[PeerMode] = set()
    for lay in layers:
        modes |= lay.peer_modes(destination, port)
    return frozenset(modes)


def _client_decision(
    layers: list[PolicyLayer],
    client: SpiffeId,
    destination: SpiffeId,
    port: int,
    instance: str | None,
) -> ClientDecision:
    """layers[0] is the current layer, the rest are pending ones."""
    current = layers[0]
    modes = _layer_modes(layers, destination, port)
    all_tls = all(m.accepts_tls for m in modes)
    all_plain = all(m.accepts_plaintext for m in modes)
    if current.client_tls_off_global:
        return ClientDecision(
            transport=Transport.PLAINTEXT if all_plain else Transport.MTLS,
            mode=current.objects_client_mode(client, destination)[0],
            source="client-tls off --global",
            server_modes=modes,
            global_off=True,
        )
    mode, overlay = current.client_overlay(destination, instance)
    if mode is None and overlay is not None:  # held: decide as if the overlay did not exist
        held = [lay.without_overlay(overlay.name) for lay in layers]
        inner = _client_decision(held, client, destination, port, instance)
        return replace(inner, source=f"{inner.source} (held by overlay {overlay.name})")
    overrides: str | None = None
    obj_mode, obj_source = current.objects_client_mode(client, destination)
    if mode is not None and overlay is not None:
        if obj_source != "default" and current.since(obj_source) > overlay.since:
            mode, source, overrides = obj_mode, obj_source, f"overlay {overlay.name}"
        else:
            source = f"overlay {overlay.name}"
            overrides = obj_source if obj_source != "default" else None
    else:
        mode, source = obj_mode, obj_source
    if mode is ClientMode.MUTUAL:
        transport = Transport.MTLS
    elif mode is ClientMode.DISABLE:
        transport = Transport.PLAINTEXT
    elif all_tls:
        transport = Transport.MTLS
    elif all_plain:
        transport = Transport.PLAINTEXT
    else:  # instances both STRICT and DISABLE: follow the current common mode
        common = current.peer_decision(destination, port, None).mode
        transport = Transport.MTLS if common.accepts_tls else Transport.PLAINTEXT
    return ClientDecision(
        transport=transport,
        mode=mode,
        source=source,
        server_modes=modes,
        global_off=False,
        overrides=overrides,
    )


def _rule_matches(rule: Any, peer: SpiffeId | None, port: int, server: SpiffeId) -> bool:
    if rule.from_ is not None and not any(_source_matches(s, peer, server) for s in rule.from_):
        return False
    return rule.to is None or any(port in op.ports for op in rule.to)


def _source_matches(source: Any, peer: SpiffeId | None, server: SpiffeId) -> bool:
    if peer is None:
        return False
    if source.principals and not any(compile_glob(g).matches(peer) for g in source.principals):
        return False
    if not source.namespaces:
        return True
    # a namespace is a namespace of this trust domain: another's /ns/shop/ is not "shop"
    return peer.trust_domain == server.trust_domain and peer.namespace in source.namespaces


def _names_peer(rule: Any, peer: SpiffeId | None, port: int) -> bool:
    """An ALLOW rule that names ``peer`` in ``principals`` (and covers the port)."""
    if peer is None or rule.from_ is None:
        return False
    named = any(
        s.principals
        and any(compile_glob(g).matches(peer) for g in s.principals)
        and not s.namespaces  # a namespaces condition is about this trust domain only
        for s in rule.from_
    )
    return named and (rule.to is None or any(port in op.ports for op in rule.to))


@dataclass(frozen=True, kw_only=True)
class PolicySet:
    """An immutable, versioned policy, as published to proxies.

    ``version`` grows by one with every publication; ``content_hash`` identifies
    what the current layer says (two versions may say the same thing).
    """

    version: int  # monotonically increasing; proxies acknowledge it
    layer: PolicyLayer  # what applies to new connections
    pending: tuple[tuple[int, PolicyLayer], ...] = ()  # (version, layer) some server may still run
    content_hash: str = field(init=False)  # sha256 of the current layer
    _cache: dict[tuple[Any, ...], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )  # decisions already computed; valid forever since the set is immutable

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_hash", self.layer.digest())

    @classmethod
    def empty(cls) -> PolicySet:
        """Version 0: no policy at all (servers PERMISSIVE, clients AUTO)."""
        return cls(version=0, layer=PolicyLayer())

    @property
    def objects(self) -> tuple[PolicyObject, ...]:
        return self.layer.objects

    @property
    def overlays(self) -> tuple[Overlay, ...]:
        return self.layer.overlays

    @property
    def client_tls_off_global(self) -> bool:
        return self.layer.client_tls_off_global

    # -- evolution -------------------------------------------------------

    def successor(
        self,
        *,
        objects: tuple[PolicyObject, ...] | None = None,
        overlays: tuple[Overlay, ...] | None = None,
        client_tls_off_global: bool | None = None,
    ) -> PolicySet:
        """The next version with the given parts replaced.

        The current layer joins ``pending``: AUTO clients keep honouring it until
        :meth:`settle` says every server proxy has moved on.
        """
        versions = self.layer.object_versions
        if objects is not None:
            before = {o.ref: dump(o) for o in self.layer.objects}
            old = dict(versions)
            versions = tuple(
                sorted(
                    (o.ref, old.get(o.ref, 0) if before.get(o.ref) == dump(o) else self.version + 1)
                    for o in objects
                )
            )
        layer = PolicyLayer(
            objects=self.layer.objects if objects is None else tuple(objects),
            overlays=self.layer.overlays if overlays is None else tuple(overlays),
            object_versions=versions,
            client_tls_off_global=(
                self.layer.client_tls_off_global
                if client_tls_off_global is None
                else client_tls_off_global
            ),
        )
        pending = self.pending
        if layer.digest() != self.content_hash and all(
            lay.digest() != self.content_hash for _, lay in pending
        ):
            pending = (*pending, (self.version, self.layer))
        return PolicySet(version=self.version + 1, layer=layer, pending=pending)

    def with_overlay(self, overlay: Overlay | None, *, name: str) -> PolicySet:
        """The successor with the overlay called ``name`` replaced (or removed when None)."""
        kept = tuple(o for o in self.layer.overlays if o.name != name)
        if overlay is not None:
            kept = (*kept, replace(overlay, name=name, since=self.version + 1))
        return self.successor(overlays=kept)

    def overlay(self, name: str) -> Overlay | None:
        return next((o for o in self.layer.overlays if o.name == name), None)

    def settle(self, acknowledged_by_all_servers: int) -> PolicySet | None:
        """The successor without the pending layers no server runs any more.

        Call it when every server proxy has acknowledged ``acknowledged_by_all_servers``.
        Returns None when nothing would change.
        """
        kept = tuple((v, lay) for v, lay in self.pending if v >= acknowledged_by_all_servers)
        if kept == self.pending:
            return None
        return PolicySet(version=self.version + 1, layer=self.layer, pending=kept)

    # -- decisions -------------------------------------------------------

    def explain_peer(
        self, spiffe_id: SpiffeId, port: int, instance: str | None = None
    ) -> PeerDecision:
        key = ("peer", spiffe_id, port, instance)
        hit: PeerDecision | None = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.layer.peer_decision(spiffe_id, port, instance)
        return hit

    def peer_mode(self, spiffe_id: SpiffeId, port: int, instance: str | None = None) -> PeerMode:
        """What a server-side proxy accepts on this port for new connections."""
        return self.explain_peer(spiffe_id, port, instance).mode

    def server_modes(self, spiffe_id: SpiffeId, port: int) -> frozenset[PeerMode]:
        """Every mode some instance of the server may be running, pending layers included."""
        modes = set(self.layer.peer_modes(spiffe_id, port))
        for _, lay in self.pending:
            modes |= lay.peer_modes(spiffe_id, port)
        return frozenset(modes)

    def explain_client(
        self, client: SpiffeId, destination: SpiffeId, port: int, instance: str | None = None
    ) -> ClientDecision:
        key = ("client", client, destination, port, instance)
        hit: ClientDecision | None = self._cache.get(key)
        if hit is None:
            layers = [self.layer] + [lay for _, lay in self.pending]
            hit = self._cache[key] = _client_decision(layers, client, destination, port, instance)
        return hit

    def client_transport(
        self, client: SpiffeId, destination: SpiffeId, port: int, instance: str | None = None
    ) -> Transport:
        """What a client-side proxy uses for a new connection to the destination."""
        return self.explain_client(client, destination, port, instance).transport

    def authorize(self, server: SpiffeId, port: int, peer: SpiffeId | None) -> AuthzDecision:
        """May this peer (None: an unauthenticated plaintext peer) reach the server's port?"""
        key = ("authz", server, port, peer)
        hit: AuthzDecision | None = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.layer.authorize(server, port, peer)
        return hit

    def show(self, spiffe_id: SpiffeId, port: int | None = None) -> dict[str, Any]:
        """The effective policy for one workload (and port), for ``trustd policy show``."""
        out: dict[str, Any] = {
            "spiffeId": str(spiffe_id),
            "policyVersion": self.version,
            "policyHash": self.content_hash,
            "clientTlsOffGlobal": self.client_tls_off_global,
        }
        if port is not None:
            peer = self.explain_peer(spiffe_id, port)
            out["port"] = port
            out["peerAuthentication"] = {
                "mode": peer.mode.value,
                "source": peer.source,
                "instanceModes": sorted(m.value for m in self.layer.peer_modes(spiffe_id, port)),
            }
            if peer.overrides is not None:  # the rule between rollouts and objects, made visible
                out["peerAuthentication"]["overrides"] = peer.overrides
        out["authorizationPolicies"] = [
            o.ref
            for o in self.objects
            if isinstance(o, AuthorizationPolicy)
            and scope_level(o.metadata.namespace, o.spec.selector, spiffe_id) is not None
        ]
        out["clientTlsPolicies"] = [
            o.ref
            for o in self.objects
            if isinstance(o, ClientTLSPolicy)
            and scope_level(o.metadata.namespace, o.spec.selector, spiffe_id) is not None
        ]
        out["overlays"] = [o.name for o in self.overlays if o.matches(spiffe_id)]
        return out

    # -- serialisation ---------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "contentHash": self.content_hash,
            "layer": self.layer.to_json(),
            "pending": [{"version": v, "layer": lay.to_json()} for v, lay in self.pending],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicySet:
        return cls(
            version=int(data["version"]),
            layer=PolicyLayer.from_json(data["layer"]),
            pending=tuple(
                (int(p["version"]), PolicyLayer.from_json(p["layer"]))
                for p in data.get("pending", ())
            ),
        )
