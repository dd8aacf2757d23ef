"""VaultTransitKeyManager without a Vault: settings validation, and answers a real Vault
rarely gives (per-item batch errors, malformed signatures), from a scripted fake HTTP server.
The behaviour against a real OpenBao is in tests/integration/kms/."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.errors import KmsBadResponseError
from trustd.ca.kms.vault_transit import AppRole, VaultTransitKeyManager
from trustd.errors import (
    ConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

REF = KeyRef(backend="vault-transit", key_id="trustd-ca", algorithm=KeyAlgorithm.EC_P256)
DIGEST = hashlib.sha256(b"x").digest()


class FakeVault:
    """Answers each (method, path) with a scripted status and JSON body; records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0]
                fake.requests.append((self.command, path, body, dict(self.headers)))
                status, payload = fake.routes.get((self.command, path), (404, {"errors": []}))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeVault]:
    f = FakeVault()
    yield f
    f.close()


def manager(fake: FakeVault, **kwargs: Any) -> VaultTransitKeyManager:
    return VaultTransitKeyManager(address=fake.address, token="unit-token", **kwargs)


def sig(version: int = 1) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import utils

    raw = key.sign(DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    return f"vault:v{version}:" + base64.b64encode(raw).decode()


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"token": "a", "token_file": "/x"},
        {"token": "a", "app_role": AppRole(role_id="r", secret_id="s")},
    ],
)
def test_exactly_one_credential_source_is_required(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="exactly one of token, tokenFile or appRole"):
        VaultTransitKeyManager(address="http://127.0.0.1:1", **kwargs)


@pytest.mark.parametrize("address", ["127.0.0.1:8200", "ftp://vault", "http://", "unix:/x"])
def test_address_must_be_an_http_url(address: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        VaultTransitKeyManager(address=address, token="t")


def test_address_must_not_carry_credentials() -> None:
    with pytest.raises(ConfigError, match="must not carry credentials"):
        VaultTransitKeyManager(address="http://user:pw@vault:8200", token="t")


def test_approle_needs_exactly_one_secret_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of secretId or secretIdFile"):
        VaultTransitKeyManager(address="http://127.0.0.1:1", app_role=AppRole(role_id="r"))
    with pytest.raises(ConfigError, match="exactly one of secretId or secretIdFile"):
        VaultTransitKeyManager(
            address="http://127.0.0.1:1",
            app_role=AppRole(role_id="r", secret_id="s", secret_id_file=tmp_path / "s"),
        )


def test_approle_repr_hides_the_secret_id() -> None:
    assert "hunter2" not in repr(AppRole(role_id="r", secret_id="hunter2"))


def test_unreadable_token_file_names_the_path_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the vault token file .*missing"):
        VaultTransitKeyManager(address="http://127.0.0.1:1", token_file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        VaultTransitKeyManager(address="http://127.0.0.1:1", token_file=empty)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a readable file"):
        VaultTransitKeyManager(address="https://v:8200", token="t", ca_cert=tmp_path / "none.pem")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="not both"):
        VaultTransitKeyManager(
            address="https://v:8200", token="t", ca_cert=ca, tls_skip_verify=True
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"mount": "bad mount"}, {"key_prefix": "bad/prefix"}, {"batch_size": 0}, {"timeout": 0}],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        VaultTransitKeyManager(address="http://127.0.0.1:1", token="t", **kwargs)


def test_bad_key_names_are_refused_before_vault_is_asked(fake: FakeVault) -> None:
    m = manager(fake)
    for name in ["", "a/b", "a b", "../x"]:
        with pytest.raises(InvalidArgumentError, match="not usable in transit"):
            m.create_key(name)
    assert fake.requests == []


def test_wrong_digest_length_is_refused_before_vault_is_asked(fake: FakeVault) -> None:
    m = manager(fake)
    with pytest.raises(InvalidArgumentError, match="32-byte sha256"):
        m.sign(REF, b"short")
    p384 = KeyRef(backend="vault-transit", key_id="trustd-x", algorithm=KeyAlgorithm.EC_P384)
    with pytest.raises(InvalidArgumentError, match="48-byte sha384"):
        m.sign_many(p384, [DIGEST])
    assert fake.requests == []


def test_a_key_ref_of_another_backend_is_refused(fake: FakeVault) -> None:
    with pytest.raises(InvalidArgumentError, match="belongs to the 'pkcs11' key manager"):
        manager(fake).sign(KeyRef(backend="pkcs11", key_id="x"), DIGEST)


# --- requests and answers ------------------------------------------------------------------


