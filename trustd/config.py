"""Configuration: YAML files, ``TRUSTD_*`` environment variables and flags, in that order.

Every key is camelCase in files (SPEC §2). Unknown keys are an error that
names the key. Secrets (tokens, PINs) may be given inline but are better read
from files (``tokenFile``, ``pinFile``); they never appear in errors or logs.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from trustd import durations
from trustd.errors import ConfigError, InvalidArgumentError
from trustd.spiffeid import TrustDomain


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def _duration(value: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise ValueError("duration out of range: use forms like 90s, 10m, 1h") from None
    if isinstance(value, str):
        try:
            return durations.parse(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a duration such as 1h or 10m")


def _positive_duration(value: object) -> dt.timedelta:
    delta = _duration(value)
    if delta <= dt.timedelta(0):
        raise ValueError("must be a positive duration such as 1h or 10m")
    return delta


class StoreConfig(_Model):
    kind: Literal["sqlite", "postgresql"] = "sqlite"
    path: str | None = None  # sqlite file; default D/trustd.db
    dsn: SecretStr | None = None  # postgresql://...


class AppRoleConfig(_Model):
    role_id: str
    secret_id: SecretStr | None = None
    secret_id_file: str | None = None
    mount: str = "approle"


class LocalKeyManagerConfig(_Model):
    kind: Literal["local"] = "local"
    directory: str | None = None  # default D/keys
    kek_file: str | None = None  # default D/kek (created); or TRUSTD_KEK


class MemoryKeyManagerConfig(_Model):
    kind: Literal["memory"]


class VaultTransitConfig(_Model):
    kind: Literal["vault-transit"]
    address: str
    token: SecretStr | None = None
    token_file: str | None = None
    app_role: AppRoleConfig | None = None
    mount: str = "transit"
    key_prefix: str = "trustd-"
    namespace: str | None = None
    ca_cert: str | None = None
    tls_skip_verify: bool = False
    timeout: float = 5.0


class Pkcs11Config(_Model):
    kind: Literal["pkcs11"]
    module: str
    token_label: str
    pin: SecretStr | None = None
    pin_file: str | None = None
    pin_env: str | None = None
    slot: int | None = None


KeyManagerConfig = Annotated[
    LocalKeyManagerConfig | MemoryKeyManagerConfig | VaultTransitConfig | Pkcs11Config,
    Field(discriminator="kind"),
]


class VaultPkiConfig(_Model):
    kind: Literal["vault-pki"]
    address: str
    token: SecretStr | None = None
    token_file: str | None = None
    app_role: AppRoleConfig | None = None
    mount: str = "pki"
    issuer: str | None = (
        None  # which issuer of the mount signs (pki/issuer/<ref>/sign-intermediate)
    )
    role: str | None = None  # refused with an explanation: Vault signs intermediates without roles
    namespace: str | None = None
    ca_cert: str | None = None
    tls_skip_verify: bool = False
    timeout: float = 10.0


class CaConfig(_Model):
    ttl: dt.timedelta = dt.timedelta(hours=24)
    key_type: Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"] = "ec-p256"

    _v = field_validator("ttl", mode="before")(classmethod(lambda cls, v: _positive_duration(v)))


class SvidConfig(_Model):
    default_ttl: dt.timedelta = dt.timedelta(hours=1)
    max_ttl: dt.timedelta = dt.timedelta(hours=24)

    _v = field_validator("default_ttl", "max_ttl", mode="before")(
        classmethod(lambda cls, v: _positive_duration(v))
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> SvidConfig:
        if self.default_ttl > self.max_ttl:
            raise ValueError(
                f"defaultTtl {durations.format(self.default_ttl)} is above maxTtl "
                f"{durations.format(self.max_ttl)}: lower defaultTtl or raise maxTtl"
            )
        return self


class JwtConfig(_Model):
    ttl: dt.timedelta = dt.timedelta(minutes=5)  # lifetime of a JWT-SVID the agents fetch
    max_ttl: dt.timedelta = dt.timedelta(hours=1)  # the most `svid mint --jwt --ttl` may ask
    key_ttl: dt.timedelta = dt.timedelta(hours=24)  # lifetime of each JWT signing key
    key_type: Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"] = "ec-p256"  # ES256

    _v = field_validator("ttl", "max_ttl", "key_ttl", mode="before")(
        classmethod(lambda cls, v: _positive_duration(v))
    )

    @model_validator(mode="after")
    def _ttls_fit(self) -> JwtConfig:
        if self.ttl > self.max_ttl:
            raise ValueError(
                f"ttl {durations.format(self.ttl)} is above maxTtl "
                f"{durations.format(self.max_ttl)}: lower ttl or raise maxTtl"
            )
        if self.max_ttl > self.key_ttl / 6:
            raise ValueError(
                f"maxTtl {durations.format(self.max_ttl)} is above a sixth of keyTtl "
                f"{durations.format(self.key_ttl)} (how long a key signs after the next is "
                "ready): lower maxTtl or raise keyTtl"
            )
        return self


class SyslogConfig(_Model):
    address: str  # host:port
    tls: bool = False
    ca_file: str | None = None
    app_name: str = "trustd"


class AuditConfig(_Model):
    directory: str | None = None  # default D/audit
    segment_max_bytes: int = 64 * 1024 * 1024
    rotate_daily: bool = True
    retention: dt.timedelta | None = None
    checkpoint_interval: dt.timedelta = dt.timedelta(minutes=5)
    syslog: SyslogConfig | None = None

    _v = field_validator("retention", "checkpoint_interval", mode="before")(
        classmethod(lambda cls, v: None if v is None else _duration(v))
    )


class RolloutConfig(_Model):
    settle_period: dt.timedelta = dt.timedelta(seconds=30)  # no plaintext this long before STRICT

    _v = field_validator("settle_period", mode="before")(classmethod(lambda cls, v: _duration(v)))


class BundleEndpointConfig(_Model):
    address: str  # host:port the bundle endpoint listens on (port 0: any free port)
    profile: Literal["https_spiffe", "https_web"] = "https_spiffe"
    cert_file: str | None = None  # https_web: PEM certificate chain (Web PKI)
    key_file: str | None = None  # https_web: its PEM private key

    @model_validator(mode="after")
    def _web_needs_cert(self) -> BundleEndpointConfig:
        if self.profile == "https_web" and not (self.cert_file and self.key_file):
            raise ValueError("profile https_web needs certFile and keyFile")
        if self.profile == "https_spiffe" and (self.cert_file or self.key_file):
            raise ValueError(
                "certFile and keyFile are for profile https_web; https_spiffe serves the "
                "server's own SVID"
            )
        return self


class FederationConfig(_Model):
    bundle_endpoint: BundleEndpointConfig | None = None  # None: no bundle endpoint
    refresh_hint: dt.timedelta = dt.timedelta(minutes=5)  # spiffe_refresh_hint we serve
    ca_file: str | None = None  # https_web endpoints we fetch from: CA file (default: system)

    _v = field_validator("refresh_hint", mode="before")(
        classmethod(lambda cls, v: _positive_duration(v))
    )


class ServerConfig(_Model):
    trust_domain: str = "trustd.local"
    data_dir: str = ".trustd"
    store: StoreConfig = StoreConfig()
    key_manager: KeyManagerConfig = LocalKeyManagerConfig()
    upstream_authority: VaultPkiConfig | None = None
    ca: CaConfig = CaConfig()
    svid: SvidConfig = SvidConfig()
    jwt: JwtConfig = JwtConfig()
    audit: AuditConfig = AuditConfig()
    rollout: RolloutConfig = RolloutConfig()
    federation: FederationConfig = FederationConfig()
    admin_socket: str | None = None  # default D/admin.sock
    agent_socket: str | None = None  # `trustd up`: default D/public/agent.sock
    server_address: str = "127.0.0.1:8081"
    metrics_address: str = "127.0.0.1:9988"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, v: str) -> str:
        try:
            return TrustDomain.parse(v).name
        except InvalidArgumentError as exc:  # pydantic reports only ValueError with the key
            raise ValueError(str(exc)) from None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).absolute()

    @property
    def admin_socket_path(self) -> Path:
        return (
            Path(self.admin_socket).absolute()
            if self.admin_socket
            else self.data_path / "admin.sock"
        )

    @property
    def agent_socket_path(self) -> Path:
        if self.agent_socket:
            return Path(self.agent_socket).absolute()
        return self.data_path / "public" / "agent.sock"


# flag / environment name -> config key (top level)
ENV_KEYS = {
    "TRUSTD_TRUST_DOMAIN": "trustDomain",
    "TRUSTD_DATA_DIR": "dataDir",
    "TRUSTD_ADMIN_SOCKET": "adminSocket",
    "TRUSTD_AGENT_SOCKET": "agentSocket",
    "TRUSTD_SERVER_ADDRESS": "serverAddress",
    "TRUSTD_METRICS_ADDRESS": "metricsAddress",
    "TRUSTD_LOG_LEVEL": "logLevel",
    "TRUSTD_LOG_FORMAT": "logFormat",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    kinds = {"local", "memory", "vault-transit", "pkcs11", "vault-pki"}
    where = ".".join(str(p) for p in err["loc"] if str(p) not in kinds)
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{source}: invalid value for {where!r}: {msg}"


def load_server_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ServerConfig:
    data: dict[str, Any] = load_yaml(path) if path else {}
    for env, key in ENV_KEYS.items():
        if os.environ.get(env):
            data[key] = os.environ[env]
    if os.environ.get("TRUSTD_STORE_DSN"):
        store = dict(data.get("store") or {})
        store.setdefault("kind", "postgresql")
        store["dsn"] = os.environ["TRUSTD_STORE_DSN"]
        data["store"] = store
    overrides = dict(overrides or {})
    # --bundle-endpoint-address / TRUSTD_BUNDLE_ENDPOINT_ADDRESS: federation.bundleEndpoint.address
    endpoint_address = overrides.pop("bundleEndpointAddress", None) or os.environ.get(
        "TRUSTD_BUNDLE_ENDPOINT_ADDRESS"
    )
    if endpoint_address:
        fed = dict(data.get("federation") or {})
        endpoint = dict(fed.get("bundleEndpoint") or {})
        endpoint["address"] = endpoint_address
        fed["bundleEndpoint"] = endpoint
        data["federation"] = fed
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "config"))) from None
