"""Configuration (SPEC §2): YAML keys, TRUSTD_* variables and flags; durations as operators write them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustd import durations
from trustd.config import (
    LocalKeyManagerConfig,
    MemoryKeyManagerConfig,
    ServerConfig,
    VaultTransitConfig,
    load_server_config,
)
from trustd.errors import ConfigError

# -- durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", dt.timedelta(hours=1)),
        ("10m", dt.timedelta(minutes=10)),
        ("90s", dt.timedelta(seconds=90)),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("7d", dt.timedelta(days=7)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("1d2h3m4s500ms", dt.timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=500)),
        ("1.5h", dt.timedelta(minutes=90)),
        ("300", dt.timedelta(seconds=300)),
        (" 5m ", dt.timedelta(minutes=5)),
        ("0", dt.timedelta(0)),
        ("-5m", dt.timedelta(minutes=-5)),
        ("-1h30m", -dt.timedelta(hours=1, minutes=30)),  # Go: the sign covers the whole duration
        ("+2m", dt.timedelta(minutes=2)),
    ],
)
def test_durations_parse(text: str, expected: dt.timedelta) -> None:
    assert durations.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "  ", "h", "1x", "1h 30m", "1h-30m", "--1h", "-", "1e3s", "\u0663s", "ten minutes"]
)
def test_bad_durations_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        durations.parse(text)


@pytest.mark.parametrize("text", ["99999999999999d", "1" * 40, "9" * 30 + "h"])
def test_absurdly_long_durations_are_a_value_error_not_an_overflow(text: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        durations.parse(text)


@pytest.mark.parametrize(
    "delta", [dt.timedelta(hours=1), dt.timedelta(minutes=90), dt.timedelta(days=2, seconds=5)]
)
def test_durations_format_reads_back(delta: dt.timedelta) -> None:
    assert durations.parse(durations.format(delta)) == delta


def test_durations_format_names_units() -> None:
    assert durations.format(dt.timedelta(hours=1, minutes=30)) == "1h30m"
    assert durations.format(dt.timedelta(0)) == "0s"
    assert durations.format(dt.timedelta(days=1)) == "1d"


# -- the server configuration --------------------------------------------------


@pytest.fixture(autouse=True)
def _no_trustd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TRUSTD_TRUST_DOMAIN",
        "TRUSTD_DATA_DIR",
        "TRUSTD_ADMIN_SOCKET",
        "TRUSTD_AGENT_SOCKET",
        "TRUSTD_SERVER_ADDRESS",
        "TRUSTD_METRICS_ADDRESS",
        "TRUSTD_LOG_LEVEL",
        "TRUSTD_LOG_FORMAT",
    ):
        monkeypatch.delenv(name, raising=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trustd.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_spec() -> None:
    cfg = load_server_config()
    assert cfg.trust_domain == "trustd.local"
    assert cfg.store.kind == "sqlite"
    assert isinstance(cfg.key_manager, LocalKeyManagerConfig)
    assert cfg.upstream_authority is None
    assert cfg.ca.ttl == dt.timedelta(hours=24)
    assert cfg.svid.default_ttl == dt.timedelta(hours=1)
    assert cfg.svid.max_ttl == dt.timedelta(hours=24)
    assert cfg.metrics_address == "127.0.0.1:9988"
    assert cfg.server_address == "127.0.0.1:8081"
    assert cfg.admin_socket_path == Path(".trustd").absolute() / "admin.sock"
    assert cfg.agent_socket_path == Path(".trustd").absolute() / "public" / "agent.sock"


def test_yaml_file_with_spec_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
trustDomain: example.org
dataDir: /var/lib/trustd
store: {kind: sqlite}
keyManager: {kind: memory}
ca: {ttl: 48h, keyType: ec-p384}
svid: {defaultTtl: 30m, maxTtl: 12h}
metricsAddress: 127.0.0.1:0
""",
    )
    cfg = load_server_config(path)
    assert cfg.trust_domain == "example.org"
    assert cfg.data_path == Path("/var/lib/trustd")
    assert isinstance(cfg.key_manager, MemoryKeyManagerConfig)
    assert cfg.ca.ttl == dt.timedelta(hours=48)
    assert cfg.ca.key_type == "ec-p384"
    assert cfg.svid.default_ttl == dt.timedelta(minutes=30)
    assert cfg.svid.max_ttl == dt.timedelta(hours=12)


def test_numbers_are_seconds(tmp_path: Path) -> None:
    cfg = load_server_config(_write(tmp_path, "svid: {defaultTtl: 600, maxTtl: 3600}\n"))
    assert cfg.svid.default_ttl == dt.timedelta(minutes=10)
    assert cfg.svid.max_ttl == dt.timedelta(hours=1)


