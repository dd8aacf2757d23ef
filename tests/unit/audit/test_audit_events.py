"""Event input: validation, normalisation of details, the secret guard, token HMACs."""

from __future__ import annotations

import datetime as dt
import enum

import pytest

from trustd.audit import (
    Actor,
    AuditEvent,
    AuditEventError,
    AuditSecretError,
    check_no_secrets,
    hmac_token,
)
from trustd.errors import InvalidArgumentError

AGENT = Actor.spiffe("spiffe://trustd.local/agent/node-1")

PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0000000000000000\n"
    "-----END PRIVATE KEY-----\n"
)
EC_PEM_KEY = PEM_KEY.replace("PRIVATE KEY", "EC PRIVATE KEY")
VAULT_TOKEN = "hvs.CAESIJw7mWJ0aWxsLXRoaXMtaXMtbm90LWEtcmVhbC10b2tlbg"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly90ZC93In0.c2lnbmF0dXJl"


def event(**kw: object) -> AuditEvent:
    fields: dict[str, object] = {"type": "admin.entry.create", "actor": AGENT, "action": "create"}
    fields.update(kw)
    return AuditEvent(**fields)  # type: ignore[arg-type]


class Color(enum.StrEnum):
    RED = "red"


def test_actor_constructors_set_kind_id_uid_addr() -> None:
    unix = Actor.unix(uid=0, addr="/run/admin.sock")
    # the user the kernel names, not the executable (for the CLI that is always python)
    assert (unix.kind, unix.id, unix.uid, unix.addr) == ("unix", "root", 0, "/run/admin.sock")
    assert Actor.unix(uid=54321).id == "uid:54321"  # no passwd entry
    assert Actor.system().to_json() == {"kind": "system", "id": "trustd", "uid": None, "addr": None}


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "root", "id": "x"},
        {"kind": "unix", "id": ""},
        {"kind": "unix", "id": "x", "uid": -1},
        {"kind": "unix", "id": "x", "uid": True},
    ],
)
def test_actor_rejects_bad_fields(kw: dict[str, object]) -> None:
    with pytest.raises(AuditEventError):
        Actor(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["svid", "SVID.issue", "svid..issue", "svid.issue.", "a b.c", ""])
def test_event_type_must_be_dotted_lower_case(bad: str) -> None:
    with pytest.raises(AuditEventError):
        event(type=bad)


def test_event_outcome_and_action_are_checked() -> None:
    with pytest.raises(AuditEventError):
        event(outcome="ok")
    with pytest.raises(AuditEventError):
        event(action="")
    assert isinstance(AuditEventError("x"), InvalidArgumentError)


def test_details_are_normalised_to_sorted_json_data() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    ev = event(details={"z": (1, 2), "a": {"y": Color.RED, "b": when}, "m": dt.date(2026, 1, 2)})
    assert list(ev.details) == ["a", "m", "z"]
    assert list(ev.details["a"]) == ["b", "y"]
    assert ev.details["a"]["b"] == "2026-01-02T01:04:05.600000Z"
    assert ev.details["a"]["y"] == "red"
    assert ev.details["z"] == [1, 2]
    assert ev.details["m"] == "2026-01-02"


@pytest.mark.parametrize(
    "details",
    [
        {"raw": b"\x00\x01"},
        {"n": float("nan")},
        {"when": dt.datetime(2026, 1, 1)},  # naive: ambiguous
        {"s": {1, 2}},
        {1: "int key"},
    ],
)
def test_details_that_are_not_json_data_are_refused(details: dict[object, object]) -> None:
    with pytest.raises(AuditEventError):
        event(details=details)


@pytest.mark.parametrize(
    "details",
    [
        {"key": PEM_KEY},
        {"nested": {"list": ["ok", EC_PEM_KEY]}},
        {"token": "d3c4f9a1b2"},
        {"join_token": "d3c4f9a1b2"},
        {"joinToken": "d3c4f9a1b2"},
        {"password": "hunter2"},
        {"pin": 1234},
        {"so-pin": "0000"},
        {"private_key": "anything"},
        {"privateKey": "anything"},
        {"secret_id": "4f0a"},
        {"api_key": "abc"},
        {"kms": {"vault_token": "x"}},
        {"header": f"Bearer {'A' * 40}"},
        {"note": f"got {VAULT_TOKEN} from env"},
        {"jwt_svid": JWT},
    ],
)
def test_secret_looking_details_are_refused(details: dict[str, object]) -> None:
    with pytest.raises(AuditSecretError) as info:
        event(details=details)
    # the error names where, never what
    for value in ("d3c4f9a1b2", "hunter2", "1234", VAULT_TOKEN, JWT, "BEGIN PRIVATE"):
        assert value not in str(info.value)
    with pytest.raises(AuditSecretError):
        check_no_secrets(details)


@pytest.mark.parametrize("field", ["reason", "resource", "action"])
def test_secrets_in_text_fields_are_refused(field: str) -> None:
    with pytest.raises(AuditSecretError):
        event(**{field: f"failed: {PEM_KEY}"})
    with pytest.raises(AuditSecretError):
        event(**{field: f"failed with token {VAULT_TOKEN}"})


def test_secret_in_actor_id_is_refused() -> None:
    with pytest.raises(AuditSecretError):
        event(actor=Actor(kind="system", id=VAULT_TOKEN))


def test_fields_that_describe_a_secret_are_allowed() -> None:
    salt = b"k" * 32
    ev = event(
        details={
            "token": hmac_token("the-token", salt),
            "token_hmac": hmac_token("the-token", salt),
            "token_id": "tok-1",
            "token_ttl": "10m",
            "token_expires_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "pin_file": "/etc/trustd/pin",
            "key_id": "authority-1",
            "password_set": True,
            "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "spiffe_id": "spiffe://trustd.local/ns/shop/sa/api",
            "serial": "0a1b2c",
        }
    )
    assert ev.details["token_id"] == "tok-1"


def test_hmac_token_is_salted_and_hides_the_token() -> None:
    a = hmac_token("join-token-value", b"a" * 32)
    b = hmac_token("join-token-value", b"b" * 32)
    assert a.startswith("hmac-sha256:") and len(a) == len("hmac-sha256:") + 64
    assert a == hmac_token("join-token-value", b"a" * 32)
    assert a != b
    assert "join-token-value" not in a
    with pytest.raises(AuditEventError):
        hmac_token("x", b"short")
