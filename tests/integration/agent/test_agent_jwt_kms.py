"""JWT signing keys in a real KMS: `trustd server` with OpenBao transit or a SoftHSM2 token
mints a JWT-SVID (`trustd svid mint --jwt`) that validates against the published JWT keys,
and the JWT key is a non-exportable key of that KMS, beside the CA's."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

_KMS = str(Path(__file__).resolve().parents[1] / "kms")
if _KMS not in sys.path:
    sys.path.insert(0, _KMS)

from kms_peers import SOFTHSM_MODULE, BaoDevServer  # noqa: E402

pytestmark = pytest.mark.integration
TRUSTD = str(Path(sys.executable).parent / "trustd")
P11_PROBE = Path(__file__).resolve().parents[1] / "kms_server" / "kms_server_p11_probe.py"
TD = "trustd.local"
TOOL = f"spiffe://{TD}/ns/ops/sa/tool"
PREFIX = "trustd-"


def _softhsm(root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    util = shutil.which("softhsm2-util")
    assert util is not None, "softhsm2-util is missing: apt-get install softhsm2"
    assert SOFTHSM_MODULE.exists(), f"{SOFTHSM_MODULE} is missing: apt-get install softhsm2"
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    pin = secrets.token_hex(8)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            "trustd",
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(8),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    pin_file = root / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    km = {
        "kind": "pkcs11",
        "module": str(SOFTHSM_MODULE),
        "tokenLabel": "trustd",
        "pinFile": str(pin_file),
    }
    return km, env


def _token_objects(env: dict[str, str], pin: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(P11_PROBE), str(SOFTHSM_MODULE), "trustd"],
        input=pin,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    objects: list[dict[str, Any]] = json.loads(out.stdout)
    return objects


@pytest.fixture(params=["vault-transit", "pkcs11"])
def kms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    """(kind, (keyManager config, environment), the KMS's keys by name)."""
    if request.param == "vault-transit":
        bao = BaoDevServer(tmp_path / "bao")
        bao.start()
        try:
            bao.enable_engines()
            token_file = tmp_path / "vault-token"
            token_file.write_text(bao.root_token)
            km = {
                "kind": "vault-transit",
                "address": bao.address,
                "tokenFile": str(token_file),
                "keyPrefix": PREFIX,
            }

            def keys() -> dict[str, Any]:
                c = bao.client()
                names = c.secrets.transit.list_keys(mount_point="transit")["data"]["keys"]
                return {
                    n: c.secrets.transit.read_key(n, mount_point="transit")["data"]
                    for n in names
                    if n.startswith(PREFIX)
                }

            yield "vault-transit", (km, dict(os.environ)), keys
        finally:
            bao.stop()
    else:
        km, env = _softhsm(tmp_path / "hsm")
        pin = Path(km["pinFile"]).read_text()

        def objects() -> dict[str, Any]:
            return {o["label"]: o for o in _token_objects(env, pin) if o["class"] == "PRIVATE_KEY"}

        yield "pkcs11", (km, env), objects


def test_jwt_key_lives_in_the_kms_and_its_tokens_validate(
    kms: tuple[str, Any, Any], tmp_path: Path
) -> None:
    from spiffe import JwtBundle, JwtSvid
    from spiffe import TrustDomain as SpiffeTrustDomain

    kind, (km, env), kms_keys = kms
    data = tmp_path / "d"
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "dataDir": str(data),
                "keyManager": km,
                "serverAddress": "127.0.0.1:0",
                "metricsAddress": "127.0.0.1:0",
            }
        )
    )
    admin = data / "admin.sock"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [TRUSTD, "server", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run(
                [
                    TRUSTD,
                    "--admin-socket",
                    str(admin),
                    "svid",
                    "mint",
                    "--jwt",
                    "--spiffe-id",
                    TOOL,
                    "--audience",
                    "backend",
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if res.returncode == 0:
                break
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, res.stderr
            time.sleep(0.3)
        token = res.stdout.strip()
        spiffe = json.loads(
            subprocess.run(
                [TRUSTD, "--admin-socket", str(admin), "bundle", "show", "--format", "spiffe"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        jwks = {"keys": [k for k in spiffe["keys"] if k["use"] == "jwt-svid"]}
        bundle = JwtBundle.parse(SpiffeTrustDomain(TD), json.dumps(jwks).encode())
        assert str(JwtSvid.parse_and_validate(token, bundle, {"backend"}).spiffe_id) == TOOL
        keys = kms_keys()
        prefix = PREFIX if kind == "vault-transit" else ""
        jwt_keys = [k for n, k in keys.items() if n.startswith(prefix + "jwt-")]
        assert len(jwt_keys) == 1 and any(n.startswith(prefix + "ca-") for n in keys), sorted(keys)
        [key] = jwt_keys
        if kind == "vault-transit":
            assert key["exportable"] is False and key["type"] == "ecdsa-p256"
        else:
            assert key["sensitive"] is True and key["extractable"] is False
            assert key["value_readable"] is False
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    text = log.read_text()
    assert token not in text
    assert not (data / "keys").exists() and not (data / "kek").exists(), kind  # nothing local
