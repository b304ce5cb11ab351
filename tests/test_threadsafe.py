"""call_soon_threadsafe: safe from any thread, wakes a loop blocked in the poller at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ferroloop

WAKE_BOUND = 0.5  # seconds; a loop blocked for an hour must wake far sooner than this

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite


@pytest.fixture
def loop_in_thread(loop: ferroloop.Loop) -> Iterator[ferroloop.Loop]:
    """`loop` running forever in a background thread, blocked on a one-hour timer."""
    started = threading.Event()
    loop.call_soon(started.set)
    loop.call_later(3600, print)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield loop
    finally:
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        assert not thread.is_alive()


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_the_poller(
    loop_in_thread: ferroloop.Loop,
) -> None:
    for _ in range(5):
        time.sleep(0.02)  # let the loop go back to waiting on the one-hour timer
        ran = threading.Event()
        sent = time.monotonic()
        loop_in_thread.call_soon_threadsafe(ran.set)
        assert ran.wait(WAKE_BOUND)
        assert time.monotonic() - sent < WAKE_BOUND


def test_call_soon_threadsafe_wakes_a_loop_with_nothing_scheduled(loop: ferroloop.Loop) -> None:
    # No timer at all: the poller waits without a timeout.
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    assert started.wait(5)
    time.sleep(0.05)
    sent = time.monotonic()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAKE_BOUND + 1)
    assert not thread.is_alive()
    assert time.monotonic() - sent < WAKE_BOUND


def test_call_soon_threadsafe_from_several_threads(loop_in_thread: ferroloop.Loop) -> None:
    threads_count, per_thread = 4, 2000
    received: dict[int, list[int]] = {t: [] for t in range(threads_count)}
    all_done = threading.Event()
    remaining = [threads_count * per_thread]

    def record(thread_index: int, i: int) -> None:
        received[thread_index].append(i)
        remaining[0] -= 1  # runs on the loop thread only: no lock needed
        if remaining[0] == 0:
            all_done.set()

    def producer(thread_index: int) -> None:
        for i in range(per_thread):
            loop_in_thread.call_soon_threadsafe(record, thread_index, i)
            if i % 500 == 0:
                time.sleep(0.001)  # let the loop block in the poller between bursts

    producers = [threading.Thread(target=producer, args=(t,)) for t in range(threads_count)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(10)
    assert all_done.wait(5)
    # Each thread's callbacks run in the order that thread scheduled them.
    assert received == {t: list(range(per_thread)) for t in range(threads_count)}


def test_call_soon_threadsafe_returns_a_cancellable_handle(loop: ferroloop.Loop) -> None:
    calls: list[str] = []
    handle = loop.call_soon_threadsafe(calls.append, "cancelled")
    assert isinstance(handle, ferroloop.Handle)
    handle.cancel()
    loop.call_soon_threadsafe(calls.append, "kept")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["kept"]


def test_call_soon_threadsafe_on_a_closed_loop_raises(loop: ferroloop.Loop) -> None:
    loop.close()
    errors: list[BaseException] = []

    def from_thread() -> None:
        try:
            loop.call_soon_threadsafe(print)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join(5)
    assert [type(e) for e in errors] == [RuntimeError]
    assert str(errors[0]) == "Event loop is closed"


def test_call_soon_threadsafe_in_debug_mode_is_allowed_from_other_threads(
    loop_in_thread: ferroloop.Loop,
) -> None:
    loop_in_thread.set_debug(True)
    ran = threading.Event()
    loop_in_thread.call_soon_threadsafe(ran.set)
    assert ran.wait(WAKE_BOUND)
    loop_in_thread.set_debug(False)


def test_call_soon_from_another_thread_in_debug_mode_raises(
    loop_in_thread: ferroloop.Loop,
) -> None:
    loop_in_thread.set_debug(True)
    try:
        with pytest.raises(RuntimeError, match="Non-thread-safe operation"):
            loop_in_thread.call_soon(print)
        with pytest.raises(RuntimeError, match="Non-thread-safe operation"):
            loop_in_thread.call_later(1, print)
    finally:
        loop_in_thread.set_debug(False)


def test_run_coroutine_threadsafe(loop_in_thread: ferroloop.Loop) -> None:
    async def add(a: int, b: int) -> tuple[int, Any]:
        await asyncio.sleep(0.001)
        return a + b, asyncio.get_running_loop()

    future = asyncio.run_coroutine_threadsafe(add(2, 3), loop_in_thread)
    assert future.result(timeout=5) == (5, loop_in_thread)


def test_call_soon_threadsafe_while_the_loop_runs_callbacks(loop: ferroloop.Loop) -> None:
    # A callback that blocks briefly while another thread schedules: nothing is lost.
    count = 200
    received: list[int] = []

    def producer() -> None:
        for i in range(count):
            loop.call_soon_threadsafe(received.append, i)

    def busy() -> None:
        thread = threading.Thread(target=producer)
        thread.start()
        thread.join(10)

    def stop_when_done() -> None:
        if len(received) == count:
            loop.stop()
        else:
            loop.call_later(0.001, stop_when_done)

    loop.call_soon(busy)
    loop.call_soon(stop_when_done)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert received == list(range(count))


def _cancel_from_another_thread_while_running(event_loop: asyncio.AbstractEventLoop, check: str) -> list[str]:
    """Another thread cancels (or asks `cancelled()` of) a call_soon_threadsafe handle while
    its callback runs; returns the order in which things happened."""
    order: list[str] = []
    started = threading.Event()

    def callback() -> None:
        started.set()
        time.sleep(0.3)  # releases the GIL: the other thread runs meanwhile
        order.append("callback finished")

    def other_thread() -> None:
        handle = event_loop.call_soon_threadsafe(callback)
        started.wait(5)
        result = getattr(handle, check)()
        order.append(f"{check}() returned {result}")
        event_loop.call_soon_threadsafe(event_loop.stop)

    thread = threading.Thread(target=other_thread)
    thread.start()
    event_loop.run_forever()
    thread.join()
    return order


@pytest.mark.parametrize("check", ["cancel", "cancelled"])
def test_a_threadsafe_handle_waits_for_its_running_callback_before_cancelling(
    check: str, loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop
) -> None:
    order = _cancel_from_another_thread_while_running(loop, check)
    assert order == ["callback finished", f"{check}() returned {None if check == 'cancel' else False}"]
    if hasattr(asyncio.events, "_ThreadSafeHandle"):  # 3.14+: the standard loop does the same
        assert _cancel_from_another_thread_while_running(stdlib_loop, check) == order


def test_a_threadsafe_handle_cancelled_from_its_own_callback_does_not_wait(loop: ferroloop.Loop) -> None:
    handles: list[Any] = []
    seen: list[bool] = []

    def callback() -> None:
        handles[0].cancel()
        seen.append(handles[0].cancelled())
        loop.stop()

    handles.append(loop.call_soon_threadsafe(callback))
    loop.run_forever()
    assert seen == [True]


def test_a_threadsafe_handle_cancelled_before_it_runs_never_runs(loop: ferroloop.Loop) -> None:
    ran: list[str] = []
    handle = loop.call_soon_threadsafe(ran.append, "ran")
    threading.Thread(target=handle.cancel).start()
    time.sleep(0.05)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [] and handle.cancelled()


def test_a_threadsafe_handle_is_the_interpreters_threadsafe_handle_type(
    stdlib_loop: asyncio.AbstractEventLoop, loop: ferroloop.Loop
) -> None:
    handle = loop.call_soon_threadsafe(print)
    assert isinstance(handle, ferroloop.Handle)
    stdlib_type = getattr(asyncio.events, "_ThreadSafeHandle", None)  # 3.14+
    if stdlib_type is not None:
        assert type(stdlib_loop.call_soon_threadsafe(print)) is stdlib_type
        assert isinstance(handle, stdlib_type)
        assert not isinstance(loop.call_soon(print), stdlib_type)
        assert not isinstance(loop.call_later(1, print), stdlib_type)
    else:
        assert handle.__class__ is ferroloop.Handle


def test_eight_threads_hammer_call_soon_threadsafe_while_the_loop_starts_stops_and_closes(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    accepted = [0] * 8
    ran = [0] * 8
    refused: list[type] = []

    def hammer(i: int) -> None:
        def tick() -> None:
            ran[i] += 1

        while True:  # until the loop is closed
            try:
                handle = any_loop.call_soon_threadsafe(tick)
            except RuntimeError as exc:  # the only acceptable refusal
                refused.append(type(exc))
                return
            accepted[i] += 1
            if accepted[i] % 7 == 0:
                handle.cancel()  # from another thread than the loop's (it may have run)
            # Paced (GIL released): eight unpaced producers outrun any loop, and each of its
            # iterations then runs an ever longer queue.
            time.sleep(0.0001)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):  # start, run a while, stop; again
            any_loop.run_until_complete(asyncio.sleep(0.02))
    finally:
        any_loop.close()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert refused == [RuntimeError] * 8  # every thread saw the loop close, nothing else
    assert 0 < sum(ran) <= sum(accepted)
