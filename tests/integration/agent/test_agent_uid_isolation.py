"""Two callers under different uids: neither gets the other's SVID, whatever it asks for.

Each caller is a separate process running as its own uid (1000, 1001), plus a
third uid with no entry. They ask the agent over SDS (Fetch and Stream) for
every name form, and over the Workload API with the real ``spiffe`` client.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import (
    FakeUpstream,
    other_user_env,
    python_for_other_users,
    run_async,
    running_agent,
    world_dir,
)

pytestmark = pytest.mark.integration

TD = "trustd.local"
ALICE = f"spiffe://{TD}/ns/shop/sa/alice"  # uid 1000
BOB = f"spiffe://{TD}/ns/shop/sa/bob"  # uid 1001
PROBE = Path(__file__).with_name("agent_probe.py")

NAMES: list[list[str]] = [
    ["default"],
    [ALICE],
    [BOB],
    ["default", BOB],
    ["default", ALICE],
    [ALICE, BOB],
    ["ROOTCA"],
    ["ALL"],
    [f"spiffe://{TD}"],
    [],  # "everything I may see"
    ["DEFAULT"],
    ["default "],
    [f"spiffe://{TD.upper()}/ns/shop/sa/bob"],
    [f"spiffe://{TD}/ns/shop/sa/bob/"],
    [f"spiffe://{TD}/ns/shop/sa/alice/../bob"],
    [f"spiffe://{TD}/ns/shop/sa/%62ob"],
    [f"spiffe://{TD}/ns/shop/sa/*"],
    ["spiffe://other.example/ns/shop/sa/bob"],
]


async def _probe(socket: Path, uid: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        python_for_other_users(),
        str(PROBE),
        str(socket),
        json.dumps(NAMES),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=other_user_env(SPIFFE_ENDPOINT_SOCKET=f"unix://{socket}"),
        user=uid,
        group=uid,
        extra_groups=[],
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


def _svids_seen(result: dict[str, Any]) -> list[dict[str, Any]]:
    seen = []
    for mode in ("fetch", "stream"):
        for answer in result[mode].values():
            seen += [r for r in answer.get("ok", []) if r["kind"] == "svid"]
    seen += result["workload"].get("ok", [])
    return seen


@run_async
async def test_two_uids_never_get_each_others_svid() -> None:
    up = FakeUpstream(TD)
    up.add_entry(ALICE, ["unix:uid:1000"])
    up.add_entry(BOB, ["unix:uid:1001"])
    d = world_dir()
    try:
        async with running_agent(d / "public" / "agent.sock", up) as agent:
            sock = agent.socket_path
            alice, bob, nobody = await asyncio.gather(
                _probe(sock, 1000), _probe(sock, 1001), _probe(sock, 1002)
            )
            alice_entry = next(e for e in up.entries.values() if str(e.spiffe_id) == ALICE)
            bob_entry = next(e for e in up.entries.values() if str(e.spiffe_id) == BOB)
            alice_svid = agent.cache.svid(alice_entry.id)
            bob_svid = agent.cache.svid(bob_entry.id)
            assert alice_svid is not None and bob_svid is not None
    finally:
        shutil.rmtree(d)

    for me, other, mine_id, other_id, my_serial, other_serial in (
        (alice, bob, ALICE, BOB, alice_svid.serial, bob_svid.serial),
        (bob, alice, BOB, ALICE, bob_svid.serial, alice_svid.serial),
    ):
        seen = _svids_seen(me)
        assert seen, "the caller got its own svid at least once"
        assert {s["uri"] for s in seen} == {mine_id}
        assert {s["serial"] for s in seen} == {f"{my_serial:x}"}
        assert f"{other_serial:x}" not in json.dumps(me)
        other_keys = {s["key"] for s in _svids_seen(other)}
        assert not other_keys & {s["key"] for s in seen}, "never a byte of the other's key"
        for mode in ("fetch", "stream"):
            answers = me[mode]
            assert answers['["default"]']["ok"][0]["uri"] == mine_id
            assert answers[json.dumps([mine_id])]["ok"][0]["uri"] == mine_id
            assert answers[json.dumps([other_id])] == {"error": "PERMISSION_DENIED"}
            # Beside a name it may have, the other's is left out: only its own comes back.
            [own] = answers[json.dumps(["default", other_id])]["ok"]
            assert (own["name"], own["uri"]) == ("default", mine_id)
            [own] = answers[json.dumps([ALICE, BOB])]["ok"]
            assert (own["name"], own["uri"]) == (mine_id, mine_id)
            assert answers['["ROOTCA"]']["ok"] == [{"name": "ROOTCA", "kind": "bundle"}]
            assert [r["uri"] for r in answers["[]"]["ok"] if r["kind"] == "svid"] == [mine_id]
            for odd in (["DEFAULT"], ["default "]):
                # Unknown: a stream is answered without it (and waits), a fetch fails.
                expected: dict[str, object] = (
                    {"error": "NOT_FOUND"} if mode == "fetch" else {"ok": []}
                )
                assert answers[json.dumps(odd)] == expected, odd
            assert answers[json.dumps([f"spiffe://{TD}/ns/shop/sa/*"])] == {
                "error": "INVALID_ARGUMENT"
            }
            for invalid in (
                [f"spiffe://{TD.upper()}/ns/shop/sa/bob"],
                [f"spiffe://{TD}/ns/shop/sa/bob/"],
                [f"spiffe://{TD}/ns/shop/sa/alice/../bob"],
                [f"spiffe://{TD}/ns/shop/sa/%62ob"],
            ):
                assert answers[json.dumps(invalid)] == {"error": "INVALID_ARGUMENT"}, invalid
            assert answers[json.dumps(["spiffe://other.example/ns/shop/sa/bob"])] == {
                "error": "PERMISSION_DENIED"
            }
        assert [s["uri"] for s in me["workload"]["ok"]] == [mine_id]
        assert me["workload_bundles"]["ok"] == [TD]

    # A uid with no entry gets no identity at all, only public bundles over SDS.
    assert _svids_seen(nobody) == []
    assert nobody["fetch"]['["default"]'] == {"error": "PERMISSION_DENIED"}
    assert nobody["fetch"][json.dumps([ALICE])] == {"error": "PERMISSION_DENIED"}
    for mode in ("fetch", "stream"):
        assert nobody[mode][json.dumps(["default", BOB])] == {"error": "PERMISSION_DENIED"}
    assert nobody["fetch"]['["ROOTCA"]']["ok"] == [{"name": "ROOTCA", "kind": "bundle"}]
    assert "error" in nobody["workload"]
    assert "error" in nobody["workload_bundles"]
