"""An fd number outlives the object that owned it: a watcher or a transport whose socket was
closed behind the loop's back must never act on the file that reuses the number next (one
connection's bytes delivered to another), on both loops."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(30)


async def banner_server(loop: asyncio.AbstractEventLoop, banner: bytes) -> tuple[socket.socket, Any]:
    """A listening socket whose first client is sent `banner`; returns it and the serving task."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)

    async def serve() -> bytes:
        conn, _ = await loop.sock_accept(srv)
        with conn:
            await loop.sock_sendall(conn, banner)
            received = b""
            while chunk := await loop.sock_recv(conn, 1024):
                received += chunk
            return received

    return srv, loop.create_task(serve())


def test_a_waiting_sock_recv_never_reads_the_next_owner_of_its_fd(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv, serving = await banner_server(loop, b"BANNER-FOR-B")
        a, a_peer = socket.socketpair()
        a.setblocking(False)
        stale_fd = a.fileno()
        recv_a = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        a.close()  # behind the loop's back: its reader is still installed
        b = socket.socket()
        b.setblocking(False)
        assert b.fileno() == stale_fd  # Linux hands out the lowest free number
        # The stale entry cannot be re-armed for b: the standard loop raises and unregisters.
        with pytest.raises(FileNotFoundError):
            await loop.sock_connect(b, srv.getsockname())
        await asyncio.sleep(0.05)  # the connect completes in the background
        data = await asyncio.wait_for(loop.sock_recv(b, 100), 5)
        assert data == b"BANNER-FOR-B"
        assert not recv_a.done()  # a's waiter never saw b's bytes
        recv_a.cancel()
        b.close()
        a_peer.close()
        srv.close()
        await serving

    any_loop.run_until_complete(main())


def test_transport_write_after_the_app_closed_its_socket_fails_with_ebadf(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    events: list[Any] = []

    class Recorder(asyncio.Protocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            events.append(("lost", type(exc), getattr(exc, "errno", None)))

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        srv, serving = await banner_server(loop, b"")
        a, a_peer = socket.socketpair()
        transport, _ = await loop.create_connection(Recorder, sock=a)
        stale_fd = a.fileno()
        await asyncio.sleep(0)
        a.close()  # the application closes the socket it handed over
        b = socket.socket()
        assert b.fileno() == stale_fd
        b.connect(srv.getsockname())  # blocking: the fd is still the transport's to the loop
        transport.write(b"FOR-A-ONLY")
        await asyncio.sleep(0.05)
        b.close()
        a_peer.close()
        srv.close()
        return await serving

    assert any_loop.run_until_complete(main()) == b""
    assert events == [("lost", OSError, 9)]


def test_a_registration_that_outlives_its_fd_does_not_spin_the_loop(loop: ferroloop.Loop) -> None:
    # The reader's fd is dup'ed, then closed and removed: epoll keeps the registration for the
    # dup's file (EPOLL_CTL_DEL fails with EBADF) and reports it forever. ferroloop rebuilds its
    # epoll set when that happens; the standard loop ignores the event on every iteration and
    # spins at full CPU (asyncio's own limitation, so this test runs on ferroloop only).
    r, w = os.pipe()
    survivor = os.dup(r)
    try:
        loop.add_reader(r, lambda: None)
        os.write(w, b"x")  # level-triggered readiness that nobody consumes
        os.close(r)
        assert loop.remove_reader(r)

        async def idle() -> None:
            for _ in range(20):
                await asyncio.sleep(0.01)

        loop.run_until_complete(idle())
        start = time.process_time()
        loop.run_until_complete(asyncio.sleep(0.2))
        cpu = time.process_time() - start
    finally:
        os.close(survivor)
        os.close(w)
    assert cpu < 0.1, f"the loop spun for {cpu:.2f}s of CPU while idle for 0.2s"


def test_pipe_transport_closes_quietly_after_a_regular_file_took_its_fd(
    any_loop: asyncio.AbstractEventLoop, tmp_path: Any
) -> None:
    """The application closed the pipe it passed and a regular file took the number: the
    transport's abort cannot unregister it from epoll (EPERM), which is not an error — the
    standard library's selector ignores it."""

    async def scenario() -> bool:
        read_fd, write_fd = os.pipe()
        pipe = os.fdopen(write_fd, "wb", 0)
        transport, _ = await any_loop.connect_write_pipe(asyncio.Protocol, pipe)
        pipe.close()
        stranger = os.open(tmp_path / "stranger", os.O_WRONLY | os.O_CREAT)
        try:
            assert stranger == write_fd  # the number was reused
            transport.abort()  # raised PermissionError on ferroloop
            await asyncio.sleep(0)
            return transport.is_closing()
        finally:
            os.close(stranger)
            os.close(read_fd)

    assert any_loop.run_until_complete(scenario())
