from trustd.api.policy.v1 import policy_pb2 as _policy_pb2
from trustd.api.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("token", "csr_der", "hostname")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_der: bytes
    hostname: str
    def __init__(self, token: _Optional[str] = ..., csr_der: _Optional[bytes] = ..., hostname: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("agent_id", "svid", "bundle_pem")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SVID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    svid: _types_pb2.X509Svid
    bundle_pem: bytes
    def __init__(self, agent_id: _Optional[str] = ..., svid: _Optional[_Union[_types_pb2.X509Svid, _Mapping]] = ..., bundle_pem: _Optional[bytes] = ...) -> None: ...

class RenewAgentRequest(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...

class RenewAgentResponse(_message.Message):
    __slots__ = ("svid",)
    SVID_FIELD_NUMBER: _ClassVar[int]
    svid: _types_pb2.X509Svid
    def __init__(self, svid: _Optional[_Union[_types_pb2.X509Svid, _Mapping]] = ...) -> None: ...

class SvidRequest(_message.Message):
    __slots__ = ("entry_id", "csr_der")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    csr_der: bytes
    def __init__(self, entry_id: _Optional[str] = ..., csr_der: _Optional[bytes] = ...) -> None: ...

class SignSvidsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SvidRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SvidRequest, _Mapping]]] = ...) -> None: ...

class SignSvidsResponse(_message.Message):
    __slots__ = ("svids",)
    SVIDS_FIELD_NUMBER: _ClassVar[int]
    svids: _containers.RepeatedCompositeFieldContainer[_types_pb2.X509Svid]
    def __init__(self, svids: _Optional[_Iterable[_Union[_types_pb2.X509Svid, _Mapping]]] = ...) -> None: ...

class SignJwtSvidRequest(_message.Message):
    __slots__ = ("entry_id", "audience")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entry_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ...) -> None: ...

class SignJwtSvidResponse(_message.Message):
    __slots__ = ("svid",)
    SVID_FIELD_NUMBER: _ClassVar[int]
    svid: _types_pb2.JwtSvid
    def __init__(self, svid: _Optional[_Union[_types_pb2.JwtSvid, _Mapping]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("telemetry",)
    class TelemetryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    telemetry: _containers.ScalarMap[str, str]
    def __init__(self, telemetry: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEntriesRequest(_message.Message):
    __slots__ = ("since_revision",)
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    def __init__(self, since_revision: _Optional[int] = ...) -> None: ...

class EntryUpdate(_message.Message):
    __slots__ = ("revision", "full", "upserted", "removed")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    full: bool
    upserted: _containers.RepeatedCompositeFieldContainer[_types_pb2.Entry]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., full: _Optional[bool] = ..., upserted: _Optional[_Iterable[_Union[_types_pb2.Entry, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleUpdate(_message.Message):
    __slots__ = ("bundles", "tainted_key_ids")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    TAINTED_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[_types_pb2.Bundle]
    tainted_key_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, bundles: _Optional[_Iterable[_Union[_types_pb2.Bundle, _Mapping]]] = ..., tainted_key_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class WatchPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportPolicyRequest(_message.Message):
    __slots__ = ("acks", "statuses", "denials")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    DENIALS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Ack]
    statuses: _containers.RepeatedCompositeFieldContainer[_policy_pb2.ProxyStatus]
    denials: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Denial]
    def __init__(self, acks: _Optional[_Iterable[_Union[_policy_pb2.Ack, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[_policy_pb2.ProxyStatus, _Mapping]]] = ..., denials: _Optional[_Iterable[_Union[_policy_pb2.Denial, _Mapping]]] = ...) -> None: ...

class ReportPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
