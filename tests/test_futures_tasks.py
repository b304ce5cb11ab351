"""Futures and tasks: create_future, create_task (name, context, newer keywords),
set_task_factory/get_task_factory, eager_task_factory; tasks are real asyncio.Task objects."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


async def answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_create_future_is_an_asyncio_future_bound_to_the_loop(loop: ferroloop.Loop) -> None:
    future = loop.create_future()
    assert type(future) is asyncio.Future
    assert future.get_loop() is loop
    assert not future.done()
    loop.call_soon(future.set_result, "value")
    assert loop.run_until_complete(future) == "value"


def test_create_task_returns_a_real_asyncio_task(loop: ferroloop.Loop) -> None:
    task = loop.create_task(answer())
    assert type(task) is asyncio.Task
    assert isinstance(task, asyncio.Future)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 42


def test_create_task_name(loop: ferroloop.Loop) -> None:
    named = loop.create_task(answer(), name="the-answer")
    unnamed = loop.create_task(answer())
    assert named.get_name() == "the-answer"
    assert unnamed.get_name().startswith("Task-")
    loop.run_until_complete(asyncio.gather(named, unnamed))


def test_create_task_context(loop: ferroloop.Loop) -> None:
    ctx = contextvars.copy_context()
    ctx.run(user.set, "alice")

    async def whoami() -> str:
        await asyncio.sleep(0)
        return user.get()

    task = loop.create_task(whoami(), context=ctx)
    assert loop.run_until_complete(task) == "alice"
    assert user.get() == "nobody"


def test_create_task_keywords_are_checked_like_the_stdlib() -> None:
    # Newer Pythons pass extra keywords through to the Task (3.14: eager_start); an unknown
    # keyword fails the same way on both loops.
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        results = []
        for kwargs in ({"name": "n", "context": None}, {"bogus": 1}):
            coro = answer()
            results.append(outcome(lambda coro=coro, kwargs=kwargs: event_loop.create_task(coro, **kwargs).cancel()))
            coro.close()
        return results

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[1] == ("raised", TypeError)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="create_task(eager_start=) is 3.14+")
def test_create_task_eager_start(loop: ferroloop.Loop) -> None:
    steps: list[str] = []

    async def record() -> None:
        steps.append("started")

    async def main() -> None:
        task = loop.create_task(record(), eager_start=True)  # type: ignore[call-arg]
        steps.append("after create_task")
        await task

    loop.run_until_complete(main())
    assert steps == ["started", "after create_task"]


def test_create_task_refuses_a_non_coroutine(loop: ferroloop.Loop) -> None:
    with pytest.raises(TypeError, match="a coroutine was expected"):
        loop.create_task(42)  # type: ignore[arg-type]


def test_current_task_and_all_tasks(loop: ferroloop.Loop) -> None:
    async def main() -> tuple[bool, bool]:
        me = asyncio.current_task()
        return me is not None and me.get_loop() is loop, me in asyncio.all_tasks()

    assert loop.run_until_complete(main()) == (True, True)


def test_task_cancellation(loop: ferroloop.Loop) -> None:
    async def sleeper() -> None:
        await asyncio.sleep(3600)

    async def main() -> bool:
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return task.cancelled()
        return False

    assert loop.run_until_complete(main()) is True


def test_gather_wait_for_and_timeouts(loop: ferroloop.Loop) -> None:
    async def main() -> tuple[list[int], bool]:
        results = await asyncio.gather(*(asyncio.sleep(0.001 * i, i) for i in range(10)))
        try:
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)
        except TimeoutError:
            timed_out = True
        else:
            timed_out = False
        return results, timed_out

    assert loop.run_until_complete(main()) == (list(range(10)), True)


def test_many_tasks(loop: ferroloop.Loop) -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return i * 2

    async def main() -> list[int]:
        return await asyncio.gather(*(work(i) for i in range(10_000)))

    assert loop.run_until_complete(main()) == [i * 2 for i in range(10_000)]


# -- task factories ---------------------------------------------------------------------------


def test_set_and_get_task_factory(loop: ferroloop.Loop) -> None:
    made: list[str] = []

    def factory(event_loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=event_loop, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(answer(), name="via-factory")
    assert task.get_name() == "via-factory"
    assert loop.run_until_complete(task) == 42
    assert made == ["answer"]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_a_two_argument_task_factory_works_as_in_the_stdlib(loop: ferroloop.Loop) -> None:
    # Without context=, the stdlib before 3.13.3 calls factory(loop, coro) and sets the name
    # afterwards; later releases pass name= to the factory, which then refuses it. The
    # interpreter's own loop is the oracle.
    def factory(event_loop: Any, coro: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=event_loop)

    def outcome(event_loop: asyncio.AbstractEventLoop) -> tuple[str, Any]:
        event_loop.set_task_factory(factory)
        coro = answer()
        try:
            task = event_loop.create_task(coro, name="legacy")
        except TypeError as exc:
            coro.close()
            return "TypeError", str(exc)
        return task.get_name(), event_loop.run_until_complete(task)

    stdlib_loop = asyncio.SelectorEventLoop()
    try:
        expected = outcome(stdlib_loop)
    finally:
        stdlib_loop.close()
    assert outcome(loop) == expected
    assert expected[0] in ("legacy", "TypeError")


def test_a_task_factory_gets_the_context_keyword(loop: ferroloop.Loop) -> None:
    seen: list[Any] = []

    def factory(event_loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        seen.append(kwargs.get("context"))
        return asyncio.Task(coro, loop=event_loop, **kwargs)

    ctx = contextvars.copy_context()
    loop.set_task_factory(factory)
    loop.run_until_complete(loop.create_task(answer(), context=ctx))
    assert seen == [ctx]


def test_set_task_factory_refuses_a_non_callable(loop: ferroloop.Loop) -> None:
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(42)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
def test_eager_task_factory_runs_the_first_step_synchronously(loop: ferroloop.Loop) -> None:
    steps: list[str] = []

    async def quick() -> str:
        steps.append("ran eagerly")
        return "done"

    async def main() -> tuple[bool, str]:
        task = loop.create_task(quick())
        steps.append("after create_task")
        finished_at_once = task.done()
        return finished_at_once, await task

    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    assert loop.run_until_complete(main()) == (True, "done")
    assert steps == ["ran eagerly", "after create_task"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
def test_eager_task_factory_with_a_task_that_suspends(loop: ferroloop.Loop) -> None:
    async def slow() -> int:
        await asyncio.sleep(0.001)
        return 1

    async def main() -> list[int]:
        tasks = [loop.create_task(slow()) for _ in range(100)]
        assert not any(t.done() for t in tasks)
        return await asyncio.gather(*tasks)

    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    assert loop.run_until_complete(main()) == [1] * 100
