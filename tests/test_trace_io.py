"""The trace's I/O events and the always-on byte counters, for every kind of I/O the loop does
per call: pipe transports (reads, writes, pause/resume of reading and writing) and the sock_*
operations (the Rust ones and the standard library's, which the loop wraps); and the trace
buffer's two overflow policies."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import run_python
from ferroloop import _trace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def io_events(path: Path) -> list[tuple[str, int, int]]:
    """(name, fd, bytes) of every I/O instant, in order."""
    trace = json.loads(path.read_text())
    return [
        (e["name"], e["args"]["fd"], e["args"]["bytes"])
        for e in trace["traceEvents"]
        if e["ph"] == "i" and e.get("cat") != "wakeup" and "fd" in e.get("args", {})
    ]


def on_fd(events: list[tuple[str, int, int]], fd: int) -> list[str]:
    return [name for name, event_fd, _ in events if event_fd == fd and not name.startswith("fd ")]


def test_pipe_reads_writes_and_flow_control_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "pipes.json"
    received = bytearray()

    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            received.extend(data)
            if len(received) >= 300 and not self.got.done():
                self.got.set_result(None)

    class Writer(asyncio.Protocol):
        def __init__(self) -> None:
            self.paused = 0
            self.resumed = asyncio.get_running_loop().create_future()

        def pause_writing(self) -> None:
            self.paused += 1

        def resume_writing(self) -> None:
            self.resumed.set_result(None)

    async def main() -> tuple[int, int, dict[str, Any], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        read_transport, reader = await loop.connect_read_pipe(Reader, os.fdopen(rfd, "rb", 0))
        write_transport, writer = await loop.connect_write_pipe(Writer, os.fdopen(wfd, "wb", 0))
        before = loop.stats()  # type: ignore[attr-defined]
        write_transport.write(b"a" * 100)
        write_transport.write(b"b" * 200)
        await reader.got
        read_transport.pause_reading()
        read_transport.resume_reading()
        # Over the high-water mark: paused at once, resumed once the pipe has taken it all.
        write_transport.set_write_buffer_limits(high=1)
        write_transport.write(b"c" * 200_000)
        assert writer.paused == 1
        while len(received) < 200_300:
            await asyncio.sleep(0.001)
        await writer.resumed
        after = loop.stats()  # type: ignore[attr-defined]
        write_transport.close()
        read_transport.close()
        await asyncio.sleep(0)
        return rfd, wfd, before, after

    with ferroloop.trace(out, html=False):
        rfd, wfd, before, after = ferroloop.run(main())

    events = io_events(out)
    written = on_fd(events, wfd)
    read = on_fd(events, rfd)
    assert written[:2] == ["write 100 B", "write 200 B"]
    assert "pause_writing" in written and "resume_writing" in written
    assert written.index("pause_writing") < written.index("resume_writing")
    assert read[read.index("pause_reading") + 1] == "resume_reading"
    write_bytes = sum(b for name, fd, b in events if fd == wfd and name.startswith("write"))
    read_bytes = sum(b for name, fd, b in events if fd == rfd and name.startswith("read"))
    assert write_bytes == read_bytes == 200_300
    assert any(name == f"fd {rfd} readable" for name, _, _ in events)  # the poller's report
    # the always-on counters saw the same bytes
    assert after["bytes_written"] - before["bytes_written"] == 200_300
    assert after["bytes_read"] - before["bytes_read"] == 200_300


def test_pipe_reads_are_named_after_their_transport(tmp_path: Path) -> None:
    out = tmp_path / "pipe_names.json"

    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.got.set_result(data)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        transport, reader = await loop.connect_read_pipe(Reader, os.fdopen(rfd, "rb", 0))
        os.write(wfd, b"hello")
        assert await reader.got == b"hello"
        transport.close()
        os.close(wfd)
        await asyncio.sleep(0)
        return rfd

    with ferroloop.trace(out, html=False):
        rfd = ferroloop.run(main())
    slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    reads = [e for e in slices if e["args"].get("fd") == rfd]
    assert [e["name"] for e in reads] == [f"data_received on ReadPipeTransport(fd {rfd})"]


def test_every_sock_operation_records_the_bytes_of_each_call(tmp_path: Path) -> None:
    out = tmp_path / "sock.json"

    async def main() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b, u1, u2):
            s.setblocking(False)
        u1.bind(("127.0.0.1", 0))
        u2.bind(("127.0.0.1", 0))
        before = loop.stats()  # type: ignore[attr-defined]
        receiving = loop.create_task(loop.sock_recv(b, 100))  # waits: the Rust waiter
        await asyncio.sleep(0)
        await loop.sock_sendall(a, b"x" * 10)
        assert await receiving == b"x" * 10
        await loop.sock_sendall(a, b"y" * 20)
        buf = bytearray(64)
        assert await loop.sock_recv_into(b, buf) == 20
        await loop.sock_sendto(u1, b"z" * 30, u2.getsockname())
        data, _ = await loop.sock_recvfrom(u2, 100)
        assert data == b"z" * 30
        await loop.sock_sendto(u1, b"w" * 40, u2.getsockname())
        nbytes, _ = await loop.sock_recvfrom_into(u2, buf)
        assert nbytes == 40
        after = loop.stats()  # type: ignore[attr-defined]
        fds = [s.fileno() for s in (a, b, u1, u2)]
        for s in (a, b, u1, u2):
            s.close()
        return fds, before, after

    with ferroloop.trace(out, html=False):
        (fa, fb, f1, f2), before, after = ferroloop.run(main())

    events = io_events(out)
    assert on_fd(events, fa) == ["write 10 B", "write 20 B"]
    assert on_fd(events, fb) == ["read 10 B", "read 20 B"]
    assert on_fd(events, f1) == ["write 30 B", "write 40 B"]
    assert on_fd(events, f2) == ["read 30 B", "read 40 B"]
    assert after["bytes_written"] - before["bytes_written"] == 100
    assert after["bytes_read"] - before["bytes_read"] == 100


def send_and_drain(
    send: Callable[[asyncio.AbstractEventLoop, socket.socket], Awaitable[Any]], size: int
) -> tuple[int, int, int]:
    """Run `send` on one end of a socketpair while the other end reads `size` bytes; the two
    fds, and how many bytes the loop's counters say were written meanwhile."""

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)

        async def drain() -> int:
            got = 0
            while got < size:
                got += len(await loop.sock_recv(b, 256 * 1024))
            return got

        before = loop.stats()["bytes_written"]  # type: ignore[attr-defined]
        draining = loop.create_task(drain())
        await send(loop, a)
        assert await draining == size
        written = loop.stats()["bytes_written"] - before  # type: ignore[attr-defined]
        fds = a.fileno(), b.fileno()
        a.close()
        b.close()
        return fds[0], fds[1], written

    return ferroloop.run(main())


