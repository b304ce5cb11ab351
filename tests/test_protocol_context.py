"""Which `contextvars.Context` protocol callbacks run in. From CPython 3.15 on, every callback of
one connection runs in one context: a copy of the caller's for `create_connection`, a copy of
the server's (taken when it was created) for each accepted connection; before 3.15 each
callback runs in a copy of the context it was scheduled from. ferroloop follows the running
interpreter: the same scenario runs on both loops and must see the same values."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys
from typing import Any

import pytest

import ferroloop

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


class Recorder(asyncio.Protocol):
    def __init__(self, side: str, seen: list[tuple[str, str, str]], lost: asyncio.Future[None]) -> None:
        self.side, self.seen, self.lost = side, seen, lost

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.seen.append((self.side, "connection_made", where.get()))
        where.set(f"{self.side} set in connection_made")
        if self.side == "client":
            transport.write(b"ping")

    def data_received(self, data: bytes) -> None:
        self.seen.append((self.side, "data_received", where.get()))
        if self.side == "server":
            self.transport.write(b"pong")
        else:
            self.transport.close()

    def eof_received(self) -> None:
        self.seen.append((self.side, "eof_received", where.get()))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.seen.append((self.side, "connection_lost", where.get()))
        if not self.lost.done():
            self.lost.set_result(None)


def scenario(event_loop: asyncio.AbstractEventLoop) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    async def main() -> None:
        server_lost = event_loop.create_future()
        client_lost = event_loop.create_future()
        where.set("before create_server")
        server = await event_loop.create_server(lambda: Recorder("server", seen, server_lost), "127.0.0.1", 0)
        where.set("before create_connection")
        port = server.sockets[0].getsockname()[1]
        await event_loop.create_connection(lambda: Recorder("client", seen, client_lost), "127.0.0.1", port)
        where.set("after create_connection")
        await asyncio.wait_for(asyncio.gather(server_lost, client_lost), 10)
        server.close()
        await server.wait_closed()

    event_loop.run_until_complete(main())
    return sorted(seen)


def test_protocol_callbacks_run_in_the_context_the_interpreters_loop_uses(
    loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop
) -> None:
    expected = scenario(stdlib_loop)
    assert scenario(loop) == expected
    by_callback = {(side, callback): value for side, callback, value in expected}
    if sys.version_info >= (3, 15):
        # One context per connection: what connection_made set, data_received sees.
        assert by_callback["client", "data_received"] == "client set in connection_made"
        assert by_callback["server", "data_received"] == "server set in connection_made"
        assert by_callback["server", "connection_made"] == "before create_server"
    else:
        assert by_callback["client", "data_received"] != "client set in connection_made"


@pytest.mark.skipif(sys.version_info < (3, 15), reason="context= on transport factories is 3.15's")
def test_socket_transport_factory_takes_a_context(loop: ferroloop.Loop) -> None:
    ctx = contextvars.copy_context()
    ctx.run(where.set, "given context")
    seen: list[str] = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            seen.append(where.get())
            transport.close()

        def connection_lost(self, exc: BaseException | None) -> None:
            seen.append(where.get())

    a, b = socket.socketpair()
    b.close()
    a.setblocking(False)
    loop._make_socket_transport(a, Proto(), context=ctx)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen == ["given context", "given context"]
