"""File-descriptor watchers: add_reader, remove_reader, add_writer, remove_writer on real pipes
and sockets, for objects with fileno() and int fds, returning the stdlib's booleans."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        yield read_fd, write_fd
    finally:
        for fd in (read_fd, write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def run_for(event_loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    event_loop.call_later(seconds, event_loop.stop)
    event_loop.run_forever()


class FileLike:
    """Any object with fileno() can be watched."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


# -- readers ----------------------------------------------------------------------------------


def test_reader_on_a_pipe_fires_when_data_arrives(loop: ferroloop.Loop, pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    chunks: list[bytes] = []

    def on_readable(tag: str) -> None:
        chunks.append(os.read(read_fd, 100))
        if b"".join(chunks) == b"hello world":
            loop.stop()

    assert loop.add_reader(read_fd, on_readable, "pipe") is None
    loop.call_later(0.01, os.write, write_fd, b"hello ")
    loop.call_later(0.02, os.write, write_fd, b"world")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert b"".join(chunks) == b"hello world"
    assert loop.remove_reader(read_fd) is True


def test_reader_with_a_socket_object_and_arguments(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    received: list[tuple[bytes, str, int]] = []

    def on_readable(tag: str, number: int) -> None:
        received.append((a.recv(100), tag, number))
        loop.stop()

    loop.add_reader(a, on_readable, "tag", 7)
    b.send(b"ping")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert received == [(b"ping", "tag", 7)]
    assert loop.remove_reader(a) is True


def test_reader_with_an_object_that_has_fileno(loop: ferroloop.Loop, pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    fired: list[bool] = []
    watched = FileLike(read_fd)
    loop.add_reader(watched, lambda: (fired.append(True), loop.remove_reader(watched)))
    os.write(write_fd, b"x")
    run_for(loop, 0.02)
    assert fired == [True]


def test_a_reader_keeps_firing_while_data_is_unread(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    count = 0

    def on_readable() -> None:
        nonlocal count
        count += 1
        if count == 3:
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"never read")
    run_for(loop, 0.02)
    assert count == 3


def test_reader_sees_eof_when_the_peer_closes(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    got: list[bytes] = []

    def on_readable() -> None:
        got.append(a.recv(10))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.close()
    run_for(loop, 0.02)
    assert got == [b""]


def test_adding_a_reader_again_replaces_the_callback(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    calls: list[str] = []

    def make(tag: str) -> Any:
        def on_readable() -> None:
            calls.append(tag)
            a.recv(10)

        return on_readable

    loop.add_reader(a, make("first"))
    loop.add_reader(a.fileno(), make("second"))
    b.send(b"x")
    run_for(loop, 0.02)
    assert calls == ["second"]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_a_reader_removed_before_it_runs_does_not_run(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    # Both sockets become readable in the same iteration; the first callback removes the
    # second watcher, whose callback must then not run.
    a, b = socket_pair
    c, d = socket.socketpair()
    calls: list[str] = []
    try:

        def first() -> None:
            calls.append("first")
            loop.remove_reader(a)
            loop.remove_reader(c)

        def second() -> None:
            calls.append("second")
            loop.remove_reader(a)
            loop.remove_reader(c)

        loop.add_reader(a, first)
        loop.add_reader(c, second)
        b.send(b"x")
        d.send(b"x")
        run_for(loop, 0.02)
    finally:
        c.close()
        d.close()
    assert calls in (["first"], ["second"])


# -- writers ----------------------------------------------------------------------------------


def test_writer_fires_when_writable(loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = socket_pair
    calls: list[str] = []

    def on_writable(tag: str) -> None:
        calls.append(tag)
        a.send(b"written")
        loop.remove_writer(a)

    assert loop.add_writer(a, on_writable, "w") is None
    run_for(loop, 0.02)
    assert calls == ["w"]
    assert b.recv(100) == b"written"
    assert loop.remove_writer(a) is False


def test_writer_waits_until_a_full_pipe_drains(loop: ferroloop.Loop, pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    written = 0
    try:
        while True:
            written += os.write(write_fd, b"x" * 65536)
    except BlockingIOError:
        pass
    fired: list[float] = []

    def on_writable() -> None:
        fired.append(loop.time())
        loop.remove_writer(write_fd)

    loop.add_writer(write_fd, on_writable)
    run_for(loop, 0.02)
    assert fired == []  # still full
    drained_at = loop.time()
    while written > 0:
        written -= len(os.read(read_fd, 65536))
    run_for(loop, 0.02)
    assert len(fired) == 1 and fired[0] >= drained_at


def test_reader_and_writer_on_the_same_fd_are_independent(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    calls: list[str] = []

    def on_writable() -> None:
        calls.append("writable")
        loop.remove_writer(a)

    def on_readable() -> None:
        calls.append("readable")
        a.recv(10)
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    b.send(b"x")
    run_for(loop, 0.02)
    assert sorted(calls) == ["readable", "writable"]
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_removing_the_writer_keeps_the_reader(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    calls: list[str] = []
    loop.add_reader(a, lambda: (calls.append("read"), a.recv(10), loop.remove_reader(a)))
    loop.add_writer(a, lambda: calls.append("write"))
    assert loop.remove_writer(a) is True
    b.send(b"x")
    run_for(loop, 0.02)
    assert calls == ["read"]


# -- removal semantics and bad inputs ---------------------------------------------------------


def removal_results(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
    a, b = socket.socketpair()
    try:
        results = [
            event_loop.remove_reader(a),  # never added
            event_loop.remove_writer(a),
            event_loop.remove_reader(a.fileno() + 1000),  # an fd that is not even open
        ]
        event_loop.add_reader(a, print)
        results += [event_loop.remove_writer(a), event_loop.remove_reader(a), event_loop.remove_reader(a)]
        event_loop.add_writer(a.fileno(), print)
        results += [event_loop.remove_writer(a), event_loop.remove_writer(a.fileno())]
        # Closing the socket makes fileno() -1; the watcher is still found by its object.
        event_loop.add_reader(a, print)
        a.close()
        results += [event_loop.remove_reader(a)]
    finally:
        a.close()
        b.close()
    return results


def test_remove_returns_the_stdlib_booleans() -> None:
    stdlib, ours = on_both_loops(removal_results)
    assert ours == stdlib
    assert ours[:3] == [False, False, False]


@pytest.mark.parametrize(
    "fileobj",
    ["not a file", -1, 1.5, None, FileLike(-5), object()],
    ids=["str", "negative", "float", "None", "negative-fileno", "object"],
)
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_bad_file_objects_raise_like_the_stdlib(method: str, fileobj: Any) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        call = getattr(event_loop, method)
        return outcome(lambda: call(fileobj, print) if method.startswith("add") else call(fileobj))

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours == ("raised", ValueError)


def test_add_reader_on_a_closed_fd_raises_os_error_with_errno(loop: ferroloop.Loop) -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)
    with pytest.raises(OSError) as info:
        loop.add_reader(read_fd, print)
    assert info.value.errno == errno.EBADF
    assert loop.remove_reader(read_fd) is False


def test_watchers_on_a_closed_loop(loop: ferroloop.Loop, pipe: tuple[int, int]) -> None:
    read_fd, _ = pipe
    loop.add_reader(read_fd, print)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(read_fd, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_writer(read_fd, print)
    assert loop.remove_reader(read_fd) is False
    assert loop.remove_writer(read_fd) is False


def test_a_reader_callback_that_raises_does_not_stop_the_loop(
    loop: ferroloop.Loop, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socket_pair
    errors: list[BaseException] = []
    calls: list[str] = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["exception"]))

    def on_readable() -> None:
        a.recv(10)
        raise ValueError("reader failed")

    loop.add_reader(a, on_readable)
    b.send(b"1")
    loop.call_later(0.01, calls.append, "timer still runs")
    run_for(loop, 0.02)
    assert calls == ["timer still runs"]
    assert [type(e) for e in errors] == [ValueError]


def test_many_watchers(loop: ferroloop.Loop) -> None:
    pairs = [socket.socketpair() for _ in range(100)]
    fired: set[int] = set()
    try:
        for i, (a, _b) in enumerate(pairs):
            a.setblocking(False)

            def on_readable(i: int = i, a: socket.socket = a) -> None:
                a.recv(10)
                fired.add(i)
                loop.remove_reader(a)
                if len(fired) == len(pairs):
                    loop.stop()

            loop.add_reader(a, on_readable)
        for _, b in pairs:
            b.send(b"x")
        loop.call_later(5, loop.stop)
        loop.run_forever()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert fired == set(range(100))


def test_close_releases_watchers_without_closing_the_fds(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    event_loop = ferroloop.new_event_loop()
    event_loop.add_reader(read_fd, print)
    event_loop.add_writer(write_fd, print)
    event_loop.close()
    os.write(write_fd, b"still open")
    assert os.read(read_fd, 100) == b"still open"
