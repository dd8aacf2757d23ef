"""VaultTransitKeyManager against a real `bao server -dev`."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from kms_peers import BaoDevServer, SilentServer

from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef, PublicKey
from trustd.ca.kms.vault_transit import AppRole, VaultTransitKeyManager
from trustd.errors import (
    AlreadyExistsError,
    ConfigError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from trustd.telemetry.metrics import VaultMetrics

pytestmark = pytest.mark.integration

ALGORITHMS = [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048]


def digest_for(algorithm: KeyAlgorithm, data: bytes) -> bytes:
    return hashlib.new(algorithm.hash_name, data).digest()


def verify(public: PublicKey, algorithm: KeyAlgorithm, signature: bytes, digest: bytes) -> None:
    """Raises InvalidSignature unless ``signature`` is a valid X.509-style signature."""
    hash_alg = hashes.SHA384() if algorithm is KeyAlgorithm.EC_P384 else hashes.SHA256()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
    else:
        public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hash_alg))


def unique(prefix: str = "ca") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def manager(bao: BaoDevServer) -> Iterator[VaultTransitKeyManager]:
    m = VaultTransitKeyManager(address=bao.address, token=bao.root_token)
    yield m
    m.close()


def test_manager_satisfies_the_key_manager_protocol(manager: VaultTransitKeyManager) -> None:
    assert isinstance(manager, KeyManager)
    assert manager.kind == "vault-transit"


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_key_signs_a_digest_that_verifies_under_its_public_key(
    manager: VaultTransitKeyManager, algorithm: KeyAlgorithm
) -> None:
    ref = manager.create_key(unique(), algorithm)
    assert ref.backend == "vault-transit"
    assert ref.key_id.startswith("trustd-")
    assert ref.version == 1
    public = manager.public_key(ref)
    if algorithm is KeyAlgorithm.RSA_2048:
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = digest_for(algorithm, b"tbs certificate bytes")
    signature = manager.sign(ref, digest)
    verify(public, algorithm, signature, digest)


def test_signature_over_another_digest_does_not_verify(manager: VaultTransitKeyManager) -> None:
    from cryptography.exceptions import InvalidSignature

    ref = manager.create_key(unique())
    signature = manager.sign(ref, digest_for(ref.algorithm, b"one"))
    with pytest.raises(InvalidSignature):
        verify(manager.public_key(ref), ref.algorithm, signature, digest_for(ref.algorithm, b"two"))


def test_public_key_is_read_back_by_a_fresh_manager(
    bao: BaoDevServer, manager: VaultTransitKeyManager
) -> None:
    ref = manager.create_key(unique())
    other = VaultTransitKeyManager(address=bao.address, token=bao.root_token)
    try:
        assert other.public_key(ref).public_numbers() == manager.public_key(ref).public_numbers()
        digest = digest_for(ref.algorithm, b"x")
        verify(manager.public_key(ref), ref.algorithm, other.sign(ref, digest), digest)
    finally:
        other.close()


def test_key_is_created_non_exportable(bao: BaoDevServer, manager: VaultTransitKeyManager) -> None:
    ref = manager.create_key(unique())
    root = bao.client()
    data = root.secrets.transit.read_key(ref.key_id)["data"]
    assert data["exportable"] is False
    assert data["allow_plaintext_backup"] is False
    assert data["type"] == "ecdsa-p256"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not exportable"):
        root.secrets.transit.export_key(ref.key_id, key_type="signing-key")
    with pytest.raises(hvac.exceptions.VaultError):
        root.secrets.transit.backup_key(ref.key_id)


def test_creating_an_existing_key_name_is_refused(manager: VaultTransitKeyManager) -> None:
    name = unique()
    manager.create_key(name)
    with pytest.raises(AlreadyExistsError, match="exists already"):
        manager.create_key(name, KeyAlgorithm.RSA_2048)


@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048], ids=lambda a: a.value
)
def test_sign_many_signs_every_digest_in_chunks(bao: BaoDevServer, algorithm: KeyAlgorithm) -> None:
    metrics = VaultMetrics()
    m = VaultTransitKeyManager(
        address=bao.address, token=bao.root_token, batch_size=64, metrics=metrics
    )
    try:
        ref = m.create_key(unique(), algorithm)
        digests = [digest_for(algorithm, i.to_bytes(4, "big")) for i in range(150)]
        assert _requests(metrics, "sign_batch") == 0
        signatures = m.sign_many(ref, digests)
        assert _requests(metrics, "sign_batch") == 3  # 64 + 64 + 22
        assert len(signatures) == len(digests)
        public = m.public_key(ref)
        for digest, signature in zip(digests, signatures, strict=True):
            verify(public, algorithm, signature, digest)
        assert m.sign_many(ref, []) == []
    finally:
        m.close()


def test_signing_from_many_threads_with_one_manager(manager: VaultTransitKeyManager) -> None:
    ref = manager.create_key(unique())
    public = manager.public_key(ref)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                digest = digest_for(ref.algorithm, f"{worker}-{i}".encode())
                verify(public, ref.algorithm, manager.sign(ref, digest), digest)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_retired_key_cannot_sign(bao: BaoDevServer, manager: VaultTransitKeyManager) -> None:
    ref = manager.create_key(unique())
    digest = digest_for(ref.algorithm, b"x")
    manager.sign(ref, digest)
    manager.retire(ref)
    with pytest.raises(NotFoundError):
        manager.sign(ref, digest)
    with pytest.raises(NotFoundError):
        manager.sign_many(ref, [digest])
    with pytest.raises(NotFoundError):
        manager.public_key(ref)
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.client().secrets.transit.read_key(ref.key_id)
    manager.retire(ref)  # retiring twice is harmless


def test_rotation_creates_a_new_key_per_slot(manager: VaultTransitKeyManager) -> None:
    old = manager.create_key(unique("slot-a"))
    new = manager.create_key(unique("slot-b"))
    assert old.key_id != new.key_id
    assert manager.public_key(old).public_numbers() != manager.public_key(new).public_numbers()
    manager.retire(old)
    digest = digest_for(new.algorithm, b"after rotation")
    verify(manager.public_key(new), new.algorithm, manager.sign(new, digest), digest)


def test_check_passes_against_a_healthy_vault(manager: VaultTransitKeyManager) -> None:
    manager.check()


def test_unknown_mount_is_a_config_error(bao: BaoDevServer) -> None:
    m = VaultTransitKeyManager(address=bao.address, token=bao.root_token, mount="no-such-mount")
    try:
        with pytest.raises(ConfigError, match="nothing mounted"):
            m.check()
    finally:
        m.close()


def test_vault_sealed_at_start_is_reported_and_recovers_when_unsealed(
    bao_private: BaoDevServer,
) -> None:
    before = VaultTransitKeyManager(address=bao_private.address, token=bao_private.root_token)
    ref = before.create_key(unique())
    before.close()
    bao_private.seal()
    m = VaultTransitKeyManager(address=bao_private.address, token=bao_private.root_token)
    try:
        with pytest.raises(UnavailableError, match="is sealed: unseal it"):
            m.check()
        with pytest.raises(UnavailableError, match="is sealed"):
            m.sign(ref, digest_for(ref.algorithm, b"x"))
        with pytest.raises(UnavailableError, match="is sealed"):
            m.create_key(unique())
        bao_private.unseal()
        m.check()
        digest = digest_for(ref.algorithm, b"after unseal")
        verify(m.public_key(ref), ref.algorithm, m.sign(ref, digest), digest)
    finally:
        m.close()


def test_vault_down_mid_operation_is_unavailable_then_recovers_after_restart(
    bao_private: BaoDevServer,
) -> None:
    """A dev server keeps everything in memory, so the restarted one is empty.

    This shows the same manager reconnects by itself and that a key created after
    the restart works; a production Vault would keep the old key too.
    """
    m = VaultTransitKeyManager(address=bao_private.address, token=bao_private.root_token)
    try:
        ref = m.create_key(unique())
        digest = digest_for(ref.algorithm, b"x")
        m.sign(ref, digest)
        bao_private.stop()
        with pytest.raises(UnavailableError, match=r"cannot reach vault .*connection refused"):
            m.sign(ref, digest)
        with pytest.raises(UnavailableError, match="cannot reach vault"):
            m.sign_many(ref, [digest, digest])
        with pytest.raises(UnavailableError, match="cannot reach vault"):
            m.check()
        bao_private.restart()
        bao_private.enable_engines()
        m.check()
        fresh = m.create_key(unique())
        verify(m.public_key(fresh), fresh.algorithm, m.sign(fresh, digest), digest)
        with pytest.raises(NotFoundError):  # the dev server lost the old key
            m.sign(ref, digest)
    finally:
        m.close()


@pytest.mark.timeout(60)
def test_slow_kms_is_bounded_by_the_timeout(silent_server: SilentServer) -> None:
    m = VaultTransitKeyManager(
        address=f"http://127.0.0.1:{silent_server.port}", token="t-not-used", timeout=0.5
    )
    ref = KeyRef(backend="vault-transit", key_id="trustd-slow", algorithm=KeyAlgorithm.EC_P256)
    try:
        with pytest.raises(DeadlineExceededError, match=r"did not answer .* within 0\.5s"):
            m.sign(ref, digest_for(ref.algorithm, b"x"))
        with pytest.raises(DeadlineExceededError):
            m.sign_many(ref, [digest_for(ref.algorithm, b"x")] * 3)
        with pytest.raises(DeadlineExceededError):
            m.check()
        with pytest.raises(DeadlineExceededError):
            m.create_key(unique())
        assert silent_server.accepted, "the client never reached the silent server"
    finally:
        m.close()


def test_wrong_token_is_permission_denied(bao: BaoDevServer) -> None:
    m = VaultTransitKeyManager(address=bao.address, token="s.not-a-valid-token")
    ref = KeyRef(backend="vault-transit", key_id="trustd-any", algorithm=KeyAlgorithm.EC_P256)
    try:
        with pytest.raises(PermissionDeniedError, match="vault rejected the token"):
            m.check()
        with pytest.raises(PermissionDeniedError, match="check token, tokenFile or appRole"):
            m.sign(ref, digest_for(ref.algorithm, b"x"))
        with pytest.raises(PermissionDeniedError):
            m.create_key(unique())
    finally:
        m.close()


def _policy_token(bao: BaoDevServer, name: str, policy: str) -> str:
    root = bao.client()
    root.sys.create_or_update_policy(name=name, policy=policy)
    return str(root.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"])


def test_token_whose_policy_cannot_sign_is_permission_denied(
    bao: BaoDevServer, manager: VaultTransitKeyManager
) -> None:
    ref = manager.create_key(unique())
    token = _policy_token(
        bao, "transit-read-only", 'path "transit/keys/*" { capabilities = ["read"] }'
    )
    m = VaultTransitKeyManager(address=bao.address, token=token)
    try:
        m.check()  # may read keys, so it looks ready
        assert m.public_key(ref).public_numbers() == manager.public_key(ref).public_numbers()
        with pytest.raises(PermissionDeniedError, match="policy allows it"):
            m.sign(ref, digest_for(ref.algorithm, b"x"))
    finally:
        m.close()


TRUSTD_POLICY = """
path "transit/keys/trustd-*" { capabilities = ["create", "read", "update", "delete"] }
path "transit/keys/trustd-*/config" { capabilities = ["update"] }
path "transit/sign/trustd-*" { capabilities = ["update"] }
"""


def test_token_file_is_read_and_re_read_after_rotation(bao: BaoDevServer, tmp_path: Path) -> None:
    first = _policy_token(bao, "trustd-transit", TRUSTD_POLICY)
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    m = VaultTransitKeyManager(address=bao.address, token_file=token_file)
    try:
        ref = m.create_key(unique())
        digest = digest_for(ref.algorithm, b"x")
        m.sign(ref, digest)
        # Vault Agent style rotation: the old token dies, the file gets a new one.
        bao.client().auth.token.revoke(first)
        token_file.write_text(_policy_token(bao, "trustd-transit", TRUSTD_POLICY))
        verify(m.public_key(ref), ref.algorithm, m.sign(ref, digest), digest)
        # A dead token with no replacement in the file is a clear permission error.
        bao.client().auth.token.revoke(token_file.read_text())
        with pytest.raises(PermissionDeniedError, match="vault rejected the token"):
            m.sign(ref, digest)
    finally:
        m.close()


def _approle(bao: BaoDevServer) -> tuple[str, str]:
    root = bao.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(name="trustd-transit", policy=TRUSTD_POLICY)
    root.auth.approle.create_or_update_approle(
        "trustd", token_policies=["trustd-transit"], token_ttl="1h"
    )
    role_id = root.auth.approle.read_role_id("trustd")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("trustd")["data"]["secret_id"]
    return str(role_id), str(secret_id)


def test_approle_login_signs(bao: BaoDevServer, tmp_path: Path) -> None:
    role_id, secret_id = _approle(bao)
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id)
    m = VaultTransitKeyManager(
        address=bao.address, app_role=AppRole(role_id=role_id, secret_id_file=secret_file)
    )
    try:
        m.check()
        ref = m.create_key(unique())
        digest = digest_for(ref.algorithm, b"x")
        verify(m.public_key(ref), ref.algorithm, m.sign(ref, digest), digest)
        m.retire(ref)
    finally:
        m.close()


def test_approle_with_wrong_secret_id_is_permission_denied(bao: BaoDevServer) -> None:
    role_id, _ = _approle(bao)
    m = VaultTransitKeyManager(
        address=bao.address, app_role=AppRole(role_id=role_id, secret_id="not-the-secret")
    )
    try:
        with pytest.raises(PermissionDeniedError, match="vault rejected the approle login"):
            m.check()
    finally:
        m.close()


def test_tls_with_the_ca_certificate_works_and_without_it_fails(bao_tls: BaoDevServer) -> None:
    assert bao_tls.ca_cert is not None
    good = VaultTransitKeyManager(
        address=bao_tls.address, token=bao_tls.root_token, ca_cert=bao_tls.ca_cert
    )
    bad = VaultTransitKeyManager(address=bao_tls.address, token=bao_tls.root_token)
    try:
        good.check()
        ref = good.create_key(unique())
        digest = digest_for(ref.algorithm, b"x")
        verify(good.public_key(ref), ref.algorithm, good.sign(ref, digest), digest)
        with pytest.raises(UnavailableError, match=r"tls with vault .* failed: check caCert"):
            bad.check()
    finally:
        good.close()
        bad.close()


def test_approle_logs_in_again_when_its_token_is_revoked(bao: BaoDevServer) -> None:
    role_id, secret_id = _approle(bao)
    metrics = VaultMetrics()
    m = VaultTransitKeyManager(
        address=bao.address,
        app_role=AppRole(role_id=role_id, secret_id=secret_id),
        metrics=metrics,
    )
    try:
        ref = m.create_key(unique())
        digest = digest_for(ref.algorithm, b"x")
        before = _requests(metrics, "login")
        bao.client().auth.token.revoke(m.connection._auth[1])
        verify(m.public_key(ref), ref.algorithm, m.sign(ref, digest), digest)
        assert _requests(metrics, "login") - before == 1
    finally:
        m.close()


def test_approle_denied_by_policy_does_not_log_in_again(bao: BaoDevServer) -> None:
    role_id, secret_id = _approle(bao)
    m = VaultTransitKeyManager(
        address=bao.address,
        app_role=AppRole(role_id=role_id, secret_id=secret_id),
        key_prefix="not-allowed-",
        metrics=(metrics := VaultMetrics()),
    )
    ref = KeyRef(backend="vault-transit", key_id="not-allowed-x", algorithm=KeyAlgorithm.EC_P256)
    try:
        with pytest.raises(PermissionDeniedError, match="policy allows it"):
            m.check()  # logs in once; the policy does not cover keys under this prefix
        before = _requests(metrics, "login")
        assert before == 1
        for _ in range(3):
            with pytest.raises(PermissionDeniedError, match="policy allows it"):
                m.sign(ref, digest_for(ref.algorithm, b"x"))
        assert _requests(metrics, "login") == before
    finally:
        m.close()


def _requests(metrics: VaultMetrics, operation: str, outcome: str = "ok") -> float:
    value = metrics.registry.get_sample_value(
        "trustd_vault_requests_total",
        {"engine": "transit", "operation": operation, "outcome": outcome},
    )
    return value or 0.0
