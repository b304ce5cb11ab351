"""Threads and processes with real I/O: several loops, one per thread, each serving and
connecting over loopback while waking each other with call_soon_threadsafe; and a child forked
from a running loop that builds its own loop and does I/O, timers and threadsafe wake-ups with
it, while the parent's loop keeps its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from test_fork import in_child

import ferroloop

pytestmark = pytest.mark.timeout(60)

MESSAGES = 200


async def echo_round_trips(count: int) -> int:
    """An echo server and a client on this loop; returns how many replies came back right."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    right = 0
    for n in range(count):
        writer.write(b"%d\n" % n)
        right += await reader.readline() == b"%d\n" % n
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return right


def test_loops_in_four_threads_do_io_and_wake_each_other() -> None:
    names = [f"t{n}" for n in range(4)]
    loops: dict[str, ferroloop.Loop] = {}
    ready = threading.Barrier(len(names), timeout=10)
    results: dict[str, Any] = {}
    inbox: dict[str, list[str]] = {name: [] for name in names}

    def worker(name: str) -> None:
        event_loop = ferroloop.new_event_loop()
        loops[name] = event_loop
        received = inbox[name]

        async def main() -> tuple[int, list[str]]:
            await event_loop.run_in_executor(None, ready.wait)  # every loop exists and runs
            neighbour = names[(names.index(name) + 1) % len(names)]
            for n in range(50):  # each loop wakes its neighbour 50 times, from its own thread
                loops[neighbour].call_soon_threadsafe(inbox[neighbour].append, f"{name}:{n}")
            right = await echo_round_trips(MESSAGES)
            while len(received) < 50:  # what the previous loop in the ring sent us
                await asyncio.sleep(0.01)
            return right, received

        try:
            results[name] = event_loop.run_until_complete(asyncio.wait_for(main(), 30))
        finally:
            event_loop.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert sorted(results) == names
    for n, name in enumerate(names):
        right, received = results[name]
        assert right == MESSAGES
        sender = names[n - 1]
        assert received == [f"{sender}:{k}" for k in range(50)]  # all of them, in order


def child_does_io() -> list[Any]:
    """In the forked child: a new loop with I/O, timers, and a wake-up from another thread."""
    event_loop = ferroloop.new_event_loop()
    try:

        async def main() -> list[Any]:
            fired: list[int] = []
            for n in (3, 1, 2):
                event_loop.call_later(0.001 * n, fired.append, n)
            woken = event_loop.create_future()
            threading.Timer(0.02, event_loop.call_soon_threadsafe, (woken.set_result, "woken")).start()
            right = await echo_round_trips(MESSAGES)
            return [right, await asyncio.wait_for(woken, 5), fired]

        return event_loop.run_until_complete(main())
    finally:
        event_loop.close()


def test_a_child_forked_from_a_running_loop_does_io_on_a_new_loop(loop: ferroloop.Loop) -> None:
    async def fork_then_carry_on() -> list[Any]:
        child = in_child(child_does_io)
        # The parent's loop is untouched by the child: its I/O and wake-ups still work.
        woken = loop.create_future()
        threading.Timer(0.02, loop.call_soon_threadsafe, (woken.set_result, "woken")).start()
        return [child, await echo_round_trips(MESSAGES), await asyncio.wait_for(woken, 5)]

    child, parent_right, parent_woken = loop.run_until_complete(fork_then_carry_on())
    assert child == [MESSAGES, "woken", [1, 2, 3]]
    assert parent_right == MESSAGES
    assert parent_woken == "woken"
