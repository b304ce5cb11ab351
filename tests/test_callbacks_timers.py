"""Callbacks and timers: call_soon, call_later, call_at, time, context=, ordering, cancellation,
bad delays, and what happens when a callback raises."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
import socket
import time
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome


def run_for(event_loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    event_loop.call_later(seconds, event_loop.stop)
    event_loop.run_forever()


def run_one_iteration(event_loop: asyncio.AbstractEventLoop) -> None:
    event_loop.call_soon(event_loop.stop)
    event_loop.run_forever()


# -- the clock --------------------------------------------------------------------------------


def test_time_is_time_monotonic(loop: ferroloop.Loop) -> None:
    for _ in range(1000):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert before <= now <= after
    assert isinstance(loop.time(), float)


def test_time_has_sub_millisecond_resolution(loop: ferroloop.Loop) -> None:
    # uvloop's clock ticks in milliseconds; ours must distinguish microseconds.
    samples = sorted({loop.time() for _ in range(1000)})
    steps = [later - earlier for earlier, later in zip(samples, samples[1:])]
    assert steps and min(steps) < 1e-4


# -- call_soon --------------------------------------------------------------------------------


def test_call_soon_runs_callbacks_in_fifo_order_with_their_arguments(loop: ferroloop.Loop) -> None:
    calls: list[tuple[int, str]] = []
    for i in range(1000):
        loop.call_soon(lambda i, tag: calls.append((i, tag)), i, f"t{i}")
    run_one_iteration(loop)
    assert calls == [(i, f"t{i}") for i in range(1000)]


def test_callbacks_scheduled_by_callbacks_run_in_the_next_iteration(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[str] = []

    def first() -> None:
        calls.append("first")
        any_loop.call_soon(calls.append, "scheduled by first")

    any_loop.call_soon(first)
    any_loop.call_soon(calls.append, "second")
    any_loop.call_soon(any_loop.stop)
    any_loop.run_forever()
    assert calls == ["first", "second"]
    run_one_iteration(any_loop)
    assert calls == ["first", "second", "scheduled by first"]


def test_call_soon_returns_a_handle_that_can_be_cancelled(loop: ferroloop.Loop) -> None:
    calls: list[int] = []
    handle = loop.call_soon(calls.append, 1)
    assert isinstance(handle, ferroloop.Handle)
    assert not isinstance(handle, ferroloop.TimerHandle)
    handle.cancel()
    loop.call_soon(calls.append, 2)
    run_one_iteration(loop)
    assert calls == [2]


# -- call_later / call_at ---------------------------------------------------------------------


def test_call_later_zero_returns_a_timer_handle(loop: ferroloop.Loop) -> None:
    before = loop.time()
    handle = loop.call_later(0, print)
    assert isinstance(handle, ferroloop.TimerHandle)
    assert before <= handle.when() <= loop.time()
    handle.cancel()


def test_call_later_when_is_now_plus_delay(loop: ferroloop.Loop) -> None:
    before = loop.time()
    handle = loop.call_later(2.5, print)
    after = loop.time()
    assert before + 2.5 <= handle.when() <= after + 2.5
    handle.cancel()


def test_call_at_keeps_the_given_when(loop: ferroloop.Loop) -> None:
    when = loop.time() + 12.25
    handle = loop.call_at(when, print)
    assert handle.when() == when
    handle.cancel()


def test_call_later_passes_arguments(loop: ferroloop.Loop) -> None:
    calls: list[tuple[Any, ...]] = []
    loop.call_later(0.001, lambda *a: calls.append(a), 1, "two", None)
    loop.call_at(loop.time() + 0.002, lambda *a: calls.append(a), 3)
    run_for(loop, 0.01)
    assert calls == [(1, "two", None), (3,)]


def test_timers_fire_in_when_order_with_ties_in_scheduling_order(loop: ferroloop.Loop) -> None:
    rng = random.Random(1234)
    base = loop.time() + 0.01
    whens = [base + rng.randrange(6) * 0.002 for _ in range(300)]
    fired: list[int] = []
    for i, when in enumerate(whens):
        loop.call_at(when, fired.append, i)
    run_for(loop, 0.05)
    # sorted() is stable: equal whens keep scheduling order.
    assert fired == sorted(range(len(whens)), key=lambda i: whens[i])


def test_many_timers_with_the_same_when_keep_scheduling_order(loop: ferroloop.Loop) -> None:
    when = loop.time() + 0.001
    fired: list[int] = []
    for i in range(1000):
        loop.call_at(when, fired.append, i)
    run_for(loop, 0.01)
    assert fired == list(range(1000))


def test_a_timer_never_fires_before_its_when(loop: ferroloop.Loop) -> None:
    rng = random.Random(99)
    early: list[tuple[float, float]] = []
    count = 0

    def check(handle_box: list[Any]) -> None:
        nonlocal count
        count += 1
        when = handle_box[0].when()
        now_loop, now_os = loop.time(), time.monotonic()
        if now_loop < when or now_os < when:
            early.append((when, now_loop))

    for _ in range(300):
        box: list[Any] = []
        box.append(loop.call_later(rng.uniform(0, 0.03), check, box))
    run_for(loop, 0.06)
    assert count == 300
    assert early == []


def test_a_timer_fires_close_to_its_when(loop: ferroloop.Loop) -> None:
    fired: list[float] = []
    start = loop.time()
    loop.call_later(0.05, lambda: fired.append(loop.time()))
    run_for(loop, 0.3)
    assert len(fired) == 1
    assert 0.05 <= fired[0] - start < 0.25  # generous upper bound: the machine is shared


def test_due_timers_run_after_callbacks_already_ready() -> None:
    def order(event_loop: asyncio.AbstractEventLoop) -> list[str]:
        calls: list[str] = []
        event_loop.call_soon(calls.append, "a")
        event_loop.call_later(-1, calls.append, "neg1")
        event_loop.call_soon(calls.append, "c")
        event_loop.call_later(-2, calls.append, "neg2")
        event_loop.call_at(event_loop.time() - 5, calls.append, "past")
        event_loop.call_later(0, calls.append, "zero")
        run_for(event_loop, 0.01)
        return calls

    stdlib, ours = on_both_loops(order)
    assert ours == stdlib


def test_negative_delay_runs_like_the_stdlib_not_like_call_soon() -> None:
    def order(event_loop: asyncio.AbstractEventLoop) -> list[str]:
        calls: list[str] = []
        handle = event_loop.call_later(-10, calls.append, "negative")
        event_loop.call_soon(calls.append, "soon")
        run_one_iteration(event_loop)
        calls.append(type(handle).__name__)
        return calls

    stdlib, ours = on_both_loops(order)
    assert ours == stdlib == ["soon", "negative", "TimerHandle"]


@pytest.mark.parametrize("delay", [-math.inf, math.inf, 1e300, -1e300])
def test_unusual_float_delays_behave_like_the_stdlib(delay: float) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        calls: list[str] = []
        start = time.monotonic()
        event_loop.call_later(0.005, calls.append, "5ms")
        handle = event_loop.call_later(delay, calls.append, "odd")
        event_loop.call_soon(calls.append, "soon")
        run_for(event_loop, 0.02)
        elapsed_ok = time.monotonic() - start < 5
        return [calls, type(handle).__name__, elapsed_ok, handle.when() == handle.when()]

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[2] is True


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_a_nan_timer_alone_fires_on_the_next_iteration_like_the_stdlib(method: str) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        calls: list[str] = []
        event_loop.call_soon(calls.append, "soon")
        handle = getattr(event_loop, method)(math.nan, calls.append, "nan")
        run_one_iteration(event_loop)
        return [calls, type(handle).__name__, math.isnan(handle.when())]

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == [["soon", "nan"], "TimerHandle", True]


def test_a_nan_timer_among_others_fires_on_the_next_iteration(loop: ferroloop.Loop) -> None:
    # The standard loop fires a NaN timer whenever heapq happens to bring it to the top, which
    # depends on the heap's layout; ferroloop always treats NaN as due, and the other timers
    # keep their order.
    calls: list[str] = []
    loop.call_later(0.002, calls.append, "2ms")
    loop.call_later(0.001, calls.append, "1ms")
    loop.call_later(math.nan, calls.append, "nan")
    loop.call_soon(calls.append, "soon")
    run_one_iteration(loop)
    assert calls == ["soon", "nan"]
    run_for(loop, 0.01)
    assert calls == ["soon", "nan", "1ms", "2ms"]


@pytest.mark.parametrize(
    "schedule",
    [
        lambda lp: lp.call_later(None, print),
        lambda lp: lp.call_later("1", print),
        lambda lp: lp.call_later(b"1", print),
        lambda lp: lp.call_at(None, print),
        lambda lp: lp.call_later(),
        lambda lp: lp.call_soon(),
        lambda lp: lp.call_soon(print, context=None, bogus=1),
    ],
    ids=["later-None", "later-str", "later-bytes", "at-None", "later-noargs", "soon-noargs", "unknown-kwarg"],
)
def test_bad_scheduling_arguments_raise_type_error(loop: ferroloop.Loop, schedule: Any) -> None:
    with pytest.raises(TypeError):
        schedule(loop)
    assert loop._scheduled_count() == 0


def test_bad_scheduling_argument_outcomes_match_the_stdlib() -> None:
    def outcomes(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        return [
            outcome(lambda: event_loop.call_later(None, print)),
            outcome(lambda: event_loop.call_later("1", print)),
            outcome(lambda: event_loop.call_at(None, print)),
            outcome(lambda: event_loop.call_later(1, print).cancel()),
            outcome(lambda: event_loop.call_later(True, print).cancel()),
            outcome(lambda: event_loop.call_soon(42).cancel()),  # checked only in debug mode
        ]

    stdlib, ours = on_both_loops(outcomes)
    assert ours == stdlib


def test_integer_and_bool_delays_are_accepted(loop: ferroloop.Loop) -> None:
    fired: list[str] = []
    loop.call_later(0, fired.append, "int")
    loop.call_later(False, fired.append, "bool")
    loop.call_at(int(loop.time()), fired.append, "int when")
    run_for(loop, 0.01)
    assert sorted(fired) == ["bool", "int", "int when"]


# -- cancellation -----------------------------------------------------------------------------


def test_cancelled_timer_does_not_run(loop: ferroloop.Loop) -> None:
    fired: list[str] = []
    loop.call_later(0.001, fired.append, "cancelled").cancel()
    loop.call_later(0.002, fired.append, "kept")
    run_for(loop, 0.01)
    assert fired == ["kept"]


def test_a_timer_cancelled_by_an_earlier_callback_of_the_same_batch_does_not_run(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    fired: list[str] = []
    when = any_loop.time() + 0.002
    victim: list[Any] = []
    any_loop.call_at(when, lambda: (fired.append("killer"), victim[0].cancel()))
    victim.append(any_loop.call_at(when, fired.append, "victim"))
    run_for(any_loop, 0.01)
    assert fired == ["killer"]


def test_a_million_cancelled_timers_do_not_stay_in_the_heap(loop: ferroloop.Loop) -> None:
    count = 1_000_000
    callback = print
    handles = [loop.call_later(3600, callback) for _ in range(count)]
    survivor = loop.call_later(3600, callback)
    assert loop._scheduled_count() == count + 1
    for handle in handles:
        handle.cancel()
    del handles
    run_one_iteration(loop)
    assert loop._scheduled_count() == 1
    assert not survivor.cancelled()


def test_cancelled_timers_are_dropped_from_the_heap_head(loop: ferroloop.Loop) -> None:
    # Fewer than half cancelled: those at the head of the heap still go at once.
    early = [loop.call_later(0.5 + i * 1e-3, print) for i in range(10)]
    late = [loop.call_later(3600, print) for _ in range(200)]
    for handle in early:
        handle.cancel()
    run_one_iteration(loop)
    assert loop._scheduled_count() == len(late)
    for handle in late:
        handle.cancel()


def test_live_timers_survive_compaction_in_order(loop: ferroloop.Loop) -> None:
    base = loop.time() + 0.005
    fired: list[int] = []
    handles = [loop.call_at(base + (i % 50) * 1e-4, fired.append, i) for i in range(1000)]
    kept = [i for i in range(1000) if i % 10 == 0]
    for i, handle in enumerate(handles):
        if i % 10:
            handle.cancel()
    run_one_iteration(loop)
    assert loop._scheduled_count() == len(kept)
    run_for(loop, 0.03)
    assert fired == sorted(kept, key=lambda i: (i % 50, i))


# -- context= ---------------------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_context_argument_is_honoured(loop: ferroloop.Loop, method: str) -> None:
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "from ctx")
    seen: list[str] = []

    def callback() -> None:
        seen.append(request_id.get())

    schedule = getattr(loop, method)
    if method == "call_later":
        handle = schedule(0, callback, context=ctx)
    elif method == "call_at":
        handle = schedule(loop.time(), callback, context=ctx)
    else:
        handle = schedule(callback, context=ctx)
    assert handle.get_context() is ctx
    run_for(loop, 0.005)
    assert seen == ["from ctx"]
    assert request_id.get() == "unset"


def test_default_context_is_a_copy_taken_at_scheduling_time(loop: ferroloop.Loop) -> None:
    seen: list[str] = []
    token = request_id.set("at scheduling")
    try:
        loop.call_soon(lambda: seen.append(request_id.get()))
        loop.call_later(0, lambda: seen.append(request_id.get()))
        request_id.set("changed afterwards")
        run_for(loop, 0.005)
    finally:
        request_id.reset(token)
    assert seen == ["at scheduling", "at scheduling"]


def test_changes_made_by_a_callback_stay_in_its_context(loop: ferroloop.Loop) -> None:
    shared = contextvars.copy_context()
    seen: list[str] = []
    loop.call_soon(request_id.set, "set by first", context=shared)
    loop.call_soon(lambda: seen.append(request_id.get()), context=shared)
    loop.call_soon(lambda: seen.append(request_id.get()))
    run_one_iteration(loop)
    assert seen == ["set by first", "unset"]
    assert shared[request_id] == "set by first"
    assert request_id.get() == "unset"


def context_of(handle: asyncio.Handle) -> contextvars.Context:
    """The handle's context (`get_context()` is 3.12+; `_context` is on every release)."""
    context: contextvars.Context = getattr(handle, "_context")  # noqa: B009
    return context


