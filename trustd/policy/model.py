"""The policy objects of SPEC §8, as strict pydantic models.

Every model forbids unknown fields and uses strict types (a string is never
coerced to a number or a bool to a string). Field names are the camelCase ones
written in YAML. Globs are validated here and compiled by
:mod:`trustd.policy.effective`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from trustd.policy.errors import InvalidGlobError
from trustd.policy.glob import SpiffeGlob

API_VERSION = "trustd.io/v1alpha1"
ROOT_NAMESPACE = "trustd-system"  # objects here are mesh-wide
KINDS = ("PeerAuthentication", "ClientTLSPolicy", "AuthorizationPolicy")

_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MIN_PORT, MAX_PORT = 1, 65535


def _glob(value: str) -> str:
    try:
        SpiffeGlob.parse(value)
    except InvalidGlobError as exc:
        raise ValueError(str(exc)) from None
    return value


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "use lower-case letters, digits, '-' and '.', starting and ending with a "
            "letter or digit (at most 253 characters)"
        )
    return value


def _namespace(value: str) -> str:
    if not _NAMESPACE_RE.fullmatch(value):
        raise ValueError(
            "use lower-case letters, digits and '-', starting and ending with a letter or "
            "digit (at most 63 characters)"
        )
    return value


Glob = Annotated[str, AfterValidator(_glob)]
Name = Annotated[str, AfterValidator(_name)]
Namespace = Annotated[str, AfterValidator(_namespace)]
Port = Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT)]
PeerModeName = Literal["STRICT", "PERMISSIVE", "DISABLE"]
ClientModeName = Literal["AUTO", "MUTUAL", "DISABLE"]
ActionName = Literal["ALLOW", "DENY"]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class Metadata(_Strict):
    name: Name  # unique per kind and namespace
    namespace: Namespace  # "trustd-system" means mesh-wide, else workloads under /ns/<namespace>/
    labels: dict[str, str] | None = None  # free-form, ignored by the engine
    annotations: dict[str, str] | None = None  # free-form, ignored by the engine


class WorkloadSelector(_Strict):
    spiffe_ids: Annotated[list[Glob], Field(min_length=1)]  # the workloads the object narrows to


class MtlsSettings(_Strict):
    mode: PeerModeName  # what the server-side proxy accepts


def _port_keys(value: Any) -> Any:
    """Port maps may be written with bare (``8080:``) or quoted (``"8080":``) keys."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    for raw, item in value.items():
        key = raw
        if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 5:
            key = int(raw)
        if isinstance(key, bool) or not isinstance(key, int):
            raise ValueError(f"port {key!r} is not a number: write ports as 1-65535")
        if not MIN_PORT <= key <= MAX_PORT:
            raise ValueError(f"port {key} is out of range: write ports as 1-65535")
        if key in out:
            raise ValueError(f"port {key} appears twice: keep one entry per port")
        out[key] = item
    return out


class PeerAuthenticationSpec(_Strict):
    selector: WorkloadSelector | None = None  # narrows the namespace scope to these workloads
    mtls: MtlsSettings | None = None  # None: inherit from the less specific objects
    port_level_mtls: dict[int, MtlsSettings] | None = None  # beats mtls for these ports

    @field_validator("port_level_mtls", mode="before")
    @classmethod
    def _check_port_keys(cls, value: Any) -> Any:
        return _port_keys(value)


class TlsSettings(_Strict):
    mode: ClientModeName  # AUTO: mTLS exactly when the destination accepts it


class DestinationSelector(_Strict):
    spiffe_ids: Annotated[list[Glob], Field(min_length=1)]  # the servers this policy is about


class ClientTLSPolicySpec(_Strict):
    selector: WorkloadSelector | None = None  # narrows the clients (namespace scope) further
    destination: DestinationSelector | None = None  # None: every destination
    tls: TlsSettings  # how the client calls the destination


class Source(_Strict):
    principals: list[Glob] | None = None  # peer SPIFFE ID globs
    namespaces: list[Namespace] | None = None  # peer namespaces (/ns/<namespace>/)

    @model_validator(mode="after")
    def _not_empty(self) -> Source:
        if not self.principals and not self.namespaces:
            raise ValueError("a 'from' entry needs principals or namespaces")
        return self


class Operation(_Strict):
    ports: Annotated[list[Port], Field(min_length=1)]  # server ports the rule covers


class Rule(_Strict):
    from_: list[Source] | None = Field(default=None, alias="from")  # None: any peer
    to: list[Operation] | None = None  # None: any port


class AuthorizationPolicySpec(_Strict):
    selector: WorkloadSelector | None = None  # the servers the policy protects
    action: ActionName = "ALLOW"  # DENY policies are evaluated first
    rules: list[Rule] = Field(default_factory=list)  # no rule: matches nothing


class _Object(_Strict):
    api_version: Literal["trustd.io/v1alpha1"]
    metadata: Metadata

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique within a policy set."""
        kind: str = getattr(self, "kind")  # noqa: B009 - every subclass declares kind
        return (kind, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        """``Kind/namespace/name``, as shown in explanations and diffs."""
        kind, ns, name = self.key
        return f"{kind}/{ns}/{name}"


class PeerAuthentication(_Object):
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec


class ClientTLSPolicy(_Object):
    kind: Literal["ClientTLSPolicy"]
    spec: ClientTLSPolicySpec


class AuthorizationPolicy(_Object):
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec


PolicyObject = PeerAuthentication | ClientTLSPolicy | AuthorizationPolicy
MODELS: dict[str, type[PeerAuthentication] | type[ClientTLSPolicy] | type[AuthorizationPolicy]] = {
    "PeerAuthentication": PeerAuthentication,
    "ClientTLSPolicy": ClientTLSPolicy,
    "AuthorizationPolicy": AuthorizationPolicy,
}


def dump(obj: PolicyObject) -> dict[str, Any]:
    """The object as YAML/JSON-ready data, with the camelCase field names."""
    data = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: data[k] for k in ("apiVersion", "kind", "metadata", "spec")}
