"""The memory slimming of idle connections still applies to the installed h2/grpclib."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
from pathlib import Path

from agent_fakes import (
    FakeUpstream,
    agent_channel,
    run_async,
    running_agent,
    sds_call,
    sds_request,
    secrets_of,
)
from grpclib.protocol import H2Protocol

from trustd.agent.endpoints import _AttestingProtocol
from trustd.agent.slim import _SmallDeque


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
    async with running_agent(tmp_path / "agent.sock", up), agent_channel(
        tmp_path / "agent.sock"
    ) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["ROOTCA"]))
        assert set(secrets_of(await call.read())) == {"ROOTCA"}
        await asyncio.sleep(0)
        gc.collect()
        # Only this agent's connections (other grpclib servers may live in the process).
        protocols = [
            o._inner for o in gc.get_objects()
            if isinstance(o, _AttestingProtocol) and o._transport is not None
            and not o._transport.is_closing()
        ]
        assert all(isinstance(p, H2Protocol) for p in protocols)
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
