"""`trustd proxy --config F`: SPEC §10 keys, strictly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustd.dataplane import ProxyConfigError, load_config
from trustd.dataplane.config import FilesIdentityConfig, SdsIdentityConfig

SPEC_EXAMPLE = """\
agentSocket: ./.trustd/public/agent.sock
inbound:
  - port: 15006
    app: 127.0.0.1:8080
outbound:
  - listen: 127.0.0.1:15001
    destination: spiffe://trustd.local/ns/shop/sa/backend
    address: 127.0.0.1:16006
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proxy.yaml"
    p.write_text(text)
    return p


def test_the_spec_example_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SPEC_EXAMPLE), environ={})
    assert cfg.agent_socket == "./.trustd/public/agent.sock"
    assert cfg.inbound[0].port == 15006 and cfg.inbound[0].app == "127.0.0.1:8080"
    assert str(cfg.outbound[0].destination_id) == "spiffe://trustd.local/ns/shop/sa/backend"
    assert isinstance(cfg.identity, SdsIdentityConfig) and cfg.policy.kind == "agent"
    assert cfg.sniff.timeout == dt.timedelta(seconds=1) and cfg.sniff.max_pending == 1024


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError) as err:
        load_config(write(tmp_path, SPEC_EXAMPLE + "inbond: []\n"), environ={})
    assert "inbond: unknown key 'inbond'" in str(err.value)
    with pytest.raises(ProxyConfigError) as err:
        load_config(write(tmp_path, SPEC_EXAMPLE.replace("app:", "application:")), environ={})
    assert "inbound[0].application: unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (SPEC_EXAMPLE.replace("127.0.0.1:8080", "localhost"), "inbound[0].app: expected HOST:PORT"),
        (
            SPEC_EXAMPLE.replace("127.0.0.1:8080", "8080"),
            "inbound[0].app: Input should be a valid string",
        ),
        (SPEC_EXAMPLE.replace("port: 15006", "port: 70000"), "inbound[0].port"),
        (
            SPEC_EXAMPLE.replace("spiffe://trustd.local/ns/shop/sa/backend", "backend"),
            "outbound[0].destination",
        ),
        (SPEC_EXAMPLE + "sniff: {timeout: soon}\n", "sniff.timeout: invalid duration"),
        (SPEC_EXAMPLE + "sniff: {maxPending: 0}\n", "sniff.maxPending"),
        (SPEC_EXAMPLE + "identity: {kind: files}\n", "identity.files.certFile"),
        (SPEC_EXAMPLE + "policy: {kind: magic}\n", "policy"),
        (SPEC_EXAMPLE + "agentSocket: /other\n", "duplicate key 'agentSocket'"),
    ],
)
def test_invalid_values_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ProxyConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert fragment in str(err.value)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, SPEC_EXAMPLE),
        environ={
            "TRUSTD_AGENT_SOCKET": "/run/agent.sock",
            "TRUSTD_PROXY_METRICS_ADDRESS": "127.0.0.1:9",
        },
    )
    assert cfg.agent_socket == "/run/agent.sock" and cfg.metrics_address == "127.0.0.1:9"


def test_files_identity_and_policy_kinds(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            SPEC_EXAMPLE
            + "identity: {kind: files, certFile: a.pem, keyFile: a.key, bundleFile: b.pem}\n"
            + "policy: {kind: files, paths: [policies/]}\n",
        ),
        environ={},
    )
    assert isinstance(cfg.identity, FilesIdentityConfig) and cfg.identity.key_file == "a.key"
    assert cfg.policy.kind == "files"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError, match="cannot read the proxy config"):
        load_config(tmp_path / "nope.yaml", environ={})
