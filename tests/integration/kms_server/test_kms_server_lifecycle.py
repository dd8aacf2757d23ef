"""`trustd up` with its CA key in a real KMS: OpenBao transit and a SoftHSM2 token.

One `trustd up` process per backend runs the whole life of a CA (first CA,
SVIDs minted and served over the Workload API, prepare, activate, taint,
revoke) while the tests watch the KMS itself; then the data dir, the process's
logs and any audit file are scanned for key material and secrets.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kms_peers import BaoDevServer
from kms_server_harness import (
    TD,
    LifecycleRun,
    ca_keys,
    data_dir_haystacks,
    find_leaks,
    init_softhsm_token,
    p11_keys,
    policy_token,
    run_up_lifecycle,
    transit_keys,
    transit_public_spki,
)

pytestmark = pytest.mark.integration

PREFIX = "trustd-it-"


@pytest.fixture(scope="module")
def transit_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleRun]:
    tmp = tmp_path_factory.mktemp("up-transit")
    bao = BaoDevServer(tmp / "bao")
    bao.start()
    try:
        bao.enable_engines()
        root = bao.client()
        # trustd gets a token of its own, limited to the minimal transit policy of the README.
        token = policy_token(root, "transit-policy")
        secret_dir = tmp / "secrets"  # outside the data dir, as a real deployment would keep it
        secret_dir.mkdir()
        (secret_dir / "vault-token").write_text(token)

        def keys() -> dict[str, dict[str, Any]]:
            return {
                name: {**key, "spki": transit_public_spki(key)}
                for name, key in transit_keys(root, PREFIX).items()
            }

        yield run_up_lifecycle(
            tmp,
            {
                "kind": "vault-transit",
                "address": bao.address,
                "tokenFile": str(secret_dir / "vault-token"),
                "mount": "transit",
                "keyPrefix": PREFIX,
            },
            keys,
            secrets_={"vault token": token.encode(), "vault root token": bao.root_token.encode()},
        )
    finally:
        bao.stop()


@pytest.fixture(scope="module")
def pkcs11_run(tmp_path_factory: pytest.TempPathFactory) -> LifecycleRun:
    tmp = tmp_path_factory.mktemp("up-pkcs11")
    token = init_softhsm_token(tmp / "softhsm")
    pin_file = tmp / "secrets" / "pin"
    pin_file.parent.mkdir()
    pin_file.write_text(token.pin)
    return run_up_lifecycle(
        tmp,
        {
            "kind": "pkcs11",
            "module": str(token.module),
            "tokenLabel": token.label,
            "pinFile": str(pin_file),
        },
        lambda: p11_keys(token),
        env=token.env(),
        secrets_={"pkcs11 pin": token.pin.encode(), "pkcs11 so pin": token.so_pin.encode()},
    )


# --- vault-transit --------------------------------------------------------------------------


def test_up_creates_the_first_ca_key_in_transit_non_exportable(transit_run: LifecycleRun) -> None:
    run = transit_run
    ca = ca_keys(run.keys_at_start, PREFIX)
    assert len(ca) == 1, run.keys_at_start
    [key] = ca.values()
    assert key["type"] == "ecdsa-p256"
    # every key trustd made in transit (the CA's, and the audit log's) is non-exportable
    for other in run.keys_at_start.values():
        assert other["exportable"] is False
        assert other["allow_plaintext_backup"] is False
    # the CA certificate in the bundle carries exactly that transit key's public key
    assert key["spki"] == run.ca_spki_at_start
    [active] = run.authorities_at_start
    assert active["state"] == "active" and active["key_backend"] == "vault-transit"


def test_up_with_transit_issues_svids_openssl_verifies(transit_run: LifecycleRun) -> None:
    run = transit_run
    assert run.mint_verify is not None and run.mint_verify.returncode == 0, run.mint_verify
    assert run.workload is not None
    assert run.workload.spiffe_id == f"spiffe://{TD}/ns/kms/sa/web"
    assert run.workload_verify is not None and run.workload_verify.returncode == 0, (
        run.workload_verify
    )


def test_authority_prepare_creates_a_transit_key_and_revoke_deletes_it(
    transit_run: LifecycleRun,
) -> None:
    run = transit_run
    [first] = ca_keys(run.keys_at_start, PREFIX)
    assert len(ca_keys(run.keys_after_prepare, PREFIX)) == 2
    [second] = set(ca_keys(run.keys_after_prepare, PREFIX)) - {first}
    new = run.keys_after_prepare[second]
    assert new["exportable"] is False and new["allow_plaintext_backup"] is False
    assert new["spki"] == run.prepared_ca_spki
    states = sorted(a["state"] for a in run.authorities_after_prepare)
    assert states == ["active", "prepared"]
    # after activate, taint and revoke --force the first key is gone from bao
    assert set(ca_keys(run.keys_after_revoke, PREFIX)) == {second}
    # nothing else was retired with it (the audit key stays)
    assert set(run.keys_after_revoke) == set(run.keys_at_start) - {first} | {second}
    assert [(a["state"], a["id"] != run.revoked_id) for a in run.authorities_after_revoke] == [
        ("active", True)
    ]
    assert run.mint_after_rotation_verify is not None
    assert run.mint_after_rotation_verify.returncode == 0, run.mint_after_rotation_verify
    assert run.mint_after_rotation_issuer_spki == run.prepared_ca_spki
    assert run.exit_code == 0, run.log_text[-3000:]


def test_no_key_material_or_token_on_disk_or_in_logs_with_transit(
    transit_run: LifecycleRun,
) -> None:
    _assert_nothing_leaked(transit_run)


# --- pkcs11 ---------------------------------------------------------------------------------


def test_up_creates_the_first_ca_key_on_the_token_non_extractable(pkcs11_run: LifecycleRun) -> None:
    run = pkcs11_run
    ca = ca_keys(run.keys_at_start)
    assert len(ca) == 1, run.keys_at_start
    [key] = ca.values()
    # every private key trustd made on the token (the CA's, and the audit log's)
    for other in run.keys_at_start.values():
        assert other["token"] is True
        assert other["sensitive"] is True and other["extractable"] is False
        assert other["always_sensitive"] is True and other["never_extractable"] is True
        assert other["value_readable"] is False
    assert key["spki"] == run.ca_spki_at_start
    [active] = run.authorities_at_start
    assert active["state"] == "active" and active["key_backend"] == "pkcs11"


def test_up_with_pkcs11_issues_svids_openssl_verifies(pkcs11_run: LifecycleRun) -> None:
    run = pkcs11_run
    assert run.mint_verify is not None and run.mint_verify.returncode == 0, run.mint_verify
    assert run.workload is not None
    assert run.workload_verify is not None and run.workload_verify.returncode == 0, (
        run.workload_verify
    )


def test_authority_prepare_creates_a_token_key_and_revoke_destroys_it(
    pkcs11_run: LifecycleRun,
) -> None:
    run = pkcs11_run
    [first] = ca_keys(run.keys_at_start)
    assert len(ca_keys(run.keys_after_prepare)) == 2
    [second] = set(ca_keys(run.keys_after_prepare)) - {first}
    new = run.keys_after_prepare[second]
    assert new["extractable"] is False and new["value_readable"] is False
    assert new["spki"] == run.prepared_ca_spki
    assert set(ca_keys(run.keys_after_revoke)) == {second}
    assert set(run.keys_after_revoke) == set(run.keys_at_start) - {first} | {second}
    assert [a["state"] for a in run.authorities_after_revoke] == ["active"]
    assert run.mint_after_rotation_verify is not None
    assert run.mint_after_rotation_verify.returncode == 0, run.mint_after_rotation_verify
    assert run.mint_after_rotation_issuer_spki == run.prepared_ca_spki
    assert run.exit_code == 0, run.log_text[-3000:]


def test_no_key_material_or_pin_on_disk_or_in_logs_with_pkcs11(pkcs11_run: LifecycleRun) -> None:
    _assert_nothing_leaked(pkcs11_run)


# --- the scan -------------------------------------------------------------------------------


def _assert_nothing_leaked(run: LifecycleRun) -> None:
    d = run.data_dir
    haystacks = data_dir_haystacks(d)
    # the scan saw the store and the rest: an empty data dir would prove nothing
    assert any(name.startswith("trustd.db") for name in haystacks), sorted(haystacks)
    assert any(name.startswith("audit/") for name in haystacks), sorted(haystacks)
    haystacks["trustd up stderr"] = run.log_text.encode()
    assert run.log_text.count("\n") > 10, "trustd up logged (almost) nothing"
    assert run.workload is not None
    needles = dict(run.secrets)
    needles["workload svid private key"] = run.workload.key_der
    needles["minted svid private key"] = run.minted_key_der
    leaks = find_leaks(haystacks, needles)
    assert leaks == []
    # the local key manager never ran: no key directory with content, no key-encryption key
    keys = d / "keys"
    assert not keys.exists() or not any(keys.iterdir())
    assert not (d / "kek").exists()


def test_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """The scan itself can fail: a secret written in any form under the data dir is found."""
    secret = secrets.token_bytes(32)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "seg-1.jsonl").write_bytes(b'{"x":"' + secret.hex().encode() + b'"}')
    (tmp_path / "other").write_bytes(b"-----BEGIN EC PRIVATE KEY-----")
    leaks = find_leaks(data_dir_haystacks(tmp_path), {"planted": secret})
    assert leaks == ["planted in audit/seg-1.jsonl", "PRIVATE KEY marker in other"]


# --- one registry per process: /metrics serves the audit log's and the key manager's ----------


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` in a Prometheus text scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))] = sample.value
    return out


def _served_by_one_registry(run: LifecycleRun, kms_metric: str, kms_labels: str) -> None:
    text = run.metrics_text
    # the server's own, the agent's (trustd up runs both on one registry), the audit log's
    assert _samples(text, "trustd_svids_issued_total"), text[:2000]
    assert _samples(text, "trustd_agent_sds_streams")
    events = _samples(text, "trustd_audit_events_total")
    assert events.get("outcome=success", 0) >= 5  # entry create, mints, prepare, activate, ...
    assert _samples(text, "trustd_audit_last_seq")[""] >= events["outcome=success"]
    assert _samples(text, "trustd_audit_checkpoints_total")[""] >= 1
    # the key manager's: every CA signature of this run went through it
    kms = _samples(text, kms_metric)
    assert kms.get(kms_labels, 0) >= 1, sorted(kms)


def test_metrics_of_up_with_transit_include_audit_and_vault(transit_run: LifecycleRun) -> None:
    _served_by_one_registry(
        transit_run, "trustd_vault_requests_total", "engine=transit,operation=sign,outcome=ok"
    )


def test_metrics_of_up_with_pkcs11_include_audit_and_pkcs11(pkcs11_run: LifecycleRun) -> None:
    _served_by_one_registry(
        pkcs11_run, "trustd_pkcs11_operations_total", "operation=sign,outcome=ok"
    )
