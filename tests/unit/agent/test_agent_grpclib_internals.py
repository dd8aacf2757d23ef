"""The private grpclib/h2/asyncio names trustd.agent.grpclib_internals relies on still exist.

Each test fails loudly on a library upgrade that moves one: the per-connection
protocol hook, the handler task being created inside ``data_received`` (so it
inherits the caller's context), and the memory slimming of idle connections.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
from pathlib import Path

import grpc
from agent_fakes import (
    FakeUpstream,
    agent_channel,
    leaf_of,
    run_async,
    running_agent,
    sds_call,
    sds_fetch,
    sds_request,
    secrets_of,
    uri_of,
)
from grpclib.protocol import H2Protocol

from trustd.agent.endpoints import _AttestingProtocol
from trustd.agent.grpclib_internals import _SmallDeque


def test_small_deque_answers_what_the_libraries_call() -> None:
    d = _SmallDeque(collections.deque([1]))
    d.append(2)
    d.appendleft(0)
    assert d.popleft() == 0
    assert d[0] == 1 and d[-1] == 2 and len(d) == 2
    d.remove(2)
    assert list(d) == [1]


@run_async
async def test_live_connection_and_stream_hold_no_deques(tmp_path: Path) -> None:
    up = FakeUpstream()
    up.add_entry("spiffe://trustd.local/w", [f"unix:uid:{os.getuid()}"])
    async with (
        running_agent(tmp_path / "agent.sock", up),
        agent_channel(tmp_path / "agent.sock") as ch,
    ):
        call = sds_call(ch)
        await call.write(sds_request(["ROOTCA"]))
        assert set(secrets_of(await call.read())) == {"ROOTCA"}
        await asyncio.sleep(0)
        gc.collect()
        # Only this agent's connections (other grpclib servers may live in the process).
        inners = [
            o._inner
            for o in gc.get_objects()
            if isinstance(o, _AttestingProtocol)
            and o._transport is not None
            and not o._transport.is_closing()
        ]
        protocols = [p for p in inners if isinstance(p, H2Protocol)]
        assert len(protocols) == len(inners)  # every one is grpclib's H2Protocol
        streams = [s for p in protocols for s in p.processor.streams.values()]
        assert protocols and streams
        for p in protocols:
            h2 = p.connection._connection
            for settings in (h2.local_settings, h2.remote_settings):
                assert not any(type(v) is collections.deque for v in settings._settings.values())
            assert type(h2.decoder.header_table.dynamic_entries) is _SmallDeque
            assert type(p.connection.write_ready._waiters) is _SmallDeque
        for s in streams:
            assert type(s.headers_received._waiters) is _SmallDeque
            assert type(s.buffer._unacked._queue) is _SmallDeque
        call.cancel()


@run_async
async def test_grpclib_server_still_builds_connections_through_protocol_factory() -> None:
    from grpclib.server import Server

    server = Server([])
    assert callable(server._protocol_factory), "grpclib renamed Server._protocol_factory"
    proto = server._protocol_factory()
    assert isinstance(proto, H2Protocol)
    assert callable(proto.handler.accept), "grpclib's H2Protocol.handler.accept moved"


def test_handler_tasks_are_created_inside_data_received() -> None:
    """grpclib must start each request handler inside ``data_received``: that is how a
    handler inherits its connection's attested caller (trustd.agent.endpoints._CALLER)."""
    import inspect

    from grpclib.server import Handler

    src = inspect.getsource(Handler.accept)
    assert "create_task(" in src, "grpclib no longer creates the handler task in accept()"


@run_async
async def test_each_connection_sees_its_own_caller(tmp_path: Path) -> None:
    """Two connections with different attested callers, requests interleaved on both: each
    handler reads its own connection's caller (from the context), never the other's."""
    from trustd.agent.service import AgentService
    from trustd.selectors import Caller

    up = FakeUpstream()
    up.add_entry("spiffe://trustd.local/a", ["unix:uid:4242"])
    up.add_entry("spiffe://trustd.local/b", ["unix:uid:4343"])
    uids = iter([4242, 4343])

    def fake_attest(sock: object) -> Caller:
        return Caller(pid=os.getpid(), uid=next(uids), gid=0)

    sock = tmp_path / "agent.sock"
    agent = AgentService(
        upstream=up, socket_path=sock, trust_domain=up.trust_domain, attestor=fake_attest
    )
    await agent.start()
    try:
        await asyncio.wait_for(agent.wait_ready(), 30)
        # grpcio shares one connection between channels to one target unless told not to
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with (
            grpc.aio.insecure_channel(f"unix://{sock}", options=own) as ch_1,
            grpc.aio.insecure_channel(f"unix://{sock}", options=own) as ch_2,
        ):
            seen: dict[int, list[str]] = {1: [], 2: []}
            for _ in range(3):  # interleaved: 1, 2, 1, 2, ... on two live connections
                for n, ch in ((1, ch_1), (2, ch_2)):
                    resp = await sds_fetch(ch, ["default"])
                    seen[n].append(uri_of(leaf_of(secrets_of(resp)["default"])))
        # each connection always got one identity, and the two got different ones
        assert len(set(seen[1])) == 1 and len(set(seen[2])) == 1, seen
        assert {seen[1][0], seen[2][0]} == {"spiffe://trustd.local/a", "spiffe://trustd.local/b"}
    finally:
        await agent.stop()
