"""The config blocks (trustd.config models, camelCase keys) build the KMS backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustd.ca.kms import pkcs11, vault_transit
from trustd.ca.upstream import vault_pki
from trustd.config import Pkcs11Config, VaultPkiConfig, VaultTransitConfig
from trustd.errors import ConfigError


def test_vault_transit_block_with_approle(tmp_path: Path) -> None:
    secret = tmp_path / "secret-id"
    secret.write_text("s")
    cfg = VaultTransitConfig.model_validate(
        {
            "kind": "vault-transit",
            "address": "https://vault.example:8200",
            "appRole": {"roleId": "r", "secretIdFile": str(secret)},
            "mount": "kms",
            "keyPrefix": "td-",
            "namespace": "team",
            "timeout": 2.5,
        }
    )
    m = vault_transit.from_config(cfg)
    assert m.kind == "vault-transit"
    assert m.key_name("ca-1") == "td-ca-1"
    assert m.connection.timeout == 2.5
    m.close()


def test_vault_transit_block_with_two_credentials_is_refused() -> None:
    cfg = VaultTransitConfig.model_validate(
        {"kind": "vault-transit", "address": "http://v:8200", "token": "t", "tokenFile": "/f"}
    )
    with pytest.raises(ConfigError, match="exactly one of token, tokenFile or appRole"):
        vault_transit.from_config(cfg)


def test_pkcs11_block_checks_the_module(tmp_path: Path) -> None:
    cfg = Pkcs11Config.model_validate(
        {
            "kind": "pkcs11",
            "module": str(tmp_path / "libnone.so"),
            "tokenLabel": "trustd",
            "pin": "1234",
        }
    )
    with pytest.raises(ConfigError, match="does not exist"):
        pkcs11.from_config(cfg)


def test_vault_pki_block() -> None:
    cfg = VaultPkiConfig.model_validate(
        {"kind": "vault-pki", "address": "http://v:8200", "token": "t", "mount": "root-ca"}
    )
    u = vault_pki.from_config(cfg)
    assert u.sign_path == "root-ca/root/sign-intermediate"
    u.close()
    with pytest.raises(ConfigError, match="without a role"):
        vault_pki.from_config(
            VaultPkiConfig.model_validate(
                {"kind": "vault-pki", "address": "http://v:8200", "token": "t", "role": "x"}
            )
        )
