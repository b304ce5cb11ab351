"""Subclasses of the loop class: each gets its own copies of the Rust methods
(`src/subclass_methods.rs`), and what a program defines still wins, at any depth, as with
subclasses of the standard library's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import ferroloop

LOOP_CLASSES: dict[str, type[asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "ferroloop": ferroloop.Loop,
}


@pytest.fixture(params=sorted(LOOP_CLASSES))
def loop_class(request: pytest.FixtureRequest) -> type[asyncio.AbstractEventLoop]:
    return LOOP_CLASSES[request.param]


def run_soon(loop: asyncio.AbstractEventLoop, schedule: Callable[[], object]) -> list[Any]:
    """Run `schedule` as a callback, then what it scheduled; return what it returned, and
    close the loop."""
    results: list[Any] = []
    try:
        loop.call_soon(lambda: results.append(schedule()))
        loop.call_soon(lambda: loop.call_soon(loop.stop))
        loop.run_forever()
    finally:
        loop.close()
    return results


def test_an_override_wins_in_the_subclass_and_below(loop_class: type[asyncio.AbstractEventLoop]) -> None:
    calls: list[str] = []

    class Counting(loop_class):  # type: ignore[valid-type,misc]
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
            calls.append("override")
            return super().call_soon(callback, *args, context=context)

    class Below(Counting):
        pass

    for cls in (Counting, Below):
        calls.clear()
        ran: list[int] = []
        loop = cls()
        run_soon(loop, lambda loop=loop, ran=ran: loop.call_soon(ran.append, 1))
        # run_soon's three and the scheduled one, each through the override.
        assert calls == ["override"] * 4
        assert ran == [1]


def test_an_inherited_method_behaves_as_the_base_ones(loop_class: type[asyncio.AbstractEventLoop]) -> None:
    class Plain(loop_class):  # type: ignore[valid-type,misc]
        pass

    ran: list[tuple[str, int]] = []
    loop = Plain()
    handles = run_soon(
        loop,
        lambda: [
            loop.call_soon(ran.append, ("soon", 1)),
            loop.call_soon_threadsafe(ran.append, ("threadsafe", 2)),
        ],
    )
    assert ran == [("soon", 1), ("threadsafe", 2)]
    assert [h.cancelled() for h in handles[0]] == [False, False]


def test_an_instance_attribute_shadows_the_method(loop_class: type[asyncio.AbstractEventLoop]) -> None:
    loop = loop_class()
    seen: list[str] = []
    loop.time = lambda: seen.append("patched") or 42.0  # type: ignore[method-assign]
    try:
        assert loop.time() == 42.0
        assert seen == ["patched"]
    finally:
        loop.close()


def test_class_keywords_reach_object_init_subclass(loop_class: type[asyncio.AbstractEventLoop]) -> None:
    with pytest.raises(TypeError):

        class Keyworded(loop_class, flavour="strange"):  # type: ignore[valid-type,misc,call-arg]
            pass
