"""``trustd agent --config F``: a node agent joining a remote ``trustd server``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError, field_validator

from trustd.config import _Model, format_validation_error, load_yaml
from trustd.errors import ConfigError
from trustd.spiffeid import TrustDomain


class AgentConfig(_Model):
    trust_domain: str = "trustd.local"
    server_address: str = "127.0.0.1:8081"  # the server's agent API (gRPC over mTLS)
    join_token: SecretStr | None = None  # one-time; only needed until the agent has joined
    join_token_file: str | None = None
    trust_bundle_path: str | None = None  # PEM bundle to verify the server on first join
    insecure_bootstrap: bool = False  # labs only: trust the server on first join unverified
    data_dir: str = ".trustd-agent"  # the agent's own SVID (0600); never workload keys
    agent_socket: str | None = None  # default DATA_DIR/public/agent.sock
    metrics_address: str = "127.0.0.1:9989"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, v: str) -> str:
        return TrustDomain.parse(v).name

    @property
    def agent_socket_path(self) -> Path:
        if self.agent_socket:
            return Path(self.agent_socket).absolute()
        return Path(self.data_dir).absolute() / "public" / "agent.sock"

    def token(self) -> str | None:
        if self.join_token is not None:
            return self.join_token.get_secret_value()
        if self.join_token_file:
            try:
                return Path(self.join_token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read joinTokenFile: {exc.strerror}") from None
        return os.environ.get("TRUSTD_JOIN_TOKEN")


ENV_KEYS = {
    "TRUSTD_TRUST_DOMAIN": "trustDomain",
    "TRUSTD_SERVER_ADDRESS": "serverAddress",
    "TRUSTD_DATA_DIR": "dataDir",
    "TRUSTD_AGENT_SOCKET": "agentSocket",
    "TRUSTD_METRICS_ADDRESS": "metricsAddress",
    "TRUSTD_LOG_LEVEL": "logLevel",
}


def load_agent_config(path: str | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    data: dict[str, Any] = load_yaml(path) if path else {}
    for env, key in ENV_KEYS.items():
        if os.environ.get(env):
            data[key] = os.environ[env]
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "agent config"))) from None
