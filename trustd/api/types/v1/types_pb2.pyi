import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("id", "spiffe_id", "selectors", "ttl_seconds", "dns_names", "revision", "agent_id", "created_at", "federates_with")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    agent_id: str
    created_at: _timestamp_pb2.Timestamp
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ..., agent_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., federates_with: _Optional[_Iterable[str]] = ...) -> None: ...

class X509Svid(_message.Message):
    __slots__ = ("entry_id", "spiffe_id", "cert_chain_der", "serial", "not_after", "authority_id")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    spiffe_id: str
    cert_chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    serial: str
    not_after: _timestamp_pb2.Timestamp
    authority_id: str
    def __init__(self, entry_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., cert_chain_der: _Optional[_Iterable[bytes]] = ..., serial: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., authority_id: _Optional[str] = ...) -> None: ...

class JwtSvid(_message.Message):
    __slots__ = ("entry_id", "spiffe_id", "audience", "token", "key_id", "jti", "issued_at", "expires_at")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    spiffe_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    token: str
    key_id: str
    jti: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, entry_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ..., token: _Optional[str] = ..., key_id: _Optional[str] = ..., jti: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("trust_domain", "sequence", "spiffe_bundle")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    sequence: int
    spiffe_bundle: bytes
    def __init__(self, trust_domain: _Optional[str] = ..., sequence: _Optional[int] = ..., spiffe_bundle: _Optional[bytes] = ...) -> None: ...
