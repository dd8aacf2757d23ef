import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from trustd.api.policy.v1 import policy_pb2 as _policy_pb2
from trustd.api.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateEntryRequest(_message.Message):
    __slots__ = ("spiffe_id", "selectors", "ttl_seconds", "dns_names", "agent_id", "federates_with")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    agent_id: str
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spiffe_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., agent_id: _Optional[str] = ..., federates_with: _Optional[_Iterable[str]] = ...) -> None: ...

class EntryIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_types_pb2.Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[_types_pb2.Entry, _Mapping]]] = ...) -> None: ...

class MintX509SvidRequest(_message.Message):
    __slots__ = ("spiffe_id", "csr", "ttl_seconds", "dns_names")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    csr: bytes
    ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spiffe_id: _Optional[str] = ..., csr: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ...) -> None: ...

class MintX509SvidResponse(_message.Message):
    __slots__ = ("svid", "bundle_pem")
    SVID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    svid: _types_pb2.X509Svid
    bundle_pem: bytes
    def __init__(self, svid: _Optional[_Union[_types_pb2.X509Svid, _Mapping]] = ..., bundle_pem: _Optional[bytes] = ...) -> None: ...

class MintJwtSvidRequest(_message.Message):
    __slots__ = ("spiffe_id", "audience", "ttl_seconds")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    def __init__(self, spiffe_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class MintJwtSvidResponse(_message.Message):
    __slots__ = ("svid",)
    SVID_FIELD_NUMBER: _ClassVar[int]
    svid: _types_pb2.JwtSvid
    def __init__(self, svid: _Optional[_Union[_types_pb2.JwtSvid, _Mapping]] = ...) -> None: ...

class BundleResponse(_message.Message):
    __slots__ = ("bundle", "pem")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    bundle: _types_pb2.Bundle
    pem: bytes
    def __init__(self, bundle: _Optional[_Union[_types_pb2.Bundle, _Mapping]] = ..., pem: _Optional[bytes] = ...) -> None: ...

class Authority(_message.Message):
    __slots__ = ("id", "state", "tainted", "revoked", "not_before", "not_after", "key_backend", "key_algorithm", "subject", "upstream")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TAINTED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    KEY_BACKEND_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    tainted: bool
    revoked: bool
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    key_backend: str
    key_algorithm: str
    subject: str
    upstream: bool
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., tainted: _Optional[bool] = ..., revoked: _Optional[bool] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_backend: _Optional[str] = ..., key_algorithm: _Optional[str] = ..., subject: _Optional[str] = ..., upstream: _Optional[bool] = ...) -> None: ...

class ListAuthoritiesResponse(_message.Message):
    __slots__ = ("authorities",)
    AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    authorities: _containers.RepeatedCompositeFieldContainer[Authority]
    def __init__(self, authorities: _Optional[_Iterable[_Union[Authority, _Mapping]]] = ...) -> None: ...

class AuthorityRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class Blocker(_message.Message):
    __slots__ = ("serial", "spiffe_id", "not_after", "holder", "entry_id", "issued_at")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    serial: str
    spiffe_id: str
    not_after: _timestamp_pb2.Timestamp
    holder: str
    entry_id: str
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, serial: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., holder: _Optional[str] = ..., entry_id: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListBlockersResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[Blocker]
    def __init__(self, certificates: _Optional[_Iterable[_Union[Blocker, _Mapping]]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds",)
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    def __init__(self, ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "spiffe_id", "serial", "not_after", "joined_at", "last_seen", "evicted", "hostname")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    serial: str
    not_after: _timestamp_pb2.Timestamp
    joined_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    evicted: bool
    hostname: str
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., joined_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evicted: _Optional[bool] = ..., hostname: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class AgentIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class EvictAgentResponse(_message.Message):
    __slots__ = ("id", "evicted")
    ID_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    evicted: bool
    def __init__(self, id: _Optional[str] = ..., evicted: _Optional[bool] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("ready", "reason", "trust_domain")
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    reason: str
    trust_domain: str
    def __init__(self, ready: _Optional[bool] = ..., reason: _Optional[str] = ..., trust_domain: _Optional[str] = ...) -> None: ...

class PolicyFile(_message.Message):
    __slots__ = ("name", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("files", "dry_run", "force", "prune")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    dry_run: bool
    force: bool
    prune: bool
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., force: _Optional[bool] = ..., prune: _Optional[bool] = ...) -> None: ...

class ApplyPolicyResponse(_message.Message):
    __slots__ = ("version", "hash", "published", "forced_reasons", "diff")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    FORCED_REASONS_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    published: bool
    forced_reasons: _containers.RepeatedScalarFieldContainer[str]
    diff: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., published: _Optional[bool] = ..., forced_reasons: _Optional[_Iterable[str]] = ..., diff: _Optional[_Iterable[str]] = ...) -> None: ...

class ShowPolicyRequest(_message.Message):
    __slots__ = ("spiffe_id", "port")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    port: int
    def __init__(self, spiffe_id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class DiffPolicyRequest(_message.Message):
    __slots__ = ("files", "prune")
    FILES_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    prune: bool
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., prune: _Optional[bool] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("ref", "change", "fields")
    REF_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    change: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., change: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class DiffPolicyResponse(_message.Message):
    __slots__ = ("empty", "lines", "changes", "client_tls_off_global")
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TLS_OFF_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    empty: bool
    lines: _containers.RepeatedScalarFieldContainer[str]
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChange]
    client_tls_off_global: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, empty: _Optional[bool] = ..., lines: _Optional[_Iterable[str]] = ..., changes: _Optional[_Iterable[_Union[PolicyChange, _Mapping]]] = ..., client_tls_off_global: _Optional[_Iterable[bool]] = ...) -> None: ...

class ShowPolicyResponse(_message.Message):
    __slots__ = ("spiffe_id", "policy_version", "policy_hash", "client_tls_off_global", "port", "peer_authentication", "authorization_policies", "client_tls_policies", "overlays")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TLS_OFF_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_AUTHENTICATION_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_POLICIES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TLS_POLICIES_FIELD_NUMBER: _ClassVar[int]
    OVERLAYS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    policy_version: int
    policy_hash: str
    client_tls_off_global: bool
    port: int
    peer_authentication: PeerAuthenticationDecision
    authorization_policies: _containers.RepeatedScalarFieldContainer[str]
    client_tls_policies: _containers.RepeatedScalarFieldContainer[str]
    overlays: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spiffe_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., policy_hash: _Optional[str] = ..., client_tls_off_global: _Optional[bool] = ..., port: _Optional[int] = ..., peer_authentication: _Optional[_Union[PeerAuthenticationDecision, _Mapping]] = ..., authorization_policies: _Optional[_Iterable[str]] = ..., client_tls_policies: _Optional[_Iterable[str]] = ..., overlays: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerAuthenticationDecision(_message.Message):
    __slots__ = ("mode", "source", "instance_modes", "overrides")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_MODES_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    mode: str
    source: str
    instance_modes: _containers.RepeatedScalarFieldContainer[str]
    overrides: str
    def __init__(self, mode: _Optional[str] = ..., source: _Optional[str] = ..., instance_modes: _Optional[_Iterable[str]] = ..., overrides: _Optional[str] = ...) -> None: ...

class Enforcement(_message.Message):
    __slots__ = ("proxy_id", "spiffe_id", "side", "port", "destination", "enforced", "wanted", "plaintext_total", "tls_total", "mtls_total", "plaintext_since_mode", "agrees", "ok", "text")
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    WANTED_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MTLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SINCE_MODE_FIELD_NUMBER: _ClassVar[int]
    AGREES_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    spiffe_id: str
    side: str
    port: int
    destination: str
    enforced: str
    wanted: str
    plaintext_total: int
    tls_total: int
    mtls_total: int
    plaintext_since_mode: int
    agrees: bool
    ok: bool
    text: str
    def __init__(self, proxy_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., side: _Optional[str] = ..., port: _Optional[int] = ..., destination: _Optional[str] = ..., enforced: _Optional[str] = ..., wanted: _Optional[str] = ..., plaintext_total: _Optional[int] = ..., tls_total: _Optional[int] = ..., mtls_total: _Optional[int] = ..., plaintext_since_mode: _Optional[int] = ..., agrees: _Optional[bool] = ..., ok: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class PolicyStatusResponse(_message.Message):
    __slots__ = ("version", "hash", "objects", "client_tls_off_global", "pending", "proxies", "enforcement", "converged")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TLS_OFF_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    objects: _containers.RepeatedScalarFieldContainer[str]
    client_tls_off_global: bool
    pending: bool
    proxies: _containers.RepeatedCompositeFieldContainer[_policy_pb2.ProxyStatus]
    enforcement: _containers.RepeatedCompositeFieldContainer[Enforcement]
    converged: bool
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., objects: _Optional[_Iterable[str]] = ..., client_tls_off_global: _Optional[bool] = ..., pending: _Optional[bool] = ..., proxies: _Optional[_Iterable[_Union[_policy_pb2.ProxyStatus, _Mapping]]] = ..., enforcement: _Optional[_Iterable[_Union[Enforcement, _Mapping]]] = ..., converged: _Optional[bool] = ...) -> None: ...

class ClientTlsRequest(_message.Message):
    __slots__ = ("off", "force")
    OFF_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    off: bool
    force: bool
    def __init__(self, off: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("selector", "target", "canary", "step_timeout")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    selector: str
    target: str
    canary: int
    step_timeout: str
    def __init__(self, selector: _Optional[str] = ..., target: _Optional[str] = ..., canary: _Optional[int] = ..., step_timeout: _Optional[str] = ...) -> None: ...

class RolloutStatusResponse(_message.Message):
    __slots__ = ("id", "state", "step", "step_index", "phase", "target", "selector", "canary", "canary_instances", "policy_version", "waiting_for", "not_enforced", "enforcement", "reason", "started_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CANARY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    NOT_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    step: str
    step_index: int
    phase: str
    target: str
    selector: str
    canary: int
    canary_instances: _containers.RepeatedScalarFieldContainer[str]
    policy_version: int
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    not_enforced: _containers.RepeatedScalarFieldContainer[str]
    enforcement: _containers.RepeatedCompositeFieldContainer[Enforcement]
    reason: str
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[str] = ..., step_index: _Optional[int] = ..., phase: _Optional[str] = ..., target: _Optional[str] = ..., selector: _Optional[str] = ..., canary: _Optional[int] = ..., canary_instances: _Optional[_Iterable[str]] = ..., policy_version: _Optional[int] = ..., waiting_for: _Optional[_Iterable[str]] = ..., not_enforced: _Optional[_Iterable[str]] = ..., enforcement: _Optional[_Iterable[_Union[Enforcement, _Mapping]]] = ..., reason: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateFederationRequest(_message.Message):
    __slots__ = ("trust_domain", "endpoint_url", "profile", "endpoint_spiffe_id", "bundle")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_URL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    endpoint_url: str
    profile: str
    endpoint_spiffe_id: str
    bundle: bytes
    def __init__(self, trust_domain: _Optional[str] = ..., endpoint_url: _Optional[str] = ..., profile: _Optional[str] = ..., endpoint_spiffe_id: _Optional[str] = ..., bundle: _Optional[bytes] = ...) -> None: ...

class FederationRequest(_message.Message):
    __slots__ = ("trust_domain",)
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    def __init__(self, trust_domain: _Optional[str] = ...) -> None: ...

class Federation(_message.Message):
    __slots__ = ("trust_domain", "endpoint_url", "profile", "endpoint_spiffe_id", "bundle", "refreshed_at", "next_refresh_at", "last_error", "created_at")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_URL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_REFRESH_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    endpoint_url: str
    profile: str
    endpoint_spiffe_id: str
    bundle: _types_pb2.Bundle
    refreshed_at: _timestamp_pb2.Timestamp
    next_refresh_at: _timestamp_pb2.Timestamp
    last_error: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, trust_domain: _Optional[str] = ..., endpoint_url: _Optional[str] = ..., profile: _Optional[str] = ..., endpoint_spiffe_id: _Optional[str] = ..., bundle: _Optional[_Union[_types_pb2.Bundle, _Mapping]] = ..., refreshed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_refresh_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListFederationsResponse(_message.Message):
    __slots__ = ("federations",)
    FEDERATIONS_FIELD_NUMBER: _ClassVar[int]
    federations: _containers.RepeatedCompositeFieldContainer[Federation]
    def __init__(self, federations: _Optional[_Iterable[_Union[Federation, _Mapping]]] = ...) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "first_bad_seq", "problem", "events_checked", "first_seq", "last_seq", "checkpoints_checked", "last_checkpoint_seq", "head_seq", "server_id", "servers")
    OK_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    first_bad_seq: int
    problem: str
    events_checked: int
    first_seq: int
    last_seq: int
    checkpoints_checked: int
    last_checkpoint_seq: int
    head_seq: int
    server_id: str
    servers: _containers.RepeatedCompositeFieldContainer[ServerAuditReport]
    def __init__(self, ok: _Optional[bool] = ..., first_bad_seq: _Optional[int] = ..., problem: _Optional[str] = ..., events_checked: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., checkpoints_checked: _Optional[int] = ..., last_checkpoint_seq: _Optional[int] = ..., head_seq: _Optional[int] = ..., server_id: _Optional[str] = ..., servers: _Optional[_Iterable[_Union[ServerAuditReport, _Mapping]]] = ...) -> None: ...

class ServerAuditReport(_message.Message):
    __slots__ = ("server_id", "ok", "first_bad_seq", "problem", "events_checked", "first_seq", "last_seq", "checkpoints_checked", "last_checkpoint_seq")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_SEQ_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    ok: bool
    first_bad_seq: int
    problem: str
    events_checked: int
    first_seq: int
    last_seq: int
    checkpoints_checked: int
    last_checkpoint_seq: int
    def __init__(self, server_id: _Optional[str] = ..., ok: _Optional[bool] = ..., first_bad_seq: _Optional[int] = ..., problem: _Optional[str] = ..., events_checked: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., checkpoints_checked: _Optional[int] = ..., last_checkpoint_seq: _Optional[int] = ...) -> None: ...

class AuditKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: bytes
    def __init__(self, keys: _Optional[bytes] = ...) -> None: ...

class ExportAuditRequest(_message.Message):
    __slots__ = ("format", "since", "until", "types", "outcome")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    format: str
    since: str
    until: str
    types: _containers.RepeatedScalarFieldContainer[str]
    outcome: str
    def __init__(self, format: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., types: _Optional[_Iterable[str]] = ..., outcome: _Optional[str] = ...) -> None: ...

class ExportAuditChunk(_message.Message):
    __slots__ = ("total", "data", "done")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    total: int
    data: str
    done: int
    def __init__(self, total: _Optional[int] = ..., data: _Optional[str] = ..., done: _Optional[int] = ...) -> None: ...

class TailAuditRequest(_message.Message):
    __slots__ = ("follow", "last")
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    follow: bool
    last: int
    def __init__(self, follow: _Optional[bool] = ..., last: _Optional[int] = ...) -> None: ...

class AuditLine(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...