def test_vault_transit_key_manager(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "keyManager: {kind: vault-transit, address: 'http://127.0.0.1:8200', tokenFile: /run/t}\n",
    )
    cfg = load_server_config(path)
    assert isinstance(cfg.key_manager, VaultTransitConfig)
    assert cfg.key_manager.token_file == "/run/t"
    assert cfg.key_manager.mount == "transit"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("trustDomian: example.org\n", "'trustDomian'"),
        ("ca: {ttll: 1h}\n", "'ca.ttll'"),
        ("svid: {defaultTTL: 1h}\n", "'svid.defaultTTL'"),
        ("keyManager: {kind: local, kekFiel: /x}\n", "'keyManager.kekFiel'"),
        ("store: {kind: sqlite, file: x.db}\n", "'store.file'"),
    ],
)
def test_unknown_keys_are_an_error_that_names_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_server_config(_write(tmp_path, text))
    assert f"unknown key {named}" in str(err.value)


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate key 'trustDomain' at line 2"):
        load_server_config(_write(tmp_path, "trustDomain: a.org\ntrustDomain: b.org\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("trustDomain: Example.org\n", "trustDomain"),
        ("trustDomain: 'example.org:8080'\n", "trustDomain"),
        ("svid: {defaultTtl: soon}\n", "svid.defaultTtl"),
        ("svid: {maxTtl: 0}\n", "svid.maxTtl"),
        ("svid: {defaultTtl: -1h}\n", "svid.defaultTtl"),
        ("ca: {ttl: 0s}\n", "ca.ttl"),
        ("ca: {ttl: 1e300}\n", "ca.ttl"),
        ("ca: {keyType: ed25519}\n", "ca.keyType"),
        ("store: {kind: mysql}\n", "store.kind"),
        ("keyManager: {kind: cloudkms}\n", "keyManager"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_server_config(_write(tmp_path, text))
    assert f"'{where}'" in str(err.value)
    assert str(tmp_path / "trustd.yaml") in str(err.value)


def test_default_ttl_above_max_ttl_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="defaultTtl 2d is above maxTtl 1d"):
        load_server_config(_write(tmp_path, "svid: {defaultTtl: 48h}\n"))


def test_not_yaml_and_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_server_config(_write(tmp_path, "trustDomain: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_server_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_server_config(tmp_path / "absent.yaml")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_server_config(_write(tmp_path, "")) == ServerConfig()


def test_environment_beats_the_file_and_flags_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "trustDomain: file.example\nmetricsAddress: 127.0.0.1:1\n")
    monkeypatch.setenv("TRUSTD_TRUST_DOMAIN", "env.example")
    monkeypatch.setenv("TRUSTD_METRICS_ADDRESS", "127.0.0.1:2")
    cfg = load_server_config(path)
    assert cfg.trust_domain == "env.example"
    assert cfg.metrics_address == "127.0.0.1:2"
    cfg = load_server_config(path, {"trustDomain": "flag.example", "metricsAddress": None})
    assert cfg.trust_domain == "flag.example"
    assert cfg.metrics_address == "127.0.0.1:2"  # a flag left unset does not override


def test_socket_paths_follow_the_data_dir_and_their_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUSTD_DATA_DIR", str(tmp_path / "d"))
    cfg = load_server_config()
    assert cfg.admin_socket_path == tmp_path / "d" / "admin.sock"
    assert cfg.agent_socket_path == tmp_path / "d" / "public" / "agent.sock"
    monkeypatch.setenv("TRUSTD_ADMIN_SOCKET", str(tmp_path / "a.sock"))
    monkeypatch.setenv("TRUSTD_AGENT_SOCKET", str(tmp_path / "g.sock"))
    cfg = load_server_config()
    assert cfg.admin_socket_path == tmp_path / "a.sock"
    assert cfg.agent_socket_path == tmp_path / "g.sock"


def test_invalid_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTD_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="'logLevel'"):
        load_server_config()


def test_secrets_never_appear_in_config_errors(tmp_path: Path) -> None:
    secret = "hvs.s3cr3t-t0ken-value"
    path = _write(
        tmp_path,
        f"keyManager: {{kind: vault-transit, address: 8200, token: '{secret}'}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    assert "keyManager.address" in str(err.value)
    assert secret not in str(err.value)
    path = _write(
        tmp_path, f"keyManager: {{kind: vault-transit, address: x, token: ['{secret}']}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    assert secret not in str(err.value)


def test_secret_values_are_hidden_in_the_model(tmp_path: Path) -> None:
    secret = "hvs.another-secret"
    path = _write(tmp_path, f"keyManager: {{kind: vault-transit, address: x, token: '{secret}'}}\n")
    cfg = load_server_config(path)
    assert secret not in repr(cfg)
    assert isinstance(cfg.key_manager, VaultTransitConfig)
    assert cfg.key_manager.token is not None
    assert cfg.key_manager.token.get_secret_value() == secret
