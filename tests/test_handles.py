"""Handle and TimerHandle: cancel, cancelled, when, get_context, repr, ordering and comparison
like the standard library's."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import operator
import re
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops


def callback() -> None:
    pass


def other_callback() -> None:
    pass


def test_cancel_and_cancelled(loop: ferroloop.Loop) -> None:
    for handle in (loop.call_soon(callback), loop.call_later(1, callback)):
        assert not handle.cancelled()
        handle.cancel()
        assert handle.cancelled()
        handle.cancel()  # cancelling twice is harmless
        assert handle.cancelled()


def test_a_handle_cancelled_after_it_ran_stays_harmless(loop: ferroloop.Loop) -> None:
    calls: list[int] = []
    handle = loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    handle.cancel()
    assert calls == [1]
    assert handle.cancelled()


def test_get_context_returns_the_context_the_callback_runs_in(loop: ferroloop.Loop) -> None:
    ctx = contextvars.copy_context()
    assert loop.call_soon(callback, context=ctx).get_context() is ctx
    assert loop.call_later(1, callback, context=ctx).get_context() is ctx
    assert isinstance(loop.call_soon(callback).get_context(), contextvars.Context)


def test_timer_handle_when(loop: ferroloop.Loop) -> None:
    handle = loop.call_at(1234.5, callback)
    assert handle.when() == 1234.5
    handle.cancel()
    assert handle.when() == 1234.5


def test_handles_support_weak_references(loop: ferroloop.Loop) -> None:
    handle = loop.call_soon(callback)
    timer = loop.call_later(1, callback)
    assert weakref.ref(handle)() is handle
    assert weakref.ref(timer)() is timer


# -- comparison -------------------------------------------------------------------------------


def comparisons(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
    a = event_loop.call_at(5.0, callback, 1)
    same = event_loop.call_at(5.0, callback, 1)
    other_args = event_loop.call_at(5.0, callback, 2)
    other_cb = event_loop.call_at(5.0, other_callback, 1)
    later = event_loop.call_at(6.0, callback, 1)
    results = [
        a == same,
        a != same,
        a == other_args,
        a == other_cb,
        a == later,
        a < later,
        a <= later,
        a > later,
        a >= later,
        later > a,
        later >= a,
        a <= same,
        a >= same,
        a < same,
        a > same,
        a <= other_args,
        a >= other_args,
        hash(a) == hash(same),
        a == 1,
        a != "x",
        [h is a for h in sorted([later, a])],
    ]
    same.cancel()
    results += [a == same, a <= same]
    plain, plain2 = event_loop.call_soon(callback), event_loop.call_soon(callback)
    results += [plain == plain2, plain == plain, plain != plain2, hash(plain) == hash(plain)]
    for h in (a, same, other_args, other_cb, later, plain, plain2):
        h.cancel()
    return results


def test_timer_handle_comparisons_match_the_stdlib() -> None:
    stdlib, ours = on_both_loops(comparisons)
    assert ours == stdlib


@pytest.mark.parametrize("op", [operator.lt, operator.le, operator.gt, operator.ge])
def test_ordering_a_timer_handle_with_a_non_handle_raises_type_error(
    loop: ferroloop.Loop, op: Callable[[Any, Any], bool]
) -> None:
    handle = loop.call_later(1, callback)
    with pytest.raises(TypeError):
        op(handle, 1)


def test_timer_handles_sort_by_when(loop: ferroloop.Loop) -> None:
    whens = [3.0, 1.0, 2.0, 0.5]
    handles = [loop.call_at(w, callback) for w in whens]
    assert [h.when() for h in sorted(handles)] == sorted(whens)


# -- repr -------------------------------------------------------------------------------------


def reprs(event_loop: asyncio.AbstractEventLoop) -> list[str]:
    handle = event_loop.call_soon(callback)
    with_args = event_loop.call_soon(callback_with_args, 1, "two")
    timer = event_loop.call_at(7.5, callback)
    builtin = event_loop.call_soon(print, "x")
    result = [repr(handle), repr(with_args), repr(timer), repr(builtin)]
    handle.cancel()
    timer.cancel()
    result += [repr(handle), repr(timer)]
    return result


def callback_with_args(number: int, text: str) -> None:
    pass


@pytest.mark.parametrize("debug", [False, True])
def test_reprs_match_the_stdlib(debug: bool) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[str]:
        event_loop.set_debug(debug)
        return reprs(event_loop)

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib


def test_debug_repr_says_where_the_handle_was_created(loop: ferroloop.Loop) -> None:
    loop.set_debug(True)
    handle = loop.call_soon(callback)
    assert re.search(r"created at .*test_handles\.py:\d+>$", repr(handle))
    assert handle._source_traceback


# -- memory -----------------------------------------------------------------------------------


class Payload:
    pass


def test_cancel_releases_the_callback_arguments_like_the_stdlib() -> None:
    # asyncio's Handle.cancel() drops its callback and arguments (outside debug mode), so a
    # program that keeps cancelled handles around does not keep their arguments alive.
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[bool]:
        freed = []
        for schedule in (
            lambda p: event_loop.call_soon(callback_with_args, p, ""),
            lambda p: event_loop.call_later(60, callback_with_args, p, ""),
        ):
            payload = Payload()
            ref = weakref.ref(payload)
            handle = schedule(payload)
            del payload
            handle.cancel()
            gc.collect()
            freed.append(ref() is None)
            del handle
        return freed

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == [True, True]


def test_handles_release_their_arguments_after_running(loop: ferroloop.Loop) -> None:
    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_soon(callback_with_args, payload, "")
    loop.call_later(0, callback_with_args, payload, "")
    del payload
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None
