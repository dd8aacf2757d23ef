"""The `jwt` section of the server config: defaults, durations and what does not fit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustd.config import load_server_config
from trustd.errors import ConfigError


def test_jwt_defaults_are_five_minute_es256_tokens() -> None:
    jwt = load_server_config(None).jwt
    assert jwt.ttl == dt.timedelta(minutes=5)
    assert jwt.max_ttl == dt.timedelta(hours=1)
    assert jwt.key_ttl == dt.timedelta(hours=24)
    assert jwt.key_type == "ec-p256"


def test_jwt_section_in_a_file(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("jwt: {ttl: 90s, maxTtl: 10m, keyTtl: 12h, keyType: ec-p384}\n")
    jwt = load_server_config(cfg).jwt
    assert (jwt.ttl, jwt.max_ttl, jwt.key_ttl, jwt.key_type) == (
        dt.timedelta(seconds=90),
        dt.timedelta(minutes=10),
        dt.timedelta(hours=12),
        "ec-p384",
    )


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"ttl": "2h"}, ["'jwt'", "above maxTtl"]),
        ({"maxTtl": "5h"}, ["'jwt'", "a sixth of keyTtl"]),
        ({"ttl": "0s"}, ["'jwt.ttl'", "positive"]),
        ({"ttl": "soon"}, ["'jwt.ttl'"]),
        ({"keyType": "ed25519"}, ["'jwt.keyType'"]),
        ({"audience": "x"}, ["unknown key 'jwt.audience'"]),
    ],
)
def test_jwt_section_refusals_name_the_key(section: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_server_config(None, {"jwt": section})
    for w in words:
        assert w in str(err.value), str(err.value)
