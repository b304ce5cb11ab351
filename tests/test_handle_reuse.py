"""Handles the loop reuses (`src/handle_pool.rs`) behave as fresh ones: whatever a program can
see of a handle — a kept reference, a weak reference, its context, its kind — is the same as
on the standard library's loop, which makes a new handle every time."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from asyncio import events
from collections.abc import Callable
from typing import Any

import pytest

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def run_soon(loop: asyncio.AbstractEventLoop, *steps: Callable[[], object]) -> None:
    """Run each step as its own callback, one iteration after the other."""
    for step in steps:
        loop.call_soon(step)
        loop.call_soon(loop.stop)
        loop.run_forever()


def test_a_kept_handle_keeps_its_callback_and_arguments(any_loop: asyncio.AbstractEventLoop) -> None:
    ran: list[tuple[str, int]] = []
    kept = any_loop.call_soon(ran.append, ("kept", 1))
    run_soon(any_loop, lambda: None)
    # Handles the loop is free to reuse come and go; the one the program holds is untouched.
    others = [any_loop.call_soon(ran.append, ("other", n)) for n in range(64)]
    run_soon(any_loop, lambda: None)
    assert ran[0] == ("kept", 1)
    assert all(other is not kept for other in others)
    assert kept._callback == ran.append  # type: ignore[attr-defined]
    assert kept._args == (("kept", 1),)  # type: ignore[attr-defined]
    assert not kept.cancelled()
    assert "append" in repr(kept)


def test_a_weak_reference_dies_with_the_handle_it_saw_run(any_loop: asyncio.AbstractEventLoop) -> None:
    died: list[str] = []
    ref = weakref.ref(any_loop.call_soon(lambda: None), lambda _: died.append("handle"))
    run_soon(any_loop, lambda: None)
    fresh = any_loop.call_soon(lambda: None)
    assert ref() is None
    assert died == ["handle"]
    assert fresh is not None


def test_a_variable_set_by_one_callback_is_not_seen_by_the_next(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    seen: list[str] = []

    def sets() -> None:
        VAR.set("set by the first callback")

    def reads() -> None:
        seen.append(VAR.get())

    for _ in range(3):
        run_soon(any_loop, lambda: any_loop.call_soon(sets), lambda: any_loop.call_soon(reads))
    run_soon(any_loop, lambda: None)
    assert seen == ["unset"] * 3
    assert VAR.get() == "unset"


def test_a_handle_made_after_a_threadsafe_one_ran_is_a_plain_handle(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    threadsafe_type = getattr(events, "_ThreadSafeHandle", None)
    any_loop.call_soon_threadsafe(lambda: None)
    run_soon(any_loop, lambda: None)
    plain = any_loop.call_soon(lambda: None)
    run_soon(any_loop, lambda: None)
    threadsafe = any_loop.call_soon_threadsafe(lambda: None)
    assert isinstance(plain, asyncio.Handle) or type(plain).__name__ == "Handle"
    if threadsafe_type is not None:  # 3.14+
        assert not isinstance(plain, threadsafe_type)
        assert isinstance(threadsafe, threadsafe_type)
    run_soon(any_loop, lambda: None)


def test_a_cancelled_handle_never_runs_a_later_callback(any_loop: asyncio.AbstractEventLoop) -> None:
    ran: list[str] = []
    cancelled = any_loop.call_soon(ran.append, "cancelled")
    cancelled.cancel()
    run_soon(any_loop, lambda: any_loop.call_soon(ran.append, "next"))
    run_soon(any_loop, lambda: None)
    assert ran == ["next"]
    assert cancelled.cancelled()


def test_the_exception_handler_gets_each_failing_callbacks_own_handle(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    reports: list[dict[str, Any]] = []
    any_loop.set_exception_handler(lambda _loop, context: reports.append(context))

    def fails(tag: str) -> None:
        raise ValueError(tag)

    def no_arguments() -> None:
        raise KeyError("bare")

    for tag in ("a", "b"):
        run_soon(any_loop, lambda tag=tag: any_loop.call_soon(fails, tag))  # type: ignore[misc]
    run_soon(any_loop, lambda: any_loop.call_soon(no_arguments))
    run_soon(any_loop, lambda: None)
    assert [str(r["exception"]) for r in reports] == ["a", "b", "'bare'"]
    assert reports[0]["handle"] is not reports[1]["handle"]
    assert [r["handle"]._args for r in reports] == [("a",), ("b",), ()]
    assert reports[2]["message"].startswith("Exception in callback ")
    assert "no_arguments()" in reports[2]["message"]


@pytest.mark.parametrize("count", [1, 5000])
def test_callbacks_scheduled_in_bulk_run_once_each_in_order(any_loop: asyncio.AbstractEventLoop, count: int) -> None:
    ran: list[int] = []

    def schedule() -> None:
        for n in range(count):
            any_loop.call_soon(ran.append, n)

    for _ in range(2):
        run_soon(any_loop, schedule)
        run_soon(any_loop, lambda: None)
    assert ran == list(range(count)) * 2
