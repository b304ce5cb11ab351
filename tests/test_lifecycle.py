"""Lifecycle: run_forever, run_until_complete, stop, close, is_running, is_closed,
shutdown_asyncgens, shutdown_default_executor, the running-loop errors, one loop per thread."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops

# -- run_until_complete -----------------------------------------------------------------------


def test_run_until_complete_returns_a_coroutine_result(loop: ferroloop.Loop) -> None:
    async def compute() -> int:
        await asyncio.sleep(0.001)
        return 7

    assert loop.run_until_complete(compute()) == 7


def test_run_until_complete_accepts_a_future(loop: ferroloop.Loop) -> None:
    future = loop.create_future()
    loop.call_soon(future.set_result, "done")
    assert loop.run_until_complete(future) == "done"


def test_run_until_complete_accepts_an_awaitable(loop: ferroloop.Loop) -> None:
    class Awaitable:
        def __await__(self) -> Any:
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_raises_the_exception(loop: ferroloop.Loop) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("nope")

    with pytest.raises(ZeroDivisionError, match="nope"):
        loop.run_until_complete(fail())


def test_loop_is_reusable_after_run_until_complete(loop: ferroloop.Loop) -> None:
    async def fail() -> None:
        raise ValueError

    for _ in range(3):
        assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"
        with pytest.raises(ValueError):
            loop.run_until_complete(fail())
        assert not loop.is_running()
        assert not loop.is_closed()


def test_run_until_complete_refuses_a_non_awaitable(loop: ferroloop.Loop) -> None:
    with pytest.raises(TypeError, match="a coroutine or an awaitable is required"):
        loop.run_until_complete(1)  # type: ignore[arg-type]


def test_run_until_complete_refuses_a_future_of_another_loop(
    loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop
) -> None:
    foreign = stdlib_loop.create_future()
    with pytest.raises(ValueError, match="different loop"):
        loop.run_until_complete(foreign)


def test_run_until_complete_when_loop_is_stopped_first(loop: ferroloop.Loop) -> None:
    never_done = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(never_done)


def test_run_until_complete_returns_while_other_callbacks_are_pending(
    loop: ferroloop.Loop,
) -> None:
    later: list[str] = []
    loop.call_later(0.05, later.append, "late")
    assert loop.run_until_complete(asyncio.sleep(0, "first")) == "first"
    assert later == []
    loop.run_until_complete(asyncio.sleep(0.06))
    assert later == ["late"]


# -- run_forever and stop ---------------------------------------------------------------------


def test_stop_in_a_callback_ends_run_forever(loop: ferroloop.Loop) -> None:
    calls: list[str] = []
    loop.call_soon(calls.append, "a")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["a"]
    assert not loop.is_running()


def test_stop_before_run_forever_runs_one_iteration(any_loop: asyncio.AbstractEventLoop) -> None:
    calls: list[str] = []
    any_loop.call_soon(calls.append, "ran")
    any_loop.stop()
    any_loop.run_forever()
    assert calls == ["ran"]


def test_stop_runs_the_current_batch_then_returns(any_loop: asyncio.AbstractEventLoop) -> None:
    calls: list[str] = []

    def first() -> None:
        calls.append("first")
        any_loop.stop()
        any_loop.call_soon(calls.append, "scheduled after stop")

    any_loop.call_soon(first)
    any_loop.call_soon(calls.append, "same batch")
    any_loop.run_forever()
    assert calls == ["first", "same batch"]
    any_loop.call_soon(any_loop.stop)
    any_loop.run_forever()
    assert calls == ["first", "same batch", "scheduled after stop"]


def test_is_running_is_true_only_while_running(loop: ferroloop.Loop) -> None:
    seen: list[bool] = []
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    assert not loop.is_running()
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()


def test_run_forever_on_a_running_loop_raises(loop: ferroloop.Loop) -> None:
    errors: list[BaseException] = []

    def reenter() -> None:
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(reenter)
    loop.run_forever()
    assert [str(e) for e in errors] == ["This event loop is already running"]


def test_run_until_complete_on_a_running_loop_raises(loop: ferroloop.Loop) -> None:
    async def main() -> None:
        inner = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError, match="This event loop is already running"):
                loop.run_until_complete(inner)
        finally:
            inner.close()

    loop.run_until_complete(main())
    assert loop.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"


@pytest.mark.parametrize("other_factory", [ferroloop.new_event_loop, asyncio.new_event_loop])
def test_running_a_loop_while_another_runs_in_the_thread_raises(loop: ferroloop.Loop, other_factory: Any) -> None:
    other = other_factory()
    errors: list[str] = []

    def run_other() -> None:
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    try:
        loop.call_soon(run_other)
        loop.run_forever()
    finally:
        other.close()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_ferroloop_inside_a_running_stdlib_loop_raises(
    loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop
) -> None:
    errors: list[str] = []

    def run_ferroloop() -> None:
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        stdlib_loop.stop()

    stdlib_loop.call_soon(run_ferroloop)
    stdlib_loop.run_forever()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_keyboard_interrupt_in_a_callback_leaves_the_loop_reusable(loop: ferroloop.Loop) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio.events._get_running_loop() is None
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


# -- close ------------------------------------------------------------------------------------


def test_close_is_idempotent(loop: ferroloop.Loop) -> None:
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_close_while_running_raises(loop: ferroloop.Loop) -> None:
    errors: list[str] = []

    def try_close() -> None:
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_closed_loop_refuses_to_run(loop: ferroloop.Loop) -> None:
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.run_until_complete(coro)
    finally:
        coro.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda lp: lp.call_soon(print),
        lambda lp: lp.call_later(1, print),
        lambda lp: lp.call_at(lp.time(), print),
        lambda lp: lp.call_soon_threadsafe(print),
        lambda lp: lp.run_in_executor(None, print),
        lambda lp: lp.add_reader(0, print),
        lambda lp: lp.add_writer(1, print),
    ],
    ids=["call_soon", "call_later", "call_at", "call_soon_threadsafe", "run_in_executor", "add_reader", "add_writer"],
)
def test_closed_loop_refuses_new_work(loop: ferroloop.Loop, call: Any) -> None:
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        call(loop)


def test_closed_loop_refuses_create_task(loop: ferroloop.Loop) -> None:
    loop.close()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.create_task(coro)
    finally:
        coro.close()


def test_closed_loop_behaves_like_a_closed_stdlib_loop() -> None:
    def after_close(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        event_loop.close()
        results: list[Any] = [
            type(event_loop.time()),
            event_loop.remove_reader(0),
            event_loop.remove_writer(1),
            type(event_loop.create_future()),
        ]
        return results

    stdlib, ours = on_both_loops(after_close)
    assert ours == stdlib


def test_close_drops_pending_callbacks(loop: ferroloop.Loop) -> None:
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.call_later(0, ran.append, 2)
    loop.close()
    assert ran == []


# -- running-loop lookups ---------------------------------------------------------------------


def test_get_running_loop_and_get_event_loop_inside_coroutines(loop: ferroloop.Loop) -> None:
    async def main() -> tuple[Any, Any, Any]:
        await asyncio.sleep(0)
        return (asyncio.get_running_loop(), asyncio.get_event_loop(), asyncio.events._get_running_loop())

    assert loop.run_until_complete(main()) == (loop, loop, loop)
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_get_event_loop_in_callbacks(loop: ferroloop.Loop) -> None:
    seen: list[Any] = []
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop]


def test_set_event_loop_makes_it_the_current_loop(loop: ferroloop.Loop) -> None:
    asyncio.set_event_loop(loop)
    assert asyncio.get_event_loop() is loop


# -- async generators -------------------------------------------------------------------------


def test_asyncgen_hooks_are_installed_only_while_running(loop: ferroloop.Loop) -> None:
    before = sys.get_asyncgen_hooks()
    inside: list[Any] = []

    async def main() -> None:
        inside.append(sys.get_asyncgen_hooks())

    loop.run_until_complete(main())
    assert inside[0].firstiter is not None and inside[0].finalizer is not None
    assert inside[0] != before
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_closes_suspended_generators(loop: ferroloop.Loop) -> None:
    events: list[str] = []
    keep: list[Any] = []

    async def ticker() -> Any:
        try:
            for i in range(10):
                yield i
        finally:
            events.append("finally ran")

    async def main() -> None:
        gen = ticker()
        keep.append(gen)
        assert await gen.__anext__() == 0

    loop.run_until_complete(main())
    assert events == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ["finally ran"]


def test_async_generator_garbage_collected_while_running_is_finalized(
    loop: ferroloop.Loop,
) -> None:
    events: list[str] = []

    async def ticker() -> Any:
        try:
            yield 1
            yield 2
        finally:
            events.append("finalized")

    async def main() -> None:
        gen = ticker()
        await gen.__anext__()
        del gen  # the finalizer hook schedules aclose() on the loop
        for _ in range(3):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert events == ["finalized"]


def test_shutdown_asyncgens_with_no_generators_is_fine(loop: ferroloop.Loop) -> None:
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None


# -- shutdown_default_executor ----------------------------------------------------------------


def test_shutdown_default_executor_then_run_in_executor_raises(loop: ferroloop.Loop) -> None:
    assert loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2])) == 3
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, print)


def test_shutdown_default_executor_waits_for_running_work(loop: ferroloop.Loop) -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        finished.set()

    future = loop.run_in_executor(None, slow)
    loop.run_until_complete(loop.shutdown_default_executor())
    assert finished.is_set()
    assert loop.run_until_complete(future) is None


# -- threads ----------------------------------------------------------------------------------


def test_one_loop_per_thread_runs_concurrently() -> None:
    results: dict[str, Any] = {}
    barrier = threading.Barrier(3, timeout=10)

    def worker(name: str) -> None:
        event_loop = ferroloop.new_event_loop()
        asyncio.set_event_loop(event_loop)

        async def main() -> tuple[bool, str]:
            await asyncio.sleep(0.01)
            # Both threads' loops are running at the same time here.
            await event_loop.run_in_executor(None, barrier.wait)
            await asyncio.sleep(0.01)
            return asyncio.get_running_loop() is event_loop, threading.current_thread().name

        try:
            results[name] = event_loop.run_until_complete(main())
        finally:
            asyncio.set_event_loop(None)
            event_loop.close()

    threads = [threading.Thread(target=worker, args=(n,), name=n) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(10)
    assert results == {"t1": (True, "t1"), "t2": (True, "t2")}


def test_a_loop_running_in_another_thread_is_not_this_threads_running_loop(
    loop: ferroloop.Loop,
) -> None:
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert started.wait(5)
        assert loop.is_running()
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert not loop.is_running()


def test_a_loop_refuses_to_start_when_the_gil_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    # Free-threaded CPython run with PYTHON_GIL=0: the Rust core's state is guarded by the GIL.
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.raises(RuntimeError, match="GIL"):
        ferroloop.new_event_loop()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    ferroloop.new_event_loop().close()


def test_a_loop_core_in_a_cycle_through_its_fd_table_is_collected() -> None:
    # LoopCore -> fd table -> reader Handle -> the core's bound method -> LoopCore: a cycle of
    # objects none of which is Python code with a `__dict__` the GC could clear, and no
    # `Loop.__del__` to close the loop first. Only LoopCore's and Handle's tp_clear break it.
    import gc
    import os

    class BareCore(ferroloop._core.LoopCore):  # type: ignore[misc]  # weakref-able, no __del__
        pass

    read_fd, write_fd = os.pipe()
    try:
        core = BareCore()
        core._add_reader(read_fd, core._write_to_self)
        assert core._has_watcher(read_fd)
        del core
        gc.collect()
        # Not a weakref: the GC clears those to unreachable objects even when it cannot free
        # them. A leaked cycle stays among the objects it tracks.
        assert not [o for o in gc.get_objects() if type(o) is BareCore]
    finally:
        os.close(read_fd)
        os.close(write_fd)
