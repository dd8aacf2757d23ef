"""``trustd proxy --config F``: the configuration of SPEC §10, strictly validated.

.. code-block:: yaml

    agentSocket: ./.trustd/public/agent.sock   # SDS (SVID `default`, bundle `ROOTCA`)
    proxyId: web-1                 # optional: this instance's id (default: hostname-pid)
    inbound:                       # server side: peers -> local app
      - port: 15006                #   the port peers dial; policy is evaluated for it
        app: 127.0.0.1:8080
        bind: 0.0.0.0              #   optional, the default
    outbound:                      # client side: local app -> remote service
      - listen: 127.0.0.1:15001
        destination: spiffe://trustd.local/ns/shop/sa/backend
        address: 127.0.0.1:16006
    sniff: {timeout: 1s, maxPending: 1024}   # PERMISSIVE/STRICT protocol sniffing
    handshakeTimeout: 10s
    connectTimeout: 5s
    drainTimeout: 30s              # on shutdown, how long open connections may finish
    reportInterval: 5s             # how often the proxy reports to the control plane
    metricsAddress: 127.0.0.1:15090   # optional: /metrics, /healthz, /readyz
    core: auto                     # auto | native | python: the data-plane core
    workers: 1                     # native core: worker threads, one SO_REUSEPORT socket each
    identity: {kind: sds}          # or {kind: files, certFile, keyFile, bundleFile}
    policy: {kind: agent}          # or {kind: files, paths: [policies/]} or {kind: none}

Unknown keys are errors that name the key. ``TRUSTD_AGENT_SOCKET`` and
``TRUSTD_PROXY_METRICS_ADDRESS`` override the file.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from trustd import durations
from trustd.dataplane.errors import ProxyConfigError
from trustd.policy.loader import StrictLoader
from trustd.spiffeid import InvalidSpiffeIdError, SpiffeId


def _duration(value: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        try:
            return durations.parse(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a duration such as 1s or 500ms")


def _positive(value: dt.timedelta) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise ValueError("must be positive")
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    return value


def _spiffe_id(value: str) -> str:
    try:
        SpiffeId.parse(value)
    except InvalidSpiffeIdError as exc:
        raise ValueError(str(exc)) from None
    return value


Duration = Annotated[dt.timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
HostPort = Annotated[str, AfterValidator(_host_port)]
SpiffeIdText = Annotated[str, AfterValidator(_spiffe_id)]


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class InboundConfig(_Model):
    port: Annotated[int, Field(ge=0, le=65535)]  # 0: an ephemeral port (tests)
    app: HostPort  # where the local application listens
    bind: str = "0.0.0.0"  # noqa: S104 - a sidecar's inbound port is for remote peers


class OutboundConfig(_Model):
    listen: HostPort  # where the local application connects
    destination: SpiffeIdText  # the SPIFFE ID the server must present
    address: HostPort  # where the destination's proxy listens

    @property
    def destination_id(self) -> SpiffeId:
        return SpiffeId.parse(self.destination)


class SniffConfig(_Model):
    timeout: Duration = dt.timedelta(seconds=1)  # no first byte by then: a server-first protocol
    max_pending: Annotated[int, Field(ge=1)] = 1024  # connections sniffing or in handshake at once


class SdsIdentityConfig(_Model):
    kind: Literal["sds"] = "sds"
    svid_name: str = "default"  # the SDS resource name of our SVID
    bundle_name: str = "ROOTCA"  # the SDS resource name of our trust bundle


class FilesIdentityConfig(_Model):
    kind: Literal["files"]
    cert_file: str  # PEM chain, leaf first
    key_file: str  # PEM private key
    bundle_file: str  # PEM CA certificates of our trust domain
    poll_interval: Duration = dt.timedelta(seconds=5)  # how often to look for new files


class AgentPolicyConfig(_Model):
    kind: Literal["agent"] = "agent"


class FilesPolicyConfig(_Model):
    kind: Literal["files"]
    paths: Annotated[list[str], Field(min_length=1)]  # files or directories of policy YAML
    poll_interval: Duration = dt.timedelta(seconds=5)


class NoPolicyConfig(_Model):
    kind: Literal["none"]  # no policy: servers PERMISSIVE, clients AUTO


class ProxyConfig(_Model):
    agent_socket: str = "./.trustd/public/agent.sock"  # SDS and policy come from here
    proxy_id: str | None = None  # default: <hostname>-<pid>
    inbound: list[InboundConfig] = Field(default_factory=list)
    outbound: list[OutboundConfig] = Field(default_factory=list)
    sniff: SniffConfig = SniffConfig()
    handshake_timeout: Duration = dt.timedelta(seconds=10)
    connect_timeout: Duration = dt.timedelta(seconds=5)
    drain_timeout: Duration = dt.timedelta(seconds=30)
    report_interval: Duration = dt.timedelta(seconds=5)
    metrics_address: HostPort | None = None
    core: Literal["auto", "native", "python"] = (
        "auto"  # the data-plane core (TRUSTD_PROXY_CORE wins)
    )
    workers: Annotated[int, Field(ge=1, le=64)] = 1  # native worker threads (SO_REUSEPORT)
    identity: Annotated[SdsIdentityConfig | FilesIdentityConfig, Field(discriminator="kind")] = (
        SdsIdentityConfig()
    )
    policy: Annotated[
        AgentPolicyConfig | FilesPolicyConfig | NoPolicyConfig, Field(discriminator="kind")
    ] = AgentPolicyConfig()


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def parse_config(data: Any, *, source: str = "<config>") -> ProxyConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProxyConfigError(f"{source}: expected a mapping of proxy settings")
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}: remove it or check its spelling"
            else:
                msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"{source}: {_loc(loc)}: {msg}")
        raise ProxyConfigError("invalid proxy configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, *, environ: dict[str, str] | None = None) -> ProxyConfig:
    """Read a proxy config file; ``TRUSTD_*`` variables override it."""
    env = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProxyConfigError(f"cannot read the proxy config {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ProxyConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict):
        if env.get("TRUSTD_AGENT_SOCKET"):
            data["agentSocket"] = env["TRUSTD_AGENT_SOCKET"]
        if env.get("TRUSTD_PROXY_METRICS_ADDRESS"):
            data["metricsAddress"] = env["TRUSTD_PROXY_METRICS_ADDRESS"]
    return parse_config(data, source=str(path))