SENT_IN_PARTS = 4 * 1024 * 1024  # more than a socketpair's buffers take at once


def test_the_rest_of_a_partial_sock_sendall_is_recorded_send_by_send(tmp_path: Path) -> None:
    out = tmp_path / "sendall.json"
    with ferroloop.trace(out, html=False):
        fa, fb, written = send_and_drain(lambda loop, a: loop.sock_sendall(a, b"s" * SENT_IN_PARTS), SENT_IN_PARTS)
    events = io_events(out)
    writes = [b for name, fd, b in events if fd == fa and name.startswith("write")]
    # the first send, then one per time the socket had room: each with its own bytes
    assert len(writes) > 2 and all(0 < b < SENT_IN_PARTS for b in writes)
    assert sum(writes) == written == SENT_IN_PARTS
    assert sum(b for name, fd, b in events if fd == fb and name.startswith("read")) == SENT_IN_PARTS


def test_sock_sendfile_records_the_bytes_of_each_sendfile_call(tmp_path: Path) -> None:
    out = tmp_path / "sendfile.json"
    path = tmp_path / "payload"
    path.write_bytes(os.urandom(SENT_IN_PARTS))
    with open(path, "rb") as file, ferroloop.trace(out, html=False):
        fa, _, written = send_and_drain(lambda loop, a: loop.sock_sendfile(a, file), SENT_IN_PARTS)
    writes = [b for name, fd, b in io_events(out) if fd == fa and name.startswith("write")]
    assert len(writes) > 1 and all(b > 0 for b in writes)
    assert sum(writes) == written == SENT_IN_PARTS