def test_callbacks_scheduled_from_an_empty_context_each_get_their_own(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    # ferroloop keeps no copy of an empty context per handle; what a callback sets must still
    # stay in that callback's context, on the first run and on the thousandth.
    seen: list[str] = []
    for i in range(1000):
        any_loop.call_soon(request_id.set, f"set by {i}")
        any_loop.call_soon(lambda: seen.append(request_id.get()))
    run_one_iteration(any_loop)
    assert seen == ["unset"] * 1000
    assert request_id.get() == "unset"


def test_a_handle_keeps_what_its_callback_set_in_its_context(any_loop: asyncio.AbstractEventLoop) -> None:
    def set_and_report(label: str, seen: list[str]) -> None:
        seen.append(request_id.get())
        request_id.set(label)

    seen: list[str] = []
    soon = any_loop.call_soon(set_and_report, "soon", seen)
    timer = any_loop.call_later(0, set_and_report, "timer", seen)
    untouched = any_loop.call_soon(seen.append, "ran")
    run_for(any_loop, 0.005)
    assert seen == ["unset", "ran", "unset"]
    assert context_of(soon)[request_id] == "soon"
    assert context_of(timer)[request_id] == "timer"
    assert request_id not in context_of(untouched)
    assert context_of(untouched) is context_of(untouched)


def test_get_context_is_the_context_the_callback_runs_in(any_loop: asyncio.AbstractEventLoop) -> None:
    before_run = any_loop.call_soon(request_id.set, "before")
    seen: list[bool] = []
    handles: list[asyncio.Handle] = []

    def look_at_own_context() -> None:
        request_id.set("inside")
        seen.append(context_of(handles[0])[request_id] == "inside")

    handles.append(any_loop.call_soon(look_at_own_context))
    context = context_of(before_run)
    run_one_iteration(any_loop)
    assert context[request_id] == "before"
    assert context_of(before_run) is context
    assert seen == [True]
    assert context_of(handles[0])[request_id] == "inside"


def test_a_watcher_sees_what_it_set_on_its_earlier_runs(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = tcp_pair
    left.send(b"x")
    seen: list[str] = []

    def on_readable() -> None:
        seen.append(request_id.get())
        request_id.set(f"run {len(seen)}")
        if len(seen) == 3:
            any_loop.remove_reader(right)

    any_loop.add_reader(right, on_readable)
    for _ in range(4):
        run_one_iteration(any_loop)
    assert seen == ["unset", "run 1", "run 2"]
    assert request_id.get() == "unset"


def test_a_context_that_is_not_a_context_fails_when_run_like_the_stdlib() -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        errors: list[str] = []
        event_loop.set_exception_handler(lambda lp, c: errors.append(c["message"][:21]))
        handle = event_loop.call_soon(print, context=object())
        run_one_iteration(event_loop)
        return [type(handle).__name__, errors]

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == ["Handle", ["Exception in callback"]]


# -- a callback that raises -------------------------------------------------------------------


def test_an_exception_in_a_callback_goes_to_the_handler_and_the_loop_keeps_running(
    loop: ferroloop.Loop,
) -> None:
    contexts: list[dict[str, Any]] = []
    calls: list[str] = []

    def boom() -> None:
        raise ValueError("from callback")

    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    handle = loop.call_soon(boom)
    loop.call_soon(calls.append, "same iteration")
    loop.call_later(0.001, boom)
    loop.call_later(0.002, calls.append, "later")
    run_for(loop, 0.01)
    assert calls == ["same iteration", "later"]
    assert len(contexts) == 2
    first = contexts[0]
    assert set(first) == {"message", "exception", "handle"}
    assert first["message"].startswith("Exception in callback ")
    assert isinstance(first["exception"], ValueError)
    assert first["handle"] is handle
    assert isinstance(contexts[1]["handle"], ferroloop.TimerHandle)


def test_an_exception_in_a_callback_is_logged_by_the_default_handler(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise ValueError("logged")

    loop.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_one_iteration(loop)
    [record] = caplog.records
    assert record.name == "asyncio"
    assert record.getMessage().startswith("Exception in callback ")
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate_out_of_run_forever(
    any_loop: asyncio.AbstractEventLoop, exc_type: type[BaseException]
) -> None:
    calls: list[str] = []

    def interrupt() -> None:
        raise exc_type

    any_loop.call_soon(interrupt)
    any_loop.call_soon(calls.append, "after")
    with pytest.raises(exc_type):
        any_loop.run_forever()
    assert not any_loop.is_running()
    assert calls == []
    # The rest of the batch is still queued and runs on the next run.
    run_one_iteration(any_loop)
    assert calls == ["after"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_from_a_timer(loop: ferroloop.Loop, exc_type: type[BaseException]) -> None:
    def interrupt() -> None:
        raise exc_type

    loop.call_later(0.001, interrupt)
    loop.call_later(1, loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate_out_of_run_until_complete(
    loop: ferroloop.Loop, exc_type: type[BaseException]
) -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        raise exc_type

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert loop.run_until_complete(asyncio.sleep(0, "reusable")) == "reusable"


# -- debug-mode argument checks ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_debug_mode_refuses_non_callables_and_coroutines(loop: ferroloop.Loop, method: str) -> None:
    async def coroutine_function() -> None:
        pass

    loop.set_debug(True)
    schedule = getattr(loop, method)
    lead: tuple[Any, ...] = (0,) if method in ("call_later", "call_at") else ()
    with pytest.raises(TypeError, match=f"a callable object was expected by {method}"):
        schedule(*lead, 42)
    with pytest.raises(TypeError, match=f"coroutines cannot be used with {method}"):
        schedule(*lead, coroutine_function)
    coro = coroutine_function()
    try:
        with pytest.raises(TypeError, match=f"coroutines cannot be used with {method}"):
            schedule(*lead, coro)
    finally:
        coro.close()
    assert loop._scheduled_count() == 0
    assert loop._ready_count() == 0
