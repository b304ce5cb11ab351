"""A finished sock_recv leaves its socket registered for reading ("parked") so the next one
costs no epoll_ctl. These tests pin down that nothing observable changes: a closed socket's
number reused by another socket, a new socket object for the same fd, readers installed by
hand, data nobody asked for, and a socket dropped without close all behave as on the standard
loop."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import warnings
import weakref

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(30)  # a lost registration must fail fast, not hang

WAIT = 5.0  # seconds a read that should succeed may take before the test calls it lost


async def echo_once(loop: asyncio.AbstractEventLoop, sender: socket.socket, receiver: socket.socket) -> bytes:
    """A sock_recv that has to wait (the data is sent after it starts waiting)."""
    pending = asyncio.ensure_future(loop.sock_recv(receiver, 100))
    await asyncio.sleep(0.01)
    await loop.sock_sendall(sender, b"ping")
    return await asyncio.wait_for(pending, WAIT)


def socket_on_fd(fd: int) -> tuple[socket.socket, socket.socket]:
    """A new connected pair whose first socket has the number `fd` (free at the call)."""
    c, d = socket.socketpair()
    if d.fileno() == fd:
        c, d = d, c
    if c.fileno() != fd:
        os.dup2(c.fileno(), fd)
        moved = socket.socket(fileno=fd)
        c.close()
        c = moved
    c.setblocking(False)
    d.setblocking(False)
    return c, d


def test_a_closed_sockets_number_reused_by_another_socket_still_receives(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> list[bytes]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = [await echo_once(any_loop, b, a)]
        fd = a.fileno()
        a.close()  # the kernel forgets a's registration with the file
        c, d = socket_on_fd(fd)
        try:
            got.append(await echo_once(any_loop, d, c))
        finally:
            for s in (b, c, d):
                s.close()
        return got

    assert any_loop.run_until_complete(main()) == [b"ping", b"ping"]


def test_a_new_socket_object_for_the_same_fd_receives(any_loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> list[bytes]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = [await echo_once(any_loop, b, a)]
        same_file = socket.socket(fileno=a.detach())
        same_file.setblocking(False)
        try:
            got.append(await echo_once(any_loop, b, same_file))
        finally:
            same_file.close()
            b.close()
        return got

    assert any_loop.run_until_complete(main()) == [b"ping", b"ping"]


def test_a_reader_installed_by_hand_after_sock_recv_is_called(
    any_loop: asyncio.AbstractEventLoop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair

    async def main() -> tuple[bool, bytes, bool]:
        await echo_once(any_loop, b, a)
        removed_nothing = any_loop.remove_reader(a)  # sock_recv left no reader behind
        called = any_loop.create_future()
        any_loop.add_reader(a, lambda: called.done() or called.set_result(a.recv(100)))
        b.send(b"by hand")
        data = await asyncio.wait_for(called, WAIT)
        return removed_nothing, data, any_loop.remove_reader(a)

    assert any_loop.run_until_complete(main()) == (False, b"by hand", True)


def test_sock_recv_after_a_hand_installed_reader_was_removed(
    any_loop: asyncio.AbstractEventLoop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair

    async def main() -> list[bytes]:
        got = [await echo_once(any_loop, b, a)]
        any_loop.add_reader(a, lambda: None)
        any_loop.remove_reader(a)
        got.append(await echo_once(any_loop, b, a))
        got.append(await echo_once(any_loop, b, a))
        return got

    assert any_loop.run_until_complete(main()) == [b"ping"] * 3


def test_data_nobody_waits_for_does_not_keep_the_loop_spinning(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair

    async def main() -> tuple[int, bytes]:
        await echo_once(loop, b, a)
        b.send(b"unasked")  # a stays readable until someone reads it
        before = loop.stats()["iterations"]
        await asyncio.sleep(0.2)
        spent = loop.stats()["iterations"] - before
        return spent, await loop.sock_recv(a, 100)

    iterations, data = loop.run_until_complete(main())
    assert data == b"unasked"
    # A level-triggered registration nobody reads would wake every poll: thousands of
    # iterations in 0.2 s. The sleep itself needs a handful.
    assert iterations < 20


def test_the_stats_count_no_fd_for_a_finished_sock_recv(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    loop.run_until_complete(echo_once(loop, b, a))
    assert loop.stats()["fds_watched"] == 0
    assert not loop._has_watcher(a.fileno())


def test_a_socket_dropped_without_close_after_sock_recv_is_collected(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    any_loop.run_until_complete(echo_once(any_loop, b, a))
    fd = a.fileno()
    dropped = weakref.ref(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del a
        gc.collect()
    try:
        assert dropped() is None  # the loop kept no strong reference
        with pytest.raises(OSError):
            os.fstat(fd)  # and the socket's finalizer closed the fd
    finally:
        b.close()


def test_many_round_trips_then_close_leave_no_watcher(loop: ferroloop.Loop) -> None:
    async def main() -> int:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        rounds = 0
        for _ in range(50):
            await loop.sock_sendall(b, b"x")
            assert await loop.sock_recv(a, 10) == b"x"
            pending = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            await loop.sock_sendall(b, b"y")
            assert await pending == b"y"
            rounds += 1
        a.close()
        b.close()
        return rounds

    assert loop.run_until_complete(main()) == 50
    assert loop.stats()["fds_watched"] == 0
