"""Threads: run_in_executor (default ThreadPoolExecutor), asyncio.to_thread,
set_default_executor, shutdown_default_executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


def thread_name_plus(value: int) -> tuple[str, int]:
    return threading.current_thread().name, value + 1


def test_run_in_executor_runs_in_a_worker_thread(loop: ferroloop.Loop) -> None:
    future = loop.run_in_executor(None, thread_name_plus, 1)
    assert isinstance(future, asyncio.Future)
    name, result = loop.run_until_complete(future)
    assert result == 2
    assert name != threading.current_thread().name


def test_default_executor_is_a_thread_pool_reused_across_calls(loop: ferroloop.Loop) -> None:
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    executor = loop._default_executor
    assert isinstance(executor, concurrent.futures.ThreadPoolExecutor)
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    assert loop._default_executor is executor


def test_run_in_executor_propagates_exceptions(loop: ferroloop.Loop) -> None:
    def fail() -> None:
        raise ArithmeticError("in a thread")

    with pytest.raises(ArithmeticError, match="in a thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_run_in_executor_with_an_explicit_executor(loop: ferroloop.Loop) -> None:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="explicit") as pool:
        name, _ = loop.run_until_complete(loop.run_in_executor(pool, thread_name_plus, 0))
    assert name.startswith("explicit")


def test_set_default_executor(loop: ferroloop.Loop) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chosen")
    loop.set_default_executor(pool)
    name, _ = loop.run_until_complete(loop.run_in_executor(None, thread_name_plus, 0))
    assert name.startswith("chosen")
    loop.run_until_complete(loop.shutdown_default_executor())
    assert pool._shutdown


def test_set_default_executor_type_checks_match_the_stdlib() -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            return [
                outcome(lambda: event_loop.set_default_executor(42)),  # type: ignore[arg-type]
                outcome(lambda: event_loop.set_default_executor(pool)),
            ]
        finally:
            pool.shutdown()

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[0] == ("raised", TypeError)


def test_run_in_executor_refuses_a_coroutine_function_in_debug_mode(loop: ferroloop.Loop) -> None:
    async def coroutine_function() -> None:
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutines cannot be used with run_in_executor"):
        loop.run_in_executor(None, coroutine_function)


def test_many_concurrent_executor_calls(loop: ferroloop.Loop) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(200)))

    assert loop.run_until_complete(main()) == [i * i for i in range(200)]


def test_run_in_executor_does_not_block_the_loop(loop: ferroloop.Loop) -> None:
    # The worker waits for the loop to have ticked three times while the worker runs: a loop
    # blocked on the worker would never tick, and the wait would time out.
    ticked_thrice = threading.Event()

    async def ticker() -> None:
        for _ in range(3):
            await asyncio.sleep(0.005)
        ticked_thrice.set()

    async def main() -> bool:
        tick_task = asyncio.ensure_future(ticker())
        seen = await loop.run_in_executor(None, ticked_thrice.wait, 30)
        await tick_task
        return seen

    assert loop.run_until_complete(main()) is True


def test_to_thread_works_and_copies_the_context(loop: ferroloop.Loop) -> None:
    def read_context(suffix: str) -> str:
        return tenant.get() + suffix

    async def main() -> str:
        tenant.set("acme")
        return await asyncio.to_thread(read_context, "!")

    assert loop.run_until_complete(main()) == "acme!"


def test_shutdown_default_executor_joins_the_worker_threads(loop: ferroloop.Loop) -> None:
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    executor = loop._default_executor
    loop.run_until_complete(loop.shutdown_default_executor())
    assert executor._shutdown
    assert all(not t.is_alive() for t in executor._threads)
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, print)


def test_close_shuts_the_default_executor_down(loop: ferroloop.Loop) -> None:
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    executor = loop._default_executor
    loop.close()
    assert executor._shutdown
