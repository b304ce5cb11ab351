"""connect_read_pipe / connect_write_pipe and the pipe transports' public API, on pipes, FIFOs,
sockets, ptys and character devices, as the standard library defines them.

Every test runs on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions, so a difference between the two fails on ferroloop only. The far end of each pipe
is a plain file descriptor, read or written directly, so what crosses it is checked
independently of the transport under test."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import logging
import os
import socket
import stat
import warnings
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferro_helpers import on_both_loops

pytestmark = pytest.mark.timeout(30)

BIG = hashlib.sha256(b"pipes").digest() * (1 << 15)  # 1 MiB: far beyond a pipe's 64 KiB buffer


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 10))


class Recorder(asyncio.Protocol):
    """Records every protocol call in order; `lost` resolves with connection_lost's argument."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.Event()
        self.resumed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.calls[-1] != "data_received":  # one entry per run of reads
            self.calls.append("data_received")
        assert isinstance(data, bytes)
        self.data += data
        self.got_data.set()

    def eof_received(self) -> None:
        self.calls.append("eof_received")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost.set_result(exc)


@pytest.fixture
def pipe_fds() -> Iterator[tuple[int, int]]:
    """A pipe's two ends. Whichever end a test has not closed or handed over (to a transport
    that closes it) is closed afterwards; a number already reused by another file is left."""
    fds = os.pipe()
    inode = os.fstat(fds[0]).st_ino
    yield fds
    for fd in fds:
        try:
            if os.fstat(fd).st_ino == inode:
                os.close(fd)
        except OSError:
            pass  # closed already


