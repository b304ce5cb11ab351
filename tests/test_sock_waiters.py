"""The sock_* operations that wait through a `SockWaiter` (sock_sendall, sock_sendto,
sock_recv_into, sock_recvfrom(_into), sock_accept, sock_connect), end to end on loopback and
on both loops: partial sends to a slow reader, a peer that resets mid-send, many accepts on one
listener, refused and resolved connects, and the closed-loop and wrong-socket errors of the
waiting path."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite

DATA = bytes(i % 251 for i in range(8 * 1024 * 1024))  # many socket buffers' worth


def test_sendall_to_a_slow_reader_delivers_every_byte_in_order(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # many partial sends

    async def slow_reader() -> bytes:
        received = bytearray()
        while chunk := await any_loop.sock_recv(server, 4096):
            received += chunk
            if len(received) % 65536 < 4096:
                await asyncio.sleep(0)  # let the writer see the buffer fill up again
        return bytes(received)

    async def main() -> bytes:
        reader = asyncio.ensure_future(slow_reader())
        await any_loop.sock_sendall(client, memoryview(DATA))
        client.shutdown(socket.SHUT_WR)
        return await reader

    assert any_loop.run_until_complete(main()) == DATA


def test_sendall_to_a_peer_that_resets_raises_its_error(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> BaseException:
        pending = asyncio.ensure_future(any_loop.sock_sendall(client, DATA))
        await asyncio.sleep(0.05)
        assert not pending.done()  # waiting for the peer to read
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        server.close()  # unread data + linger 0: the peer resets
        with pytest.raises(OSError) as caught:
            await asyncio.wait_for(pending, 5)
        return caught.value

    exc = any_loop.run_until_complete(main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert exc.errno in (errno.ECONNRESET, errno.EPIPE)


def test_the_watcher_of_a_cancelled_sendall_is_gone(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> None:
        pending = asyncio.ensure_future(loop.sock_sendall(client, DATA))
        await asyncio.sleep(0.02)
        assert loop._has_watcher(client.fileno(), True)
        pending.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the coroutine's `finally` runs when its task next steps
        assert not loop._has_watcher(client.fileno(), True)

    loop.run_until_complete(main())


def test_accept_many_connections_on_one_listener(any_loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    count = 100

    async def main() -> None:
        clients: list[socket.socket] = []
        try:
            for i in range(count):
                if i % 2:  # half arrive while sock_accept waits, half before it is called
                    accepting = asyncio.ensure_future(any_loop.sock_accept(listener))
                    await asyncio.sleep(0)
                    clients.append(socket.create_connection(listener.getsockname()))
                    conn, address = await accepting
                else:
                    clients.append(socket.create_connection(listener.getsockname()))
                    conn, address = await any_loop.sock_accept(listener)
                with conn:
                    assert conn.gettimeout() == 0
                    assert address == clients[-1].getsockname()
                    clients[-1].sendall(i.to_bytes(2, "big"))
                    assert await any_loop.sock_recv(conn, 2) == i.to_bytes(2, "big")
        finally:
            for client in clients:
                client.close()

    any_loop.run_until_complete(main())


def test_connect_refused_raises_connection_refused_with_errno() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()  # closed when the block ends: nobody listens there

    def scenario(event_loop: asyncio.AbstractEventLoop) -> tuple[type, int | None, str]:
        with socket.socket() as client:
            client.setblocking(False)
            try:
                event_loop.run_until_complete(event_loop.sock_connect(client, address))
            except OSError as exc:
                return type(exc), exc.errno, str(exc)
        raise AssertionError("connected to a closed port")

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[:2] == (ConnectionRefusedError, errno.ECONNREFUSED)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_connect_resolves_only_host_names_through_getaddrinfo(listener: socket.socket, host: str) -> None:
    port = listener.getsockname()[1]

    def scenario(event_loop: asyncio.AbstractEventLoop) -> tuple[list[Any], tuple[str, int]]:
        looked_up: list[Any] = []
        real_getaddrinfo = event_loop.getaddrinfo

        async def recording_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
            looked_up.append(args[0])
            return await real_getaddrinfo(*args, **kwargs)

        event_loop.getaddrinfo = recording_getaddrinfo  # type: ignore[method-assign]

        async def main() -> tuple[str, int]:
            with socket.socket() as client:
                client.setblocking(False)
                await event_loop.sock_connect(client, (host, port))
                conn, _ = await event_loop.sock_accept(listener)
                conn.close()
                peer: tuple[str, int] = client.getpeername()
                return peer

        return looked_up, event_loop.run_until_complete(main())

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours == (["localhost"] if host == "localhost" else [], ("127.0.0.1", port))


def test_connect_on_a_unix_socket_takes_the_path_as_it_is(tmp_path: Any) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> bytes:
        path = str(tmp_path / f"{type(event_loop).__name__}.sock")
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen()
            server.setblocking(False)
            client.setblocking(False)

            async def main() -> bytes:
                await event_loop.sock_connect(client, path)
                conn, _ = await event_loop.sock_accept(server)
                with conn:
                    await event_loop.sock_sendall(client, b"unix")
                    return await event_loop.sock_recv(conn, 10)

            return event_loop.run_until_complete(main())

    assert on_both_loops(scenario) == (b"unix", b"unix")


# Operations that have to wait, each with what makes it wait; on a closed loop the standard loop
# refuses to install the watcher with RuntimeError.
WAITING_OPS: dict[
    str, Callable[[asyncio.AbstractEventLoop, socket.socket, socket.socket], Coroutine[Any, Any, Any]]
] = {
    "sock_sendall": lambda lp, a, b: lp.sock_sendall(a, DATA),
    "sock_recv_into": lambda lp, a, b: lp.sock_recv_into(a, bytearray(10)),
    "sock_recvfrom": lambda lp, a, b: lp.sock_recvfrom(a, 10),
    "sock_recvfrom_into": lambda lp, a, b: lp.sock_recvfrom_into(a, bytearray(10)),
}


@pytest.mark.parametrize("operation", sorted(WAITING_OPS))
def test_a_waiting_operation_on_a_closed_loop_raises_runtime_error(operation: str) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> tuple[type, str]:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            event_loop.close()
            coro = WAITING_OPS[operation](event_loop, a, b)
            try:
                coro.send(None)
            except RuntimeError as exc:
                return type(exc), str(exc)
            finally:
                coro.close()
        raise AssertionError("the operation did not refuse")

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == (RuntimeError, "Event loop is closed")


def test_accept_and_connect_on_a_closed_loop_raise_runtime_error(listener: socket.socket) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[str]:
        event_loop.close()
        errors = []
        with socket.socket() as client:
            client.setblocking(False)
            for coro in (event_loop.sock_accept(listener), event_loop.sock_connect(client, ("10.255.255.1", 9))):
                try:
                    coro.send(None)
                except RuntimeError as exc:
                    errors.append(str(exc))
                finally:
                    coro.close()
        return errors

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == ["Event loop is closed", "Event loop is closed"]


def test_udp_sendto_and_recvfrom_that_wait(any_loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

        async def main() -> tuple[tuple[bytes, Any], tuple[int, Any], bytes]:
            first = asyncio.ensure_future(any_loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert await any_loop.sock_sendto(a, b"one", b.getsockname()) == 3
            received = await asyncio.wait_for(first, 5)
            buf = bytearray(100)
            second = asyncio.ensure_future(any_loop.sock_recvfrom_into(b, buf, 4))
            await asyncio.sleep(0.01)
            await any_loop.sock_sendto(a, b"two-truncated", b.getsockname())
            into = await asyncio.wait_for(second, 5)
            return received, into, bytes(buf[:4])

        received, into, data = any_loop.run_until_complete(main())
        assert received == (b"one", a.getsockname())
        assert into == (4, a.getsockname())
        assert data == b"two-"


def test_bytes_moved_by_waiting_operations_are_counted(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    payload = DATA[:1_000_000]

    async def main() -> None:
        buf = bytearray(65536)
        got = 0
        sending = asyncio.ensure_future(loop.sock_sendall(client, payload))
        while got < len(payload):
            got += await loop.sock_recv_into(server, buf)
        await sending

    before = loop.stats()
    loop.run_until_complete(main())
    after = loop.stats()
    assert after["bytes_written"] - before["bytes_written"] == len(payload)
    assert after["bytes_read"] - before["bytes_read"] == len(payload)


def test_a_bytearray_is_released_once_its_sendall_returned(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    # The waiting send holds the buffer (a resize meanwhile would raise BufferError, as with
    # the standard loop's memoryview); once sock_sendall has returned the data is the caller's.
    client, server = tcp_pair
    data = bytearray(DATA)

    async def main() -> int:
        async def drain() -> int:
            received = 0
            while received < len(DATA):
                received += len(await any_loop.sock_recv(server, 65536))
            return received

        reader = asyncio.ensure_future(drain())
        await any_loop.sock_sendall(client, data)
        data.extend(b"more")
        return await reader

    assert any_loop.run_until_complete(main()) == len(DATA)
    assert len(data) == len(DATA) + 4


BAD_ARGUMENTS: dict[str, Callable[[asyncio.AbstractEventLoop, socket.socket], Coroutine[Any, Any, Any]]] = {
    "sock_recv": lambda lp, s: lp.sock_recv(s, "ten"),  # type: ignore[arg-type]
    "sock_recv_into": lambda lp, s: lp.sock_recv_into(s, 10),
    "sock_recvfrom_into": lambda lp, s: lp.sock_recvfrom_into(s, 10),
    "sock_sendall": lambda lp, s: lp.sock_sendall(s, 10),
}


@pytest.mark.parametrize("operation", sorted(BAD_ARGUMENTS))
def test_a_blocking_socket_is_refused_before_a_bad_argument(operation: str) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> str:
        event_loop.set_debug(True)
        with socket.socket() as sock:  # blocking
            try:
                event_loop.run_until_complete(BAD_ARGUMENTS[operation](event_loop, sock))
            except Exception as exc:
                return type(exc).__name__
        raise AssertionError("nothing was refused")

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == "ValueError"


@pytest.mark.parametrize("operation", ["sock_accept", "sock_recv", "sock_recv_into"])
def test_a_cancelled_wait_leaves_no_reader_and_the_next_one_works(
    loop: ferroloop.Loop, listener: socket.socket, operation: str
) -> None:
    async def main() -> None:
        with socket.create_connection(listener.getsockname()) as peer:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                sock = listener if operation == "sock_accept" else conn
                waits: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
                    "sock_accept": lambda: loop.sock_accept(listener),
                    "sock_recv": lambda: loop.sock_recv(conn, 10),
                    "sock_recv_into": lambda: loop.sock_recv_into(conn, bytearray(10)),
                }
                pending = asyncio.ensure_future(waits[operation]())
                await asyncio.sleep(0.01)
                assert loop._has_watcher(sock.fileno())
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
                assert not loop._has_watcher(sock.fileno())
                again = asyncio.ensure_future(waits[operation]())
                await asyncio.sleep(0.01)
                if operation == "sock_accept":
                    with socket.create_connection(listener.getsockname()):
                        accepted, _ = await asyncio.wait_for(again, 5)
                        accepted.close()
                else:
                    peer.sendall(b"after")
                    result = await asyncio.wait_for(again, 5)
                    assert result in (b"after", 5)

    loop.run_until_complete(main())
