"""No token, secret id, PIN or private key in logs or error messages of the KMS backends.

Each backend runs a full life cycle plus its failure paths against the real
peer while structlog and stdlib logging are captured; every exception raised
is kept with its chained causes. Then the whole text is scanned.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kms_peers import BaoDevServer, SoftHsm

from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.pkcs11 import Pkcs11KeyManager
from trustd.ca.kms.vault_transit import AppRole, VaultTransitKeyManager
from trustd.ca.upstream.vault_pki import VaultPkiUpstream
from trustd.errors import TrustdError

pytestmark = pytest.mark.integration


class Recorder:
    """Runs calls, keeping every TrustdError with its full chained traceback text."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def expect_error(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except TrustdError as exc:
            self.errors.append(str(exc))
            self.errors.append("".join(traceback.format_exception(exc)))
            self.errors.append(repr(exc))
        else:
            raise AssertionError("expected a TrustdError")


def scan(texts: list[str], secrets_: list[str]) -> None:
    blob = "\n".join(texts)
    for secret in secrets_:
        assert secret not in blob, "a secret leaked into logs or errors"
    assert "PRIVATE KEY" not in blob


def test_vault_backends_leak_no_token_or_secret_id(
    bao_private: BaoDevServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    root = bao_private.client()
    root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        name="trustd",
        policy='path "transit/*" { capabilities = ["create", "read", "update", "delete"] }',
    )
    root.auth.approle.create_or_update_approle("trustd", token_policies=["trustd"])
    role_id = str(root.auth.approle.read_role_id("trustd")["data"]["role_id"])
    secret_id = str(root.auth.approle.generate_secret_id("trustd")["data"]["secret_id"])
    wrong_token = "wrong-" + secrets.token_hex(16)
    wrong_secret = "wrong-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(bao_private.root_token)
    rec = Recorder()
    with structlog.testing.capture_logs() as logs:
        m = VaultTransitKeyManager(address=bao_private.address, token_file=token_file)
        m.check()
        ref = m.create_key("secret-scan", KeyAlgorithm.EC_P256)
        digest = hashlib.sha256(b"x").digest()
        m.sign(ref, digest)
        m.sign_many(ref, [digest] * 3)
        rec.expect_error(lambda: m.create_key("secret-scan"))
        rec.expect_error(lambda: m.sign(ref, b"short"))
        m.retire(ref)
        rec.expect_error(lambda: m.sign(ref, digest))

        ar = VaultTransitKeyManager(
            address=bao_private.address, app_role=AppRole(role_id=role_id, secret_id=secret_id)
        )
        ar.check()
        ar.sign(ar.create_key("secret-scan-approle"), digest)
        bad_ar = VaultTransitKeyManager(
            address=bao_private.address, app_role=AppRole(role_id=role_id, secret_id=wrong_secret)
        )
        rec.expect_error(bad_ar.check)
        bad = VaultTransitKeyManager(address=bao_private.address, token=wrong_token)
        rec.expect_error(bad.check)
        rec.expect_error(lambda: bad.sign(ref, digest))

        pki = VaultPkiUpstream(address=bao_private.address, token=bao_private.root_token)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd")]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier("spiffe://trustd.local")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        pki.sign_intermediate(csr_pem, dt.timedelta(hours=1))
        bad_pki = VaultPkiUpstream(address=bao_private.address, token=wrong_token)
        rec.expect_error(bad_pki.check)

        bao_private.seal()
        rec.expect_error(m.check)
        rec.expect_error(lambda: pki.sign_intermediate(csr_pem, dt.timedelta(hours=1)))
        bao_private.stop()
        rec.expect_error(m.check)
        rec.expect_error(lambda: ar.sign(ref, digest))
        for closable in (m, ar, bad_ar, bad, pki, bad_pki):
            closable.close()
    assert logs, "nothing was logged, so the scan would prove nothing"
    assert len(rec.errors) >= 30
    texts = [repr(e) for e in logs] + [caplog.text] + rec.errors
    scan(texts, [bao_private.root_token, secret_id, wrong_token, wrong_secret])


def test_pkcs11_backend_leaks_no_pin(softhsm: SoftHsm, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_pin = "wrong-" + secrets.token_hex(8)
    rec = Recorder()
    with structlog.testing.capture_logs() as logs:
        m = Pkcs11KeyManager(
            module=softhsm.module, token_label=softhsm.token_label, pin=softhsm.pin
        )
        m.check()
        ref = m.create_key("secret-scan-" + secrets.token_hex(3), KeyAlgorithm.EC_P256)
        digest = hashlib.sha256(b"x").digest()
        m.sign(ref, digest)
        rec.expect_error(lambda: m.sign(ref, b"short"))
        m.retire(ref)
        rec.expect_error(lambda: m.sign(ref, digest))
        m.close()
        bad = Pkcs11KeyManager(
            module=softhsm.module, token_label=softhsm.other_label, pin=wrong_pin
        )
        rec.expect_error(bad.check)
        rec.expect_error(lambda: bad.sign(KeyRef(backend="pkcs11", key_id="x"), digest))
        bad.close()
    assert logs, "nothing was logged, so the scan would prove nothing"
    texts = [repr(e) for e in logs] + [caplog.text] + rec.errors
    scan(texts, [softhsm.pin, softhsm.other_pin, wrong_pin, softhsm.so_pin])