def test_sign_request_is_prehashed_asn1_and_pinned_to_the_key_version(fake: FakeVault) -> None:
    ref = KeyRef(backend="vault-transit", key_id="trustd-ca", version=3)
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (200, {"data": {"signature": sig(3)}})
    manager(fake).sign(ref, DIGEST)
    _, _, body, headers = fake.requests[-1]
    assert body["prehashed"] is True
    assert body["hash_algorithm"] == "sha2-256"
    assert body["marshaling_algorithm"] == "asn1"
    assert body["key_version"] == 3
    assert base64.b64decode(body["input"]) == DIGEST
    assert headers["X-Vault-Token"] == "unit-token"


def test_rsa_sign_request_asks_for_pkcs1v15(fake: FakeVault) -> None:
    ref = KeyRef(backend="vault-transit", key_id="trustd-ca", algorithm=KeyAlgorithm.RSA_2048)
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (200, {"data": {"signature": sig()}})
    manager(fake).sign(ref, DIGEST)
    body = fake.requests[-1][2]
    assert body["signature_algorithm"] == "pkcs1v15"
    assert "marshaling_algorithm" not in body


def test_namespace_is_sent_as_a_header(fake: FakeVault) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (200, {"data": {"signature": sig()}})
    manager(fake, namespace="team-a").sign(REF, DIGEST)
    assert fake.requests[-1][3]["X-Vault-Namespace"] == "team-a"


@pytest.mark.parametrize(
    "signature",
    ["MEUCIQ==", "vault:v1:***not base64***", "vault:vX:AAAA", None],
)
def test_malformed_signature_is_a_bad_response(fake: FakeVault, signature: object) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (200, {"data": {"signature": signature}})
    with pytest.raises(KmsBadResponseError, match="malformed signature"):
        manager(fake).sign(REF, DIGEST)


def test_signature_from_another_key_version_is_refused(fake: FakeVault) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (200, {"data": {"signature": sig(2)}})
    with pytest.raises(FailedPreconditionError, match=r"version 2 .* not version 1"):
        manager(fake).sign(REF, DIGEST)


def test_batch_item_errors_fail_the_batch_and_name_the_first(fake: FakeVault) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (
        200,
        {
            "data": {
                "batch_results": [
                    {"signature": sig()},
                    {"error": "unable to sign item"},
                    {"error": "unable to sign item"},
                ]
            }
        },
    )
    with pytest.raises(InvalidArgumentError, match=r"refused 2 of 3 digests .*digest 1"):
        manager(fake).sign_many(REF, [DIGEST] * 3)


def test_batch_with_a_missing_result_is_a_bad_response(fake: FakeVault) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (
        200,
        {"data": {"batch_results": [{"signature": sig()}]}},
    )
    with pytest.raises(KmsBadResponseError, match=r"batch of 2 .* with 1 results"):
        manager(fake).sign_many(REF, [DIGEST, DIGEST])


def test_batches_are_chunked(fake: FakeVault) -> None:
    one = {"signature": sig()}
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (
        200,
        {"data": {"batch_results": [one, one]}},
    )
    assert len(manager(fake, batch_size=2).sign_many(REF, [DIGEST] * 4)) == 4
    sizes = [len(r[2]["batch_input"]) for r in fake.requests]
    assert sizes == [2, 2]


@pytest.mark.parametrize(
    ("status", "errors", "kind", "message"),
    [
        (503, ["Vault is sealed"], UnavailableError, "is sealed: unseal it"),
        (503, ["standby"], UnavailableError, "is unavailable"),
        (500, ["internal error"], UnavailableError, "failed signing"),
        (429, ["slow down"], UnavailableError, "rate-limiting"),
        (403, ["permission denied"], PermissionDeniedError, "vault rejected the token"),
        (400, ["signing key not found"], NotFoundError, "does not exist"),
        (400, ["bad input"], InvalidArgumentError, "vault refused signing"),
        (404, ['no handler for route "x"'], ConfigError, "nothing mounted"),
    ],
)
def test_http_failures_map_to_trustd_errors(
    fake: FakeVault, status: int, errors: list[str], kind: type[Exception], message: str
) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (status, {"errors": errors})
    with pytest.raises(kind, match=message):
        manager(fake).sign(REF, DIGEST)


def test_connection_refused_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = VaultTransitKeyManager(address=f"http://127.0.0.1:{port}", token="t")
    with pytest.raises(UnavailableError, match="connection refused"):
        m.sign(REF, DIGEST)


def test_error_messages_never_echo_the_token(fake: FakeVault) -> None:
    fake.routes[("POST", "/v1/transit/sign/trustd-ca")] = (
        400,
        {"errors": ["token unit-token is odd"]},
    )
    with pytest.raises(InvalidArgumentError) as info:
        manager(fake).sign(REF, DIGEST)
    assert "unit-token" not in str(info.value)
    assert "[redacted]" in str(info.value)


def test_closed_manager_is_unavailable(fake: FakeVault) -> None:
    m = manager(fake)
    m.close()
    with pytest.raises(UnavailableError, match="closed"):
        m.sign(REF, DIGEST)
