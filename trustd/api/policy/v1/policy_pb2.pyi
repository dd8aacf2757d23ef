import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyObject(_message.Message):
    __slots__ = ("ref", "manifest")
    REF_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ref: str
    manifest: bytes
    def __init__(self, ref: _Optional[str] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class Overlay(_message.Message):
    __slots__ = ("name", "selector", "server_mode", "client_mode", "hold_clients", "canary_instances", "canary_server_mode", "canary_client_mode", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SERVER_MODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    HOLD_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CANARY_SERVER_MODE_FIELD_NUMBER: _ClassVar[int]
    CANARY_CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    selector: str
    server_mode: str
    client_mode: str
    hold_clients: bool
    canary_instances: _containers.RepeatedScalarFieldContainer[str]
    canary_server_mode: str
    canary_client_mode: str
    since: int
    def __init__(self, name: _Optional[str] = ..., selector: _Optional[str] = ..., server_mode: _Optional[str] = ..., client_mode: _Optional[str] = ..., hold_clients: _Optional[bool] = ..., canary_instances: _Optional[_Iterable[str]] = ..., canary_server_mode: _Optional[str] = ..., canary_client_mode: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class PolicyLayer(_message.Message):
    __slots__ = ("objects", "overlays", "client_tls_off_global", "object_versions")
    class ObjectVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OVERLAYS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TLS_OFF_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    OBJECT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[PolicyObject]
    overlays: _containers.RepeatedCompositeFieldContainer[Overlay]
    client_tls_off_global: bool
    object_versions: _containers.ScalarMap[str, int]
    def __init__(self, objects: _Optional[_Iterable[_Union[PolicyObject, _Mapping]]] = ..., overlays: _Optional[_Iterable[_Union[Overlay, _Mapping]]] = ..., client_tls_off_global: _Optional[bool] = ..., object_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PendingLayer(_message.Message):
    __slots__ = ("version", "layer")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    version: int
    layer: PolicyLayer
    def __init__(self, version: _Optional[int] = ..., layer: _Optional[_Union[PolicyLayer, _Mapping]] = ...) -> None: ...

class PolicySet(_message.Message):
    __slots__ = ("version", "content_hash", "layer", "pending")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    version: int
    content_hash: str
    layer: PolicyLayer
    pending: _containers.RepeatedCompositeFieldContainer[PendingLayer]
    def __init__(self, version: _Optional[int] = ..., content_hash: _Optional[str] = ..., layer: _Optional[_Union[PolicyLayer, _Mapping]] = ..., pending: _Optional[_Iterable[_Union[PendingLayer, _Mapping]]] = ...) -> None: ...

class InboundStats(_message.Message):
    __slots__ = ("port", "mode", "mode_version", "plaintext_since_mode", "plaintext_active", "plaintext_total", "tls_active", "tls_total", "last_plaintext_at")
    PORT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SINCE_MODE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TLS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_PLAINTEXT_AT_FIELD_NUMBER: _ClassVar[int]
    port: int
    mode: str
    mode_version: int
    plaintext_since_mode: int
    plaintext_active: int
    plaintext_total: int
    tls_active: int
    tls_total: int
    last_plaintext_at: _timestamp_pb2.Timestamp
    def __init__(self, port: _Optional[int] = ..., mode: _Optional[str] = ..., mode_version: _Optional[int] = ..., plaintext_since_mode: _Optional[int] = ..., plaintext_active: _Optional[int] = ..., plaintext_total: _Optional[int] = ..., tls_active: _Optional[int] = ..., tls_total: _Optional[int] = ..., last_plaintext_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("spiffe_id", "port", "transport", "mtls_total", "plaintext_total")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    MTLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    port: int
    transport: str
    mtls_total: int
    plaintext_total: int
    def __init__(self, spiffe_id: _Optional[str] = ..., port: _Optional[int] = ..., transport: _Optional[str] = ..., mtls_total: _Optional[int] = ..., plaintext_total: _Optional[int] = ...) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("proxy_id", "spiffe_id", "acked_version", "inbound", "destinations", "reported_at")
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    INBOUND_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    spiffe_id: str
    acked_version: int
    inbound: _containers.RepeatedCompositeFieldContainer[InboundStats]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    reported_at: _timestamp_pb2.Timestamp
    def __init__(self, proxy_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., acked_version: _Optional[int] = ..., inbound: _Optional[_Iterable[_Union[InboundStats, _Mapping]]] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Denial(_message.Message):
    __slots__ = ("time", "proxy_id", "listener", "reason", "detail", "peer_address", "peer_spiffe_id", "local_spiffe_id", "policy_version")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    LISTENER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    proxy_id: str
    listener: str
    reason: str
    detail: str
    peer_address: str
    peer_spiffe_id: str
    local_spiffe_id: str
    policy_version: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., proxy_id: _Optional[str] = ..., listener: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., peer_address: _Optional[str] = ..., peer_spiffe_id: _Optional[str] = ..., local_spiffe_id: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("proxy_id", "version")
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    version: int
    def __init__(self, proxy_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("proxy_id",)
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    def __init__(self, proxy_id: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: PolicySet
    def __init__(self, policy: _Optional[_Union[PolicySet, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ProxyStatus
    def __init__(self, status: _Optional[_Union[ProxyStatus, _Mapping]] = ...) -> None: ...

class DenyRequest(_message.Message):
    __slots__ = ("denial",)
    DENIAL_FIELD_NUMBER: _ClassVar[int]
    denial: Denial
    def __init__(self, denial: _Optional[_Union[Denial, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