def read_all(fd: int) -> bytes:
    """Everything a pipe's read end holds until EOF (the writer is closed)."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def spin(iterations: int = 5) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


# -- read pipes ------------------------------------------------------------------------------


def test_read_pipe_delivers_data_then_eof_then_connection_lost(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds
    pipe = open(read_fd, "rb", buffering=0)

    async def scenario() -> None:
        transport, proto = await any_loop.connect_read_pipe(Recorder, pipe)
        assert isinstance(transport, asyncio.ReadTransport)
        assert transport.get_extra_info("pipe") is pipe
        assert transport.get_extra_info("nonexistent", "default") == "default"
        assert transport.is_reading()
        os.write(write_fd, b"hello ")
        await proto.got_data.wait()
        os.write(write_fd, b"pipe")
        os.close(write_fd)
        assert await proto.lost is None
        assert proto.calls == ["connection_made", "data_received", "eof_received", "connection_lost"]
        assert bytes(proto.data) == b"hello pipe"
        assert transport.is_closing()
        assert not transport.is_reading()
        assert pipe.closed  # the transport owns the pipe object it was given

    run(any_loop, scenario())


def test_pause_reading_holds_data_until_resume(any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> None:
        transport, proto = await any_loop.connect_read_pipe(Recorder, open(read_fd, "rb"))
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        transport.pause_reading()  # pausing a paused transport is a no-op
        assert not transport.is_reading()
        os.write(write_fd, b"held")
        await spin()
        assert proto.data == b""
        transport.resume_reading()
        transport.resume_reading()  # and so is resuming a reading one
        assert transport.is_reading()
        await proto.got_data.wait()
        assert proto.data == b"held"
        transport.close()
        assert await proto.lost is None
        assert not transport.is_reading()
        transport.pause_reading()  # on a closed transport: no-ops too
        transport.resume_reading()

    run(any_loop, scenario())


def test_pausing_and_resuming_reading_is_logged_in_debug_mode(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_fd, _ = pipe_fds
    any_loop.set_debug(True)

    async def scenario() -> None:
        transport, proto = await any_loop.connect_read_pipe(Recorder, open(read_fd, "rb"))
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            transport.pause_reading()
            transport.resume_reading()
        transport.close()
        assert await proto.lost is None

    run(any_loop, scenario())
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.endswith("pauses reading") for m in messages), messages
    assert any(m.endswith("resumes reading") for m in messages), messages


def test_closing_a_read_pipe_closes_the_pipe_once(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds
    pipe = open(os.dup(read_fd), "rb", buffering=0)

    async def scenario() -> None:
        transport, proto = await any_loop.connect_read_pipe(Recorder, pipe)
        transport.close()
        assert transport.is_closing()
        transport.close()  # twice: still one connection_lost
        assert await proto.lost is None
        await spin()
        assert proto.calls == ["connection_made", "connection_lost"]
        assert pipe.closed
        os.write(write_fd, b"nobody listens")  # the original read end stays open

    run(any_loop, scenario())


# -- write pipes -----------------------------------------------------------------------------


def test_write_writelines_and_write_eof(any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]) -> None:
    read_fd, write_fd = pipe_fds
    pipe = open(write_fd, "wb", buffering=0)

    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, pipe)
        assert isinstance(transport, asyncio.WriteTransport)
        assert transport.get_extra_info("pipe") is pipe
        assert transport.can_write_eof()
        transport.write(b"a")
        transport.write(b"")  # nothing to send: no-op
        transport.writelines([b"b", bytearray(b"c"), memoryview(b"d")])
        transport.write_eof()
        assert transport.is_closing()
        assert await proto.lost is None
        assert proto.calls == ["connection_made", "connection_lost"]

    run(any_loop, scenario())
    assert read_all(read_fd) == b"abcd"


def test_writelines_with_a_non_bytes_item_raises_type_error_and_writes_nothing(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb", buffering=0))
        assert isinstance(transport, asyncio.WriteTransport)
        with pytest.raises(TypeError, match="sequence item 1: expected a bytes-like object, str found"):
            transport.writelines([b"a", "x"])  # type: ignore[list-item]
        transport.writelines([])  # nothing to send: no-op
        transport.writelines([b"b", b"", memoryview(b"c")])
        transport.close()
        assert await proto.lost is None

    run(any_loop, scenario())
    assert read_all(read_fd) == b"bc"


def test_write_buffer_limits_pause_and_resume_writing(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> bytes:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb"))
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(high=64 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        transport.write(BIG)  # the pipe takes 64 KiB; the rest waits in the buffer
        assert proto.calls == ["connection_made", "pause_writing"]
        assert transport.get_write_buffer_size() > 64 * 1024
        _, reader = await any_loop.connect_read_pipe(Recorder, open(read_fd, "rb"))
        await proto.resumed.wait()
        assert transport.get_write_buffer_size() <= 16 * 1024
        transport.close()  # sends what is buffered first, then closes the write end
        assert await proto.lost is None
        assert proto.calls == ["connection_made", "pause_writing", "resume_writing", "connection_lost"]
        assert await reader.lost is None
        return bytes(reader.data)

    assert run(any_loop, scenario()) == BIG


def test_abort_drops_what_is_buffered(any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb"))
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BIG)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert await proto.lost is None

    run(any_loop, scenario())
    assert len(read_all(read_fd)) < len(BIG)


def test_writing_after_the_reader_closed_loses_the_connection_with_broken_pipe(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb"))
        os.close(read_fd)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"into the void")
        assert isinstance(await proto.lost, BrokenPipeError)

    run(any_loop, scenario())


@pytest.mark.parametrize("buffered", [False, True], ids=["idle", "buffered"])
def test_reader_closing_is_noticed_by_an_idle_or_buffering_writer(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int], buffered: bool
) -> None:
    # The write transport watches its own end for the reader going away: a clean close when
    # nothing was waiting to be sent, BrokenPipeError when something was.
    read_fd, write_fd = pipe_fds

    async def scenario() -> BaseException | None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb"))
        assert isinstance(transport, asyncio.WriteTransport)
        if buffered:
            transport.write(BIG)
            assert transport.get_write_buffer_size() > 0
        os.close(read_fd)
        return await proto.lost

    lost_with = run(any_loop, scenario())
    assert isinstance(lost_with, BrokenPipeError) if buffered else lost_with is None


# -- other kinds of file ---------------------------------------------------------------------


def test_fifo_carries_a_megabyte_both_ways(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read_end = open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
    write_end = open(fifo, "wb", buffering=0)

    async def scenario() -> bytes:
        _, reader = await any_loop.connect_read_pipe(Recorder, read_end)
        writer_transport, writer = await any_loop.connect_write_pipe(Recorder, write_end)
        assert isinstance(writer_transport, asyncio.WriteTransport)
        writer_transport.write(BIG)
        writer_transport.write_eof()
        assert await writer.lost is None
        assert await reader.lost is None
        assert reader.calls[-2:] == ["eof_received", "connection_lost"]
        return bytes(reader.data)

    assert run(any_loop, scenario()) == BIG


def test_sockets_work_as_pipes(any_loop: asyncio.AbstractEventLoop) -> None:
    left, right = socket.socketpair()

    async def scenario() -> bytes:
        writer_transport, writer = await any_loop.connect_write_pipe(Recorder, left)
        _, reader = await any_loop.connect_read_pipe(Recorder, right)
        assert isinstance(writer_transport, asyncio.WriteTransport)
        assert writer_transport.get_extra_info("pipe") is left
        writer_transport.write(BIG)
        writer_transport.write_eof()  # closes the socket: the reader sees EOF
        assert await writer.lost is None
        assert await reader.lost is None
        assert left.fileno() == -1 and right.fileno() == -1
        return bytes(reader.data)

    assert run(any_loop, scenario()) == BIG


def test_pty_reads_and_writes(any_loop: asyncio.AbstractEventLoop) -> None:
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line discipline: bytes pass unchanged
    master_file = open(master, "rb", buffering=0)
    slave_file = open(slave, "wb", buffering=0)
    assert stat.S_ISCHR(os.fstat(slave).st_mode)

    async def scenario() -> bytes:
        _, reader = await any_loop.connect_read_pipe(Recorder, master_file)
        writer_transport, writer = await any_loop.connect_write_pipe(Recorder, slave_file)
        assert isinstance(writer_transport, asyncio.WriteTransport)
        writer_transport.write(b"through a terminal")
        while len(reader.data) < len(b"through a terminal"):
            reader.got_data.clear()
            await reader.got_data.wait()
        writer_transport.close()
        assert await writer.lost is None
        # With the slave side gone, reading the master fails with EIO: connection_lost gets
        # it, and the exception handler is not called (a hung-up terminal is no error).
        lost_with = await reader.lost
        assert isinstance(lost_with, OSError) and lost_with.errno == errno.EIO
        return bytes(reader.data)

    assert run(any_loop, scenario()) == b"through a terminal"


def test_writing_to_a_character_device(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open("/dev/null", "wb", buffering=0))
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BIG)
        assert transport.get_write_buffer_size() == 0
        transport.write_eof()
        assert await proto.lost is None

    run(any_loop, scenario())


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_reading_a_device_epoll_refuses_fails_as_the_stdlib_does(device: str) -> None:
    # epoll refuses these devices (EPERM): connect_read_pipe accepts the character device and
    # returns, and the registration it scheduled fails in the loop's exception handler.
    def snippet(event_loop: asyncio.AbstractEventLoop) -> list[tuple[type, int | None]]:
        errors: list[BaseException | None] = []
        event_loop.set_exception_handler(lambda _, context: errors.append(context.get("exception")))

        async def scenario() -> None:
            transport, _ = await event_loop.connect_read_pipe(Recorder, open(device, "rb", buffering=0))
            assert isinstance(transport, asyncio.ReadTransport)
            await spin()
            transport.close()
            await spin()

        run(event_loop, scenario())
        return [(type(e), getattr(e, "errno", None)) for e in errors]

    stdlib, ferro = on_both_loops(snippet)
    assert ferro == stdlib
    assert stdlib == [(PermissionError, errno.EPERM)]


@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_regular_files_are_refused_as_the_stdlib_does(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"not a pipe")

    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[type, str, bool]:
        with open(path, mode, buffering=0) as regular:
            connect = event_loop.connect_read_pipe if mode == "rb" else event_loop.connect_write_pipe
            with pytest.raises(ValueError) as refused:
                run(event_loop, connect(asyncio.Protocol, regular))
            return refused.type, str(refused.value), regular.closed

    stdlib, ferro = on_both_loops(snippet)
    assert ferro == stdlib


def test_writes_to_a_closing_transport_are_dropped(
    any_loop: asyncio.AbstractEventLoop, pipe_fds: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe_fds

    async def scenario() -> None:
        transport, proto = await any_loop.connect_write_pipe(Recorder, open(write_fd, "wb"))
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"sent")
        transport.close()
        transport.write(b"dropped")  # closing: counted, neither sent nor raised
        assert transport.get_write_buffer_size() == 0
        assert await proto.lost is None

    run(any_loop, scenario())
    assert read_all(read_fd) == b"sent"


def test_transports_outliving_their_loop_keep_a_repr(pipe_fds: tuple[int, int]) -> None:
    read_fd, write_fd = pipe_fds

    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[bool, bool]:
        async def scenario() -> tuple[asyncio.BaseTransport, asyncio.BaseTransport]:
            reader, _ = await event_loop.connect_read_pipe(asyncio.Protocol, open(os.dup(read_fd), "rb"))
            writer, _ = await event_loop.connect_write_pipe(asyncio.BaseProtocol, open(os.dup(write_fd), "wb"))
            return reader, writer

        reader, writer = run(event_loop, scenario())
        event_loop.close()  # with the transports still open
        return "open" in repr(reader), "open" in repr(writer)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the transports are dropped unclosed
        stdlib, ferro = on_both_loops(snippet)
        gc.collect()
    assert ferro == stdlib == (True, True)
