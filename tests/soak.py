"""Soaks: work that must leave the process as it found it — connection churn (clean close,
abort, reset by the peer, server-side abort, TLS), floods of callbacks and timers (half of
them cancelled), and a writer that ignores pause_writing against a peer that does not read.
Each returns what it did; the caller measures open fds and resident memory around it.

Used by tests/test_soak.py (short) and scripts/soak (long, with numbers).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
from collections.abc import Callable
from typing import Any

MODES = ("close", "abort", "reset", "server_abort", "tls")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts from the TLS tests' authority (trustme, the test extra)."""
    from tls_helpers import make_pki

    pki = make_pki()
    return pki.server_context(), pki.client_context()


class Echo(asyncio.Protocol):
    """Server side: echoes; the client's first byte may ask it to abort instead."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"!"):
            self.transport.abort()
        else:
            self.transport.write(data)


async def one_connection(mode: str, plain: Any, secure: Any, client_tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    if mode == "tls":
        reader, writer = await asyncio.open_connection(
            *secure.sockets[0].getsockname()[:2], ssl=client_tls, server_hostname="127.0.0.1"
        )
        writer.write(b"hello over tls")
        await reader.readexactly(14)
        writer.close()
        await writer.wait_closed()
        return
    host, port = plain.sockets[0].getsockname()[:2]
    if mode == "reset":  # a raw client that resets the connection once it is set up
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"x")
        await loop.sock_recv(sock, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        return
    reader, writer = await asyncio.open_connection(host, port)
    if mode == "server_abort":
        writer.write(b"!")
        await reader.read()  # EOF or reset
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
        return
    writer.write(b"ping")
    await reader.readexactly(4)
    if mode == "abort":
        writer.transport.abort()
    else:
        writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def churn(
    connections: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None, concurrency: int = 32, seed: int = 0
) -> dict[str, int]:
    """`connections` connections, `concurrency` at a time, modes mixed at random (TLS only
    with contexts)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    modes = MODES if tls is not None else MODES[:-1]
    plain = await loop.create_server(Echo, "127.0.0.1", 0)
    secure = await loop.create_server(Echo, "127.0.0.1", 0, ssl=tls[0]) if tls else None
    counts = dict.fromkeys(modes, 0)
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(mode: str) -> None:
        async with semaphore:
            await one_connection(mode, plain, secure, tls[1] if tls else None)

    try:
        batch = []
        for _ in range(connections):
            mode = rng.choice(modes)
            counts[mode] += 1
            batch.append(guarded(mode))
            if len(batch) >= 1000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
    finally:
        for server in (plain, secure):
            if server is not None:
                server.close()
                await server.wait_closed()
    await asyncio.sleep(0.05)  # let the last connection_lost callbacks run
    return counts


async def callbacks(count: int) -> int:
    """`count` call_soon callbacks, a tenth of them cancelled before they run."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    ran = 0

    def tick(remaining: int) -> None:
        nonlocal ran
        ran += 1
        if remaining == 0:
            done.set_result(None)
            return
        loop.call_soon(tick, remaining - 1)
        if remaining % 10 == 0:
            loop.call_soon(tick, -1).cancel()

    loop.call_soon(tick, count)
    await done
    return ran


async def timers(count: int, seed: int = 0) -> int:
    """`count` timers over the next 50 ms, half of them cancelled; waits for the rest."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    fired = 0

    def fire() -> None:
        nonlocal fired
        fired += 1

    for start in range(0, count, 10_000):
        handles = [loop.call_later(rng.random() * 0.05, fire) for _ in range(min(10_000, count - start))]
        for handle in handles[::2]:
            handle.cancel()
        await asyncio.sleep(0.06)
    return fired


async def ignored_backpressure(total: int) -> tuple[int, int]:
    """A writer that ignores pause_writing, against a peer that reads nothing until the end.
    Returns (bytes written, peak write buffer size)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    chunk = b"x" * 65536
    written = peak = 0
    while written < total:
        transport.write(chunk)
        written += len(chunk)
        peak = max(peak, transport.get_write_buffer_size())
    transport.abort()
    peer.close()
    await asyncio.sleep(0.01)
    return written, peak


def measured(run: Callable[[], Any]) -> dict[str, Any]:
    """Run `run()` and report fds and RSS before and after."""
    fds, rss = open_fds(), rss_bytes()
    result = run()
    return {"result": result, "fds": (fds, open_fds()), "rss": (rss, rss_bytes())}
