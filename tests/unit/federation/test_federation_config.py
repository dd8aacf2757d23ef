"""The federation keys of the server config, and their flag and environment variable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustd.config import load_server_config
from trustd.errors import ConfigError


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trustd.yaml"
    path.write_text(text)
    return path


def test_no_bundle_endpoint_by_default() -> None:
    cfg = load_server_config(None, {})
    assert cfg.federation.bundle_endpoint is None
    assert cfg.federation.refresh_hint == dt.timedelta(minutes=5)


def test_bundle_endpoint_keys(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        "federation:\n  bundleEndpoint: {address: '127.0.0.1:8443'}\n  refreshHint: 30s\n"
        "  caFile: /etc/ssl/test-roots.pem\n",
    )
    cfg = load_server_config(path, {})
    assert cfg.federation.bundle_endpoint is not None
    assert cfg.federation.bundle_endpoint.address == "127.0.0.1:8443"
    assert cfg.federation.bundle_endpoint.profile == "https_spiffe"
    assert cfg.federation.refresh_hint == dt.timedelta(seconds=30)
    assert cfg.federation.ca_file == "/etc/ssl/test-roots.pem"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("federation: {bundleEndpoint: {address: ':1', profile: https_web}}", "needs certFile"),
        (
            "federation: {bundleEndpoint: {address: ':1', certFile: c.pem, keyFile: k.pem}}",
            "are for profile https_web",
        ),
        ("federation: {bundleEndpoint: {address: ':1', profile: http}}", "profile"),
        ("federation: {refreshHint: 0s}", "positive duration"),
        ("federation: {refreshHnt: 5m}", "unknown key 'federation.refreshHnt'"),
    ],
)
def test_bad_federation_keys_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_server_config(_config(tmp_path, text + "\n"), {})


def test_the_flag_and_the_environment_set_the_endpoint_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config(tmp_path, "federation: {refreshHint: 1m}\n")
    cfg = load_server_config(path, {"bundleEndpointAddress": "127.0.0.1:0"})
    assert cfg.federation.bundle_endpoint is not None
    assert cfg.federation.bundle_endpoint.address == "127.0.0.1:0"
    assert cfg.federation.refresh_hint == dt.timedelta(minutes=1)  # the file's keys stay
    monkeypatch.setenv("TRUSTD_BUNDLE_ENDPOINT_ADDRESS", "127.0.0.1:9443")
    cfg = load_server_config(path, {})
    assert cfg.federation.bundle_endpoint is not None
    assert cfg.federation.bundle_endpoint.address == "127.0.0.1:9443"
