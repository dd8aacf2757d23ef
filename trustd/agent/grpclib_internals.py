"""The one module that reaches into grpclib's, h2's and asyncio's private attributes.

Two things the agent socket needs have no public API in grpclib:

1. **A hook per accepted connection** (to attest the caller with SO_PEERCRED
   once, on the connected socket): :func:`wrap_protocol_factory` replaces
   ``grpclib.server.Server._protocol_factory`` on one server instance.
2. **Smaller idle connections** (memory per SDS stream), below.

Which caller a stream belongs to needs no private attribute: the attesting
protocol sets a context variable around each ``data_received``, and grpclib
creates every request handler task inside that call, so the task inherits it
(see :mod:`trustd.agent.endpoints`).

``tests/unit/agent/test_agent_grpclib_internals.py`` checks every private
name used here against the installed versions and fails loudly when a
library upgrade moves one.

Making idle HTTP/2 connections smaller (memory only; behaviour is unchanged):

An idle SDS stream on grpclib costs about 48 KB, and some 40 % of it is empty
``collections.deque`` objects (about 600 bytes each, even when they hold one
item): h2 keeps every HTTP/2 setting in its own deque, hpack keeps one per
header table, and every ``asyncio.Event`` and ``asyncio.Queue`` that grpclib
creates per connection and per stream holds one to three. The agent holds
thousands of such connections for their whole life, so it swaps those deques
for a small list that offers the few deque methods these libraries call.

Everything here reaches into other libraries' private attributes, on
purpose and only here. Each step checks what it finds and leaves anything
unexpected untouched, so a library upgrade can only make this a no-op, never
a fault. The test named above checks that the installed versions are still slimmed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any


class _SmallDeque(list[Any]):
    """A list that answers the deque methods h2, hpack and asyncio use on these objects."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _slim(value: Any) -> Any:
    if type(value) is collections.deque and value.maxlen is None:
        return _SmallDeque(value)
    return value


def _slim_attrs(obj: Any, *names: str) -> int:
    done = 0
    for name in names:
        value = getattr(obj, name, None)
        new = _slim(value)
        if new is not value:
            setattr(obj, name, new)
            done += 1
    return done


def _slim_event(event: Any) -> int:
    return _slim_attrs(event, "_waiters") if isinstance(event, asyncio.Event) else 0


def _slim_queue(queue: Any) -> int:
    if not isinstance(queue, asyncio.Queue):
        return 0
    return _slim_attrs(queue, "_getters", "_putters", "_queue")


def slim_connection(protocol: Any) -> int:
    """Slim the per-connection state of a grpclib ``H2Protocol``; returns deques replaced."""
    done = 0
    conn = getattr(protocol, "connection", None)
    h2conn = getattr(conn, "_connection", None)
    for settings in (
        getattr(h2conn, "local_settings", None),
        getattr(h2conn, "remote_settings", None),
    ):
        values = getattr(settings, "_settings", None)
        if isinstance(values, dict):
            for key, value in list(values.items()):
                new = _slim(value)
                if new is not value:
                    values[key] = new
                    done += 1
    for codec in (getattr(h2conn, "encoder", None), getattr(h2conn, "decoder", None)):
        done += _slim_attrs(getattr(codec, "header_table", None), "dynamic_entries")
    for name in ("write_ready", "stream_close_waiter"):
        done += _slim_event(getattr(conn, name, None))
    return done


def wrap_protocol_factory(
    server: Any, wrap: Callable[[asyncio.Protocol], asyncio.Protocol]
) -> None:
    """Make ``server`` (a grpclib ``Server``) build ``wrap(grpclib's protocol)`` per connection."""
    inner_factory = server._protocol_factory  # grpclib: Server._protocol_factory() -> H2Protocol

    def factory() -> asyncio.Protocol:
        return wrap(inner_factory())

    server._protocol_factory = factory


def slim_per_stream(protocol: Any) -> None:
    """Slim an accepted connection now, and each stream as grpclib accepts it."""
    slim_connection(protocol)
    handler: Any = getattr(protocol, "handler", None)
    accept = getattr(handler, "accept", None)
    if accept is None:
        return

    def slim_accept(stream: Any, headers: Any, release_stream: Any) -> None:
        slim_stream(stream)
        slim_connection(protocol)  # settings the peer sent since the connection opened
        accept(stream, headers, release_stream)

    handler.accept = slim_accept


def slim_stream(stream: Any) -> int:
    """Slim a grpclib ``protocol.Stream`` as it is accepted; returns deques replaced."""
    done = 0
    for name in ("window_updated", "headers_received", "trailers_received"):
        done += _slim_event(getattr(stream, name, None))
    buffer = getattr(stream, "buffer", None)
    done += _slim_queue(getattr(buffer, "_unacked", None))
    done += _slim_attrs(buffer, "_acked")
    return done