def spin_marks(trace: dict[str, Any]) -> list[str]:
    """The instants on spin()'s task track."""
    (tid,) = [
        e["tid"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name" and e["args"]["name"].endswith(": spin()")
    ]
    return [e["name"] for e in trace["traceEvents"] if e["ph"] == "i" and e["tid"] == tid]


async def spin() -> None:
    for _ in range(5000):
        await asyncio.sleep(0)


def test_dropping_the_newest_keeps_the_beginning_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "first.json"
    with ferroloop.trace(out, buffer_size=1000, drop="newest", html=False) as session:
        ferroloop.run(spin())
    (recording,) = session.recordings
    assert len(recording.events) == 1000
    assert recording.dropped > 10_000
    trace = json.loads(out.read_text())
    assert trace["otherData"] == {
        "producer": "ferroloop",
        "dropped_events": recording.dropped,
        "dropped_when_full": "newest",
    }
    marks = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i"]
    assert f"{recording.dropped} newer events dropped (buffer full)" in marks
    # the beginning was kept: the task's creation and its first steps, not its end
    assert spin_marks(trace) == ["created"]
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"].endswith("step: spin()")]
    assert 250 <= len(steps) <= 400  # about three events per step


def test_dropping_the_oldest_keeps_the_end(tmp_path: Path) -> None:
    out = tmp_path / "last.json"
    with ferroloop.trace(out, buffer_size=1000, drop="oldest", html=False) as session:
        ferroloop.run(spin())
    (recording,) = session.recordings
    trace = json.loads(out.read_text())
    assert trace["otherData"]["dropped_when_full"] == "oldest"
    marks = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i"]
    assert f"{recording.dropped} older events dropped (buffer full)" in marks
    # the end was kept: spin()'s end, not its creation (the loop's own shutdown tasks, made
    # after it, are there from start to end)
    assert spin_marks(trace) == ["done"]


def test_the_drop_policy_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="drop must be 'oldest' or 'newest', not 'middle'"):
        ferroloop.trace(tmp_path / "x.json", drop="middle")
    result = run_python("-m", "ferroloop", "trace", "--drop", "middle", str(EXAMPLES / "hello_gather.py"))
    assert result.returncode == 2
    assert "--drop: invalid choice: 'middle'" in result.stderr


def test_the_command_line_drop_option_reaches_the_buffer(tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    result = run_python(
        "-m",
        "ferroloop",
        "trace",
        "--buffer-size",
        "50",
        "--drop",
        "newest",
        "--no-html",
        "-o",
        str(out),
        str(EXAMPLES / "hello_gather.py"),
    )
    assert result.returncode == 0, result.stderr
    trace = json.loads(out.read_text())
    assert trace["otherData"]["dropped_when_full"] == "newest"
    assert trace["otherData"]["dropped_events"] > 0
    assert "a: three" in result.stdout  # the program ran to its end all the same


def test_recorded_events_are_in_timestamp_order_with_cancelled_timers(tmp_path: Path) -> None:
    out = tmp_path / "cancels.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            # cancelled inside a step, which then goes on recording (a wake-up, the step's
            # end, the next steps) before the loop's next iteration
            timers = [loop.call_later(10, print) for _ in range(3)]
            for timer in timers:
                timer.cancel()
            loop.call_soon(lambda: None)
            await asyncio.sleep(0)

    with ferroloop.trace(out, html=False) as session:
        ferroloop.run(main())
    (recording,) = session.recordings
    cancels = [ev for ev in recording.events if ev[5] == _trace._K.timer_cancelled]
    assert len(cancels) == 60
    stamps = [ev[0] for ev in recording.events]
    assert stamps == sorted(stamps)
    # per track in the written trace too, each cancellation inside the step that made it
    by_track: dict[tuple[int, str], list[float]] = {}
    for e in json.loads(out.read_text())["traceEvents"]:
        if e["ph"] in ("X", "i"):
            by_track.setdefault((e["tid"], e["ph"]), []).append(e["ts"])
    assert all(ts == sorted(ts) for ts in by_track.values())
    trace = json.loads(out.read_text())["traceEvents"]
    steps = [e for e in trace if e["ph"] == "X" and " step: " in e["name"] and e["name"].endswith("main()")]
    assert steps
    for cancel in (e for e in trace if e["name"] == "timer cancelled"):
        assert any(s["ts"] <= cancel["ts"] <= s["ts"] + s["dur"] for s in steps)
