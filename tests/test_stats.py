"""`loop.stats()`: the always-on counters, per-task statistics and their warnings, the printing
helper and `python -m ferroloop --stats`, each checked against a workload whose counts are
known exactly."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ferroloop
from ferro_helpers import run_python


def test_plain_callbacks_are_counted_exactly(loop: ferroloop.Loop) -> None:
    before = loop.stats()
    for _ in range(4):
        loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    after = loop.stats()
    assert after["callbacks"] - before["callbacks"] == 5
    assert after["iterations"] - before["iterations"] == 1
    assert after["ready_high_water"] >= 5


def test_timers_scheduled_fired_cancelled_and_tasks_created(loop: ferroloop.Loop) -> None:
    async def child() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        fired = asyncio.Event()
        handles = [loop.call_later(0.001 * i, lambda: None) for i in range(1, 4)]
        handles[1].cancel()
        loop.call_later(0.005, fired.set)
        await asyncio.gather(*(loop.create_task(child()) for _ in range(4)))
        await fired.wait()

    before = loop.stats()
    loop.run_until_complete(main())
    after = loop.stats()
    delta = {k: after[k] - before[k] for k in ("timers_scheduled", "timers_fired", "timers_cancelled")}
    assert delta == {"timers_scheduled": 4, "timers_fired": 3, "timers_cancelled": 1}
    # main() by run_until_complete, and four children
    assert after["tasks_created"] - before["tasks_created"] == 5
    assert sum(after["lag_histogram"].values()) == after["timers_fired"]


def test_threadsafe_calls_are_counted(loop: ferroloop.Loop) -> None:
    async def main() -> None:
        done = asyncio.Event()
        thread = threading.Thread(
            target=lambda: (
                [loop.call_soon_threadsafe(lambda: None) for _ in range(2)] + [loop.call_soon_threadsafe(done.set)]
            )
        )
        thread.start()
        await done.wait()
        thread.join()

    loop.run_until_complete(main())
    assert loop.stats()["threadsafe_calls"] == 3


def test_bytes_read_and_written_by_stream_transports(loop: ferroloop.Loop) -> None:
    payload = b"x" * 10_000

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.received = 0
            self.done = loop.create_future()

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received == len(payload):
                self.done.set_result(None)

    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = loop.stats()
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        assert loop.stats()["transports_open"] >= 1
        transport.write(payload)
        await client.done
        after = loop.stats()
        transport.close()
        server.close()
        await server.wait_closed()
        # the client wrote it once and the server echoed it once, both on this loop
        assert after["bytes_written"] - before["bytes_written"] == 2 * len(payload)
        assert after["bytes_read"] - before["bytes_read"] == 2 * len(payload)
        assert after["fds_watched"] >= 2

    loop.run_until_complete(main())


def test_loop_lag_shows_a_blocking_callback(loop: ferroloop.Loop) -> None:
    async def main() -> None:
        done = loop.create_future()
        loop.call_later(0.005, done.set_result, None)
        time.sleep(0.06)  # the timer comes due while the loop is held here
        await done

    loop.run_until_complete(main())
    stats = loop.stats()
    assert stats["lag_max_seconds"] >= 0.05
    assert stats["lag_histogram"]["<100ms"] == 1


def test_poll_wait_and_busy_time_add_up(loop: ferroloop.Loop) -> None:
    loop.run_until_complete(asyncio.sleep(0.05))
    stats = loop.stats()
    assert stats["poll_waits"] >= 1
    assert stats["poll_wait_seconds"] >= 0.04
    assert stats["run_seconds"] >= stats["poll_wait_seconds"]
    assert stats["busy_seconds"] == pytest.approx(stats["run_seconds"] - stats["poll_wait_seconds"])


def test_stats_is_a_plain_dict_without_task_details_by_default(loop: ferroloop.Loop) -> None:
    loop.run_until_complete(asyncio.sleep(0))
    stats = loop.stats()
    assert type(stats) is dict
    assert "tasks" not in stats
    assert stats["blocked_episodes"] == 0


def test_per_task_statistics(loop: ferroloop.Loop) -> None:
    async def spinner() -> None:
        for _ in range(150):
            await asyncio.sleep(0)

    async def sleeper() -> None:
        await asyncio.sleep(0.02)

    async def main() -> None:
        await asyncio.gather(
            asyncio.create_task(spinner(), name="spinner"),
            asyncio.create_task(sleeper(), name="sleeper"),
        )

    loop.set_task_stats(True)
    loop.run_until_complete(main())
    tasks = {t["name"]: t for t in loop.stats()["tasks"]}
    spin, sleep = tasks["spinner"], tasks["sleeper"]
    assert spin["coro"].endswith("spinner")
    assert (spin["state"], spin["steps"], spin["self_wakes"]) == ("done", 151, 150)
    assert (sleep["steps"], sleep["self_wakes"], sleep["state"]) == (2, 0, "done")
    assert sleep["idle_seconds"] >= 0.015
    assert spin["parent"] == sleep["parent"] != 0
    assert Path(__file__).name in spin["created_at"]
    warnings = loop.stats()["warnings"]
    assert any("'spinner'" in w and "woke itself in 150 of 151 steps" in w for w in warnings)
    assert not any("'sleeper'" in w for w in warnings)


def test_warning_for_a_step_that_never_yields(loop: ferroloop.Loop) -> None:
    async def hog() -> None:
        time.sleep(0.12)

    loop.set_task_stats(True)
    loop.run_until_complete(loop.create_task(hog(), name="hog"))
    (warning,) = loop.stats()["warnings"]
    assert "'hog'" in warning and "in one step without yielding" in warning


def test_tasks_pending_at_close_are_reported_with_their_creation_site(
    caplog: pytest.LogCaptureFixture,
) -> None:
    event_loop = ferroloop.new_event_loop()
    event_loop.set_task_stats(True)

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> tuple[asyncio.Task[None], int]:
        task, line = asyncio.create_task(forever(), name="stuck"), sys._getframe().f_lineno
        await asyncio.sleep(0)
        return task, line

    task, line = event_loop.run_until_complete(main())
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        event_loop.close()
    messages = [r.getMessage() for r in caplog.records if "still pending" in r.getMessage()]
    assert len(messages) == 1
    assert "'stuck'" in messages[0] and f"{Path(__file__).name}:{line} in main" in messages[0]
    assert messages[0] in event_loop.stats()["warnings"]
    del task


def test_format_stats_prints_counters_tasks_and_warnings(loop: ferroloop.Loop) -> None:
    async def spinner() -> None:
        for _ in range(120):
            await asyncio.sleep(0)

    loop.set_task_stats(True)
    loop.run_until_complete(loop.create_task(spinner(), name="spin-task"))
    text = ferroloop.format_stats(loop.stats())
    assert text.startswith("ferroloop statistics\n")
    assert "callbacks: " in text and "loop lag (due timers)" in text
    assert "spin-task" in text and "warning: task 'spin-task'" in text


def test_runner_prints_stats_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "two_timers.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio

            async def main():
                await asyncio.sleep(0.01)
                await asyncio.sleep(0.01)

            asyncio.run(main())
            """
        )
    )
    result = run_python("-m", "ferroloop", "--stats", str(script))
    assert result.returncode == 0, result.stderr
    assert "ferroloop statistics" in result.stderr
    assert "timers fired: 2" in result.stderr
    assert "main" in result.stderr  # the per-task table


def test_transports_open_and_fds_watched_are_exact(loop: ferroloop.Loop) -> None:
    async def main() -> list[tuple[int, int]]:
        seen = [(loop.stats()["transports_open"], loop.stats()["fds_watched"])]

        async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        seen.append((loop.stats()["transports_open"], loop.stats()["fds_watched"]))
        writers = []
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
        await asyncio.sleep(0.01)  # the server side has accepted and is reading too
        seen.append((loop.stats()["transports_open"], loop.stats()["fds_watched"]))
        server.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        seen.append((loop.stats()["transports_open"], loop.stats()["fds_watched"]))
        return seen

    # nothing; the listening socket; three connections, both ends reading; all closed
    assert loop.run_until_complete(main()) == [(0, 0), (0, 1), (6, 7), (0, 0)]
