"""The exception handler: set/get_exception_handler, default_exception_handler,
call_exception_handler, the stdlib's context keys and log format."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops


def failing_callback() -> None:
    raise ValueError("callback failed")


def run_one_iteration(event_loop: asyncio.AbstractEventLoop) -> None:
    event_loop.call_soon(event_loop.stop)
    event_loop.run_forever()


def test_default_handler_is_none_and_handlers_can_be_set(loop: ferroloop.Loop) -> None:
    def handler(event_loop: Any, context: dict[str, Any]) -> None:
        pass

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_refuses_a_non_callable(loop: ferroloop.Loop) -> None:
    with pytest.raises(TypeError, match="A callable object or None is expected"):
        loop.set_exception_handler("not callable")  # type: ignore[arg-type]


def test_custom_handler_receives_the_loop_and_context(loop: ferroloop.Loop) -> None:
    received: list[tuple[Any, dict[str, Any]]] = []
    loop.set_exception_handler(lambda lp, ctx: received.append((lp, ctx)))
    loop.call_exception_handler({"message": "custom", "extra": 1})
    assert received == [(loop, {"message": "custom", "extra": 1})]


def test_callback_error_context_keys_match_the_stdlib() -> None:
    def keys(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        contexts: list[dict[str, Any]] = []
        event_loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        event_loop.call_soon(failing_callback)
        run_one_iteration(event_loop)
        event_loop.set_debug(True)
        event_loop.call_soon(failing_callback)
        run_one_iteration(event_loop)
        return [(sorted(c), c["message"], type(c["exception"]), type(c["handle"]).__name__) for c in contexts]

    stdlib, ours = on_both_loops(keys)
    assert ours == stdlib


def default_handler_log(event_loop: asyncio.AbstractEventLoop) -> list[str]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collector = Collect()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(collector)
    try:
        event_loop.call_soon(failing_callback)
        run_one_iteration(event_loop)
        event_loop.call_exception_handler({"message": "plain message", "key": "value"})
    finally:
        asyncio_logger.removeHandler(collector)
    return [f"{r.levelname}|{r.getMessage()}|{r.exc_info[0] if r.exc_info else None}" for r in records]


def test_default_handler_log_format_matches_the_stdlib() -> None:
    stdlib, ours = on_both_loops(default_handler_log)
    assert ours == stdlib
    assert ours[0].startswith("ERROR|Exception in callback failing_callback() at ")
    assert ours[1] == "ERROR|plain message\nkey: 'value'|None"


def test_default_exception_handler_can_be_called_from_a_custom_one(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def handler(event_loop: Any, context: dict[str, Any]) -> None:
        seen.append(context["message"])
        event_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        run_one_iteration(loop)
    assert len(seen) == 1
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [seen[0]]


def test_a_handler_that_raises_is_logged_and_the_loop_keeps_running(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken_handler(event_loop: Any, context: dict[str, Any]) -> None:
        raise RuntimeError("handler is broken")

    loop.set_exception_handler(broken_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        loop.call_soon(calls.append, "still running")
        run_one_iteration(loop)
    assert calls == ["still running"]
    assert any("Unhandled error in exception handler" in r.getMessage() for r in caplog.records)


def test_unretrieved_future_exception_reaches_the_handler(loop: ferroloop.Loop) -> None:
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    future = loop.create_future()
    future.set_exception(KeyError("never retrieved"))
    del future
    gc.collect()
    assert [c["message"] for c in contexts] == ["Future exception was never retrieved"]
    assert isinstance(contexts[0]["exception"], KeyError)


def test_unretrieved_task_exception_reaches_the_handler(loop: ferroloop.Loop) -> None:
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fails() -> None:
        raise OSError("task failed")

    task = loop.create_task(fails())
    run_one_iteration(loop)
    assert task.done()
    del task
    gc.collect()
    assert [c["message"] for c in contexts] == ["Task exception was never retrieved"]
    assert set(contexts[0]) >= {"message", "exception", "future"}


def test_reader_callback_error_goes_to_the_handler(loop: ferroloop.Loop) -> None:
    import socket

    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        calls: list[str] = []

        def on_readable() -> None:
            calls.append("read")
            loop.remove_reader(a)
            raise ValueError("reader failed")

        loop.add_reader(a, on_readable)
        b.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
    finally:
        a.close()
        b.close()
    assert calls == ["read"]
    assert [type(c["exception"]) for c in contexts] == [ValueError]
    assert re.match(r"Exception in callback .*on_readable", contexts[0]["message"])
