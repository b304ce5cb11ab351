"""What one traced program shows, point by point as issue 9 lists it: what each task awaits at
the end of its steps (a lock, a queue get, another task, a future, a socket read, a sleep),
who created each task and how it ended, cancelled timers with their due time, a transport's
read callback named after the data it delivered and its transport, the poller's event counts
and the ready queue's depth."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

import ferroloop


async def hold(lock: asyncio.Lock) -> None:
    async with lock:
        await asyncio.sleep(0.01)


async def get_one(queue: asyncio.Queue[int]) -> int:
    return await queue.get()


async def wait_for_task(task: asyncio.Task[None]) -> None:
    await task


async def wait_for_future(future: asyncio.Future[int]) -> int:
    return await future


async def receive(sock: socket.socket) -> bytes:
    return await asyncio.get_running_loop().sock_recv(sock, 10)


async def sleep_long() -> None:
    await asyncio.sleep(10)


async def program() -> None:
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    queue: asyncio.Queue[int] = asyncio.Queue()
    future: asyncio.Future[int] = loop.create_future()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    holder = asyncio.create_task(hold(lock), name="holder")
    await asyncio.sleep(0)
    tasks = [
        holder,
        asyncio.create_task(hold(lock), name="lock-waiter"),
        asyncio.create_task(get_one(queue), name="queue-getter"),
        asyncio.create_task(wait_for_task(holder), name="task-waiter"),
        asyncio.create_task(wait_for_future(future), name="future-waiter"),
        asyncio.create_task(receive(b), name="socket-reader"),
    ]
    doomed = asyncio.create_task(sleep_long(), name="doomed")
    timer = loop.call_later(5, print, "never")
    await asyncio.sleep(0.001)
    timer.cancel()
    doomed.cancel()
    queue.put_nowait(1)
    future.set_result(2)
    a.send(b"hi")
    await asyncio.gather(*tasks)
    with pytest.raises(asyncio.CancelledError):
        await doomed

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"ping")
    assert await reader.read(100) == b"ping"
    writer.close()
    server.close()
    await server.wait_closed()
    a.close()
    b.close()


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("contents") / "program.json"
    with ferroloop.trace(out, html=False):
        ferroloop.run(program())
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def track_ids(trace: dict[str, Any]) -> dict[str, int]:
    """Task name -> its track."""
    return {
        e["args"]["name"].split(":")[0]: e["tid"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name" and e["tid"] >= 100
    }


def steps_of(trace: dict[str, Any], name: str) -> list[dict[str, Any]]:
    tid = track_ids(trace)[name]
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] == tid]


def marks_of(trace: dict[str, Any], name: str) -> list[dict[str, Any]]:
    tid = track_ids(trace)[name]
    return [e for e in trace["traceEvents"] if e["ph"] == "i" and e["tid"] == tid]


@pytest.mark.parametrize(
    ("task", "awaits"),
    [
        ("holder", "sleep(0.01)"),
        ("lock-waiter", "Lock.acquire"),
        ("queue-getter", "Queue.get"),
        ("task-waiter", "task holder: hold()"),
        ("future-waiter", "Future"),
        ("socket-reader", "Loop.sock_recv"),
        ("doomed", "sleep(10)"),
    ],
)
def test_the_first_step_ends_with_what_the_task_awaits(trace: dict[str, Any], task: str, awaits: str) -> None:
    steps = steps_of(trace, task)
    assert steps[0]["args"]["awaits"] == awaits
    assert "awaits" not in steps[-1]["args"]  # the last step finished the task


def test_each_task_says_who_created_it_where_and_how_it_ended(trace: dict[str, Any]) -> None:
    main_name = next(n for n in track_ids(trace) if n.startswith("Task-"))
    for task, outcome in [("holder", "done"), ("queue-getter", "done"), ("doomed", "cancelled")]:
        marks = marks_of(trace, task)
        assert [m["name"] for m in marks] == ["created", outcome]
        created = marks[0]["args"]
        assert created["created_by"] == f"{main_name}: program()"
        assert created["created_at"].startswith(__file__) and created["created_at"].endswith(" in program")


def test_cancelled_timers_are_shown_with_their_due_time(trace: dict[str, Any]) -> None:
    timer_marks = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["name"] == "timer cancelled"]
    # call_later(5).cancel() and the sleep(10) of the cancelled task
    assert len(timer_marks) == 2
    for mark in timer_marks:
        delay_us = mark["args"]["when_us"] - mark["args"]["scheduled_at_us"]
        assert delay_us == pytest.approx(5e6, rel=1e-3) or delay_us == pytest.approx(10e6, rel=1e-3)
        assert mark["ts"] >= mark["args"]["scheduled_at_us"]
    scheduled = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i" and e["name"].startswith("timer scheduled")]
    assert "timer scheduled (+5.000 s)" in scheduled and "timer scheduled (+10.000 s)" in scheduled


def test_a_transport_read_is_named_after_the_data_and_the_transport(trace: dict[str, Any]) -> None:
    reads = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"].startswith("data_received on ")]
    # the server got b"ping", the client got it back
    assert len(reads) == 2
    assert all("SocketTransport(fd " in e["name"] and "peer ('127.0.0.1'," in e["name"] for e in reads)
    fds = {e["args"]["fd"] for e in reads}
    io = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["name"] == "read 4 B"]
    assert {e["args"]["fd"] for e in io} == fds


def test_the_poller_waits_and_the_ready_queue_depth_are_recorded(trace: dict[str, Any]) -> None:
    polls = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "poll"]
    assert polls and all(e["name"] == f"poll: {e['args']['events']} events" for e in polls)
    assert any(e["args"]["events"] >= 1 for e in polls)
    depth = [e["args"]["callbacks"] for e in trace["traceEvents"] if e["ph"] == "C" and e["name"] == "ready queue"]
    # after gather's wake-ups several callbacks are ready in one iteration
    assert max(depth) >= 5 and min(depth) >= 1


def test_asyncio_runner_with_ferroloop_is_traced(tmp_path: Path) -> None:
    out = tmp_path / "runner.json"

    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return n

    with ferroloop.trace(out, html=False), asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(work(1)) == 1
        assert runner.run(work(2)) == 2
    trace = json.loads(out.read_text())
    names = [e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"]
    # one loop, two runs: two work() tasks, each stepped twice (start, after the bare yield)
    assert sum(name.endswith(".work()") for name in names) == 2
    steps = [
        e
        for e in trace["traceEvents"]
        if e["ph"] == "X" and e["name"].endswith("step: test_asyncio_runner_with_ferroloop_is_traced.<locals>.work()")
    ]
    assert len(steps) == 4
