"""Between trustd's messages (``trustd.api.*.v1``) and its domain values.

Both ends of every API translate here, so each field is mapped once: the server's
edges from domain values to messages, the agent, the proxy and the CLI back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, TypeVar

from cryptography import x509
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from trustd.api.policy.v1 import policy_pb2
from trustd.api.types.v1 import types_pb2
from trustd.bundle import Bundle
from trustd.ca.issuer import IssuedSvid
from trustd.ca.jwt import JwtSvid
from trustd.dataplane.proxy import DenialEvent
from trustd.entries import RegistrationEntry
from trustd.errors import InvalidArgumentError
from trustd.policy.effective import (
    ClientMode,
    Overlay,
    PeerMode,
    PolicyLayer,
    PolicySet,
    compile_glob,
)
from trustd.policy.loader import parse_object
from trustd.policy.model import dump
from trustd.policy.status import Destination, InboundStats, ProxyStatus
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain

# -- time ----------------------------------------------------------------------------


def timestamp(when: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(dt.UTC))
    return ts


def time_of(ts: Timestamp) -> dt.datetime:
    """A timestamp as a timezone-aware UTC datetime."""
    return ts.ToDatetime(tzinfo=dt.UTC)


def optional_timestamp(when: dt.datetime | None) -> Timestamp | None:
    """``None`` (the field stays unset) for no time."""
    return None if when is None else timestamp(when)


def optional_time(ts: Timestamp | None) -> dt.datetime | None:
    """``None`` for an unset (or absent) timestamp field."""
    return None if ts is None or ts.ByteSize() == 0 else time_of(ts)


# -- entries -------------------------------------------------------------------------


def entry_message(e: RegistrationEntry) -> types_pb2.Entry:
    return types_pb2.Entry(
        id=e.id,
        spiffe_id=str(e.spiffe_id),
        selectors=[str(s) for s in e.selectors],
        ttl_seconds=None if e.ttl is None else int(e.ttl.total_seconds()),
        dns_names=list(e.dns_names),
        revision=e.revision,
        agent_id=e.agent_id,
        created_at=timestamp(e.created_at),
        federates_with=[str(td.id) for td in e.federates_with],
    )


def entry_of(msg: types_pb2.Entry) -> RegistrationEntry:
    return RegistrationEntry(
        id=msg.id,
        spiffe_id=SpiffeId.parse(msg.spiffe_id),
        selectors=tuple(Selector.parse(s) for s in msg.selectors),
        ttl=dt.timedelta(seconds=msg.ttl_seconds) if msg.HasField("ttl_seconds") else None,
        dns_names=tuple(msg.dns_names),
        revision=msg.revision,
        agent_id=msg.agent_id if msg.HasField("agent_id") and msg.agent_id else None,
        created_at=time_of(msg.created_at),
        federates_with=tuple(TrustDomain.parse(td) for td in msg.federates_with),
    )


# -- SVIDs ---------------------------------------------------------------------------


def x509_svid_message(s: IssuedSvid) -> types_pb2.X509Svid:
    return types_pb2.X509Svid(
        entry_id=s.entry_id,
        spiffe_id=str(s.spiffe_id),
        cert_chain_der=list(s.chain_der),
        serial=s.serial,
        not_after=timestamp(s.not_after),
        authority_id=s.authority_id,
    )


def x509_svid_of(msg: types_pb2.X509Svid) -> IssuedSvid:
    if not msg.cert_chain_der:
        raise InvalidArgumentError("the server sent an svid without a certificate")
    return IssuedSvid(
        spiffe_id=SpiffeId.parse(msg.spiffe_id),
        certificate=x509.load_der_x509_certificate(msg.cert_chain_der[0]),
        chain_der=tuple(msg.cert_chain_der),
        serial=msg.serial,
        not_after=time_of(msg.not_after),
        authority_id=msg.authority_id,
        entry_id=msg.entry_id,
    )


def jwt_svid_message(s: JwtSvid, *, entry_id: str = "") -> types_pb2.JwtSvid:
    return types_pb2.JwtSvid(
        entry_id=entry_id,
        spiffe_id=str(s.spiffe_id),
        audience=list(s.audience),
        token=s.token,
        key_id=s.key_id,
        jti=s.jti,
        issued_at=timestamp(s.issued_at),
        expires_at=timestamp(s.expires_at),
    )


# -- bundles -------------------------------------------------------------------------


def bundle_message(b: Bundle) -> types_pb2.Bundle:
    return types_pb2.Bundle(
        trust_domain=str(b.trust_domain),
        sequence=b.sequence,
        spiffe_bundle=json.dumps(b.to_spiffe_json()).encode(),
    )


def bundle_of(msg: types_pb2.Bundle) -> Bundle:
    return Bundle.from_spiffe(TrustDomain.parse(msg.trust_domain), msg.spiffe_bundle)


# -- policy --------------------------------------------------------------------------


def policy_set_message(p: PolicySet) -> policy_pb2.PolicySet:
    return policy_pb2.PolicySet(
        version=p.version,
        content_hash=p.content_hash,
        layer=_layer_message(p.layer),
        pending=[
            policy_pb2.PendingLayer(version=v, layer=_layer_message(lay)) for v, lay in p.pending
        ],
    )


def policy_set_of(msg: policy_pb2.PolicySet) -> PolicySet:
    """The policy set; InvalidArgumentError when its layer does not hash to ``content_hash``."""
    policy = PolicySet(
        version=msg.version,
        layer=_layer_of(msg.layer),
        pending=tuple((p.version, _layer_of(p.layer)) for p in msg.pending),
    )
    if msg.content_hash and policy.content_hash != msg.content_hash:
        raise InvalidArgumentError(
            f"policy version {msg.version} does not match its content hash: not applied"
        )
    return policy


def _layer_message(layer: PolicyLayer) -> policy_pb2.PolicyLayer:
    return policy_pb2.PolicyLayer(
        objects=[
            policy_pb2.PolicyObject(ref=o.ref, manifest=json.dumps(dump(o)).encode())
            for o in layer.objects
        ],
        overlays=[_overlay_message(o) for o in layer.overlays],
        client_tls_off_global=layer.client_tls_off_global,
        object_versions=dict(layer.object_versions),
    )


def _layer_of(msg: policy_pb2.PolicyLayer) -> PolicyLayer:
    return PolicyLayer(
        objects=tuple(
            parse_object(json.loads(o.manifest), source=f"policy object {o.ref}", index=i + 1)
            for i, o in enumerate(msg.objects)
        ),
        overlays=tuple(_overlay_of(o) for o in msg.overlays),
        client_tls_off_global=msg.client_tls_off_global,
        object_versions=tuple(sorted(msg.object_versions.items())),
    )


def _overlay_message(o: Overlay) -> policy_pb2.Overlay:
    return policy_pb2.Overlay(
        name=o.name,
        selector=o.selector,
        server_mode=_mode(o.server_mode),
        client_mode=_mode(o.client_mode),
        hold_clients=o.hold_clients,
        canary_instances=sorted(o.canary_instances),
        canary_server_mode=_mode(o.canary_server_mode),
        canary_client_mode=_mode(o.canary_client_mode),
        since=o.since,
    )


def _overlay_of(msg: policy_pb2.Overlay) -> Overlay:
    def peer(name: str) -> PeerMode | None:
        return PeerMode(getattr(msg, name)) if msg.HasField(name) else None

    def client(name: str) -> ClientMode | None:
        return ClientMode(getattr(msg, name)) if msg.HasField(name) else None

    compile_glob(msg.selector)
    return Overlay(
        name=msg.name,
        selector=msg.selector,
        server_mode=peer("server_mode"),
        client_mode=client("client_mode"),
        hold_clients=msg.hold_clients,
        canary_instances=frozenset(msg.canary_instances),
        canary_server_mode=peer("canary_server_mode"),
        canary_client_mode=client("canary_client_mode"),
        since=msg.since,
    )


def _mode(mode: PeerMode | ClientMode | None) -> str | None:
    return None if mode is None else mode.value


def proxy_status_message(s: ProxyStatus) -> policy_pb2.ProxyStatus:
    return policy_pb2.ProxyStatus(
        proxy_id=s.proxy_id,
        spiffe_id=str(s.spiffe_id),
        acked_version=s.acked_version,
        inbound=[_inbound_message(i) for i in s.inbound],
        destinations=[_destination_message(d) for d in s.destinations],
        reported_at=optional_timestamp(s.reported_at),
    )


def proxy_status_of(msg: policy_pb2.ProxyStatus) -> ProxyStatus:
    return ProxyStatus(
        proxy_id=msg.proxy_id,
        spiffe_id=SpiffeId.parse(msg.spiffe_id),
        acked_version=msg.acked_version,
        inbound=tuple(_inbound_of(i) for i in msg.inbound),
        destinations=tuple(_destination_of(d) for d in msg.destinations),
        reported_at=optional_time(msg.reported_at if msg.HasField("reported_at") else None),
    )


def _inbound_message(i: InboundStats) -> policy_pb2.InboundStats:
    return _same_names(i, policy_pb2.InboundStats)


def _inbound_of(msg: policy_pb2.InboundStats) -> InboundStats:
    return _same_names_of(msg, InboundStats)


def _destination_message(d: Destination) -> policy_pb2.Destination:
    return _same_names(d, policy_pb2.Destination, spiffe_id=str(d.spiffe_id))


def _destination_of(msg: policy_pb2.Destination) -> Destination:
    return _same_names_of(msg, Destination, spiffe_id=SpiffeId.parse(msg.spiffe_id))


def denial_message(d: DenialEvent) -> policy_pb2.Denial:
    return _same_names(d, policy_pb2.Denial)


def denial_of(msg: policy_pb2.Denial) -> DenialEvent:
    return _same_names_of(msg, DenialEvent)


M = TypeVar("M", bound=Message)
V = TypeVar("V")


def _same_names(value: Any, message: type[M], **special: Any) -> M:
    """A message from a dataclass whose fields have the message's field names (datetimes
    become timestamps; ``None`` leaves a field unset); ``special`` overrides fields."""
    fields: dict[str, Any] = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    fields.update(special)
    return message(
        **{k: timestamp(v) if isinstance(v, dt.datetime) else v for k, v in fields.items()}
    )


def _same_names_of(msg: Message, cls: type[V], **special: Any) -> V:
    """The dataclass ``cls`` from a message with its field names: an unset optional field
    is ``None``, a timestamp a UTC datetime; ``special`` overrides fields."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # cls is a dataclass
        if f.name in special:
            fields[f.name] = special[f.name]
            continue
        descriptor = msg.DESCRIPTOR.fields_by_name[f.name]
        if descriptor.has_presence and not msg.HasField(f.name):
            fields[f.name] = None
        elif descriptor.message_type is Timestamp.DESCRIPTOR:
            fields[f.name] = time_of(getattr(msg, f.name))
        else:
            fields[f.name] = getattr(msg, f.name)
    return cls(**fields)
