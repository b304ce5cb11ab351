"""Load on loopback, bounded: 5,000 connections open at once on one ferroloop loop, each
echoing its own payload through a Protocol server, every byte checked."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Iterator

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(90)

CONNECTIONS = 5000
PAYLOAD = 2048  # per connection, each different: 10 MiB each way in all
CONNECTING_AT_ONCE = 250  # stays well inside the listen backlog: no SYN retransmit stalls
DESCRIPTORS_NEEDED = 2 * CONNECTIONS + 200  # both ends live in this process, plus slack


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < DESCRIPTORS_NEEDED:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; {DESCRIPTORS_NEEDED} descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < DESCRIPTORS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class EchoServer(asyncio.Protocol):
    active = 0
    most_active = 0
    lost_with: list[BaseException | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        EchoServer.active += 1
        EchoServer.most_active = max(EchoServer.most_active, EchoServer.active)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        EchoServer.active -= 1
        EchoServer.lost_with.append(exc)


class EchoClient(asyncio.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.echoed.done():
            self.echoed.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.echoed.done():
            self.echoed.set_exception(ConnectionError(f"lost before the echo: {exc!r}"))
        self.lost.set_result(exc)


async def until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_5000_concurrent_echo_connections(loop: ferroloop.Loop, enough_descriptors: None) -> None:
    EchoServer.active = EchoServer.most_active = 0
    EchoServer.lost_with = []

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()) is ferroloop.Loop
        event_loop = asyncio.get_running_loop()
        server = await event_loop.create_server(EchoServer, "127.0.0.1", 0, backlog=4096)
        address = server.sockets[0].getsockname()
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def connect(n: int) -> EchoClient:
            payload = n.to_bytes(4, "big") + os.urandom(PAYLOAD - 4)
            async with gate:
                _, client = await event_loop.create_connection(lambda: EchoClient(payload), *address)
            return client

        clients = await asyncio.gather(*(connect(n) for n in range(CONNECTIONS)))
        # Every connection is open at the same time, on both ends.
        await until(lambda: EchoServer.active == CONNECTIONS, 20)
        # All talk at once.
        for client in clients:
            client.transport.write(client.payload)
        await asyncio.wait_for(asyncio.gather(*(c.echoed for c in clients)), 30)
        wrong = [n for n, c in enumerate(clients) if c.received != c.payload]
        assert not wrong, f"{len(wrong)} connections got back other bytes, e.g. #{wrong[0]}"
        assert EchoServer.most_active == CONNECTIONS
        for client in clients:
            client.transport.close()
        assert set(await asyncio.gather(*(c.lost for c in clients))) == {None}
        await until(lambda: EchoServer.active == 0, 20)
        assert len(EchoServer.lost_with) == CONNECTIONS
        assert set(EchoServer.lost_with) == {None}
        server.close()
        await server.wait_closed()

    loop.run_until_complete(asyncio.wait_for(scenario(), 80))
