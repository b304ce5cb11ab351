"""UDP echo over loopback at 1 and 8 KiB: `create_datagram_endpoint` on both ends, server
and client in separate processes pinned to different cores, both on the candidate loop.

The server (`python -m bench.workloads.datagram_echo LOOP ENDPOINTS`, pinned to SERVER_CPU)
is one unconnected endpoint whose `datagram_received(data, addr)` calls
`transport.sendto(data, addr)`; it prints its port and exits once each client endpoint has
said goodbye (a short datagram). The client opens ENDPOINTS endpoints connected to it
(`remote_addr=`), each with one datagram in flight: `sendto(message)` again as soon as the
previous one is back. Loopback does not drop datagrams at this rate, so a lost one is a
failure (the harness's timeout), not a retry.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, cast

from . import Timing, Workload
from .echo import QUICK_DIVISOR, WARM_UP_ROUND_TRIPS, bounded_close, measure_against_server, run_pinned_server

ENDPOINTS = 4
GOODBYE = b"bye"
#: Message size -> round trips per measurement in a full run.
ROUND_TRIPS = {1024: 60_000, 8 * 1024: 40_000}


class EchoServer(asyncio.DatagramProtocol):
    def __init__(self, goodbyes_left: int, all_gone: asyncio.Future[None]) -> None:
        self.goodbyes_left = goodbyes_left
        self.all_gone = all_gone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == GOODBYE:
            self.goodbyes_left -= 1
            if self.goodbyes_left == 0:
                self.all_gone.set_result(None)
            return
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def serve(endpoints: int) -> None:
    loop = asyncio.get_running_loop()
    all_gone: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: EchoServer(endpoints, all_gone), local_addr=("127.0.0.1", 0)
    )
    print(transport.get_extra_info("sockname")[1], flush=True)
    try:
        await all_gone
    finally:
        transport.close()


class EchoClient(asyncio.DatagramProtocol):
    """Sends `message`, waits for it to come back, sends again, `count` times."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.transport: asyncio.DatagramTransport | None = None
        self.remaining = 0
        self.done: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def round_trips(self, count: int) -> asyncio.Future[None]:
        assert self.transport is not None
        self.remaining = count
        self.done = asyncio.get_running_loop().create_future()
        self.transport.sendto(self.message)
        return self.done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None and self.done is not None
        if len(data) != len(self.message):
            self.done.set_exception(ConnectionError(f"echoed {len(data)} bytes, sent {len(self.message)}"))
            return
        self.remaining -= 1
        if self.remaining:
            self.transport.sendto(self.message)
        else:
            self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


async def drive(port: int, message: bytes, per_endpoint: int, notes: list[str]) -> float:
    loop = asyncio.get_running_loop()
    clients: list[EchoClient] = []
    try:
        for _ in range(ENDPOINTS):
            _, client = await loop.create_datagram_endpoint(
                lambda: EchoClient(message), remote_addr=("127.0.0.1", port)
            )
            clients.append(client)
        await asyncio.gather(*(c.round_trips(WARM_UP_ROUND_TRIPS) for c in clients))
        start = time.perf_counter()
        await asyncio.gather(*(c.round_trips(per_endpoint) for c in clients))
        return time.perf_counter() - start
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.sendto(GOODBYE)
                client.transport.close()
        closing = asyncio.gather(*(c.closed for c in clients))
        await bounded_close(closing, "client connection_lost after transport.close()", notes)


def measure(message_size: int, loop_name: str, size: int) -> Timing:
    per_endpoint = max(1, size // ENDPOINTS)
    message = b"x" * message_size
    return measure_against_server(
        __name__,
        [loop_name, str(ENDPOINTS)],
        f"datagram echo server on {loop_name}",
        loop_name,
        lambda port, notes: drive(port, message, per_endpoint, notes),
        per_endpoint * ENDPOINTS,
    )


def make_workload(message_size: int) -> Workload:
    round_trips = ROUND_TRIPS[message_size]
    return Workload(
        name=f"udp_echo_{message_size // 1024}k",
        unit="round trips",
        size=round_trips,
        quick_size=round_trips // QUICK_DIVISOR,
        measure=lambda loop_name, size: measure(message_size, loop_name, size),
        warm_up=False,
        pins_own_cpus=True,
        bytes_per_op=message_size,
    )


WORKLOADS = [make_workload(size) for size in ROUND_TRIPS]

if __name__ == "__main__":
    run_pinned_server(sys.argv[1], lambda: serve(int(sys.argv[2])))
