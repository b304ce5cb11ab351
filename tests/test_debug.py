"""Debug mode: get_debug/set_debug, PYTHONASYNCIODEBUG, slow-callback warnings, a
ResourceWarning for an unclosed loop that is garbage-collected."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import warnings

import pytest

import ferroloop
from ferro_helpers import run_python


def test_debug_is_off_by_default_and_can_be_toggled(loop: ferroloop.Loop) -> None:
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_takes_truthy_values_like_the_stdlib(
    loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop
) -> None:
    for value in (1, "yes", 0, ""):
        loop.set_debug(value)  # type: ignore[arg-type]
        stdlib_loop.set_debug(value)  # type: ignore[arg-type]
        assert loop.get_debug() == bool(stdlib_loop.get_debug())


@pytest.mark.parametrize(("env_value", "expected"), [("1", "True"), ("", "False")])
def test_pythonasynciodebug_turns_debug_on(env_value: str, expected: str) -> None:
    proc = run_python(
        "-c",
        "import ferroloop; lp = ferroloop.new_event_loop(); print(lp.get_debug()); lp.close()",
        env_extra={"PYTHONASYNCIODEBUG": env_value},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_dev_mode_turns_debug_on() -> None:
    proc = run_python(
        "-X",
        "dev",
        "-c",
        "import ferroloop; lp = ferroloop.new_event_loop(); print(lp.get_debug()); lp.close()",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_slow_callback_is_logged_on_the_asyncio_logger(loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture) -> None:
    def slow() -> None:
        time.sleep(0.06)

    def quick() -> None:
        pass

    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    loop.call_soon(slow)
    loop.call_soon(quick)
    loop.call_later(0.001, slow)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 2, messages
    assert re.fullmatch(r"Executing <Handle .*slow\(\) .*> took 0\.\d{3} seconds", messages[0])
    assert re.fullmatch(r"Executing <TimerHandle .*slow\(\) .*> took 0\.\d{3} seconds", messages[1])
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_slow_callbacks_are_not_logged_outside_debug_mode(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    loop.slow_callback_duration = 0.0
    loop.call_soon(time.sleep, 0.01)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert not [r for r in caplog.records if "Executing" in r.getMessage()]


def test_slow_task_step_is_logged(loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture) -> None:
    async def blocking_step() -> None:
        time.sleep(0.03)

    loop.set_debug(True)
    loop.slow_callback_duration = 0.02
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(blocking_step())
    assert any(re.match(r"Executing <Task .*blocking_step", r.getMessage()) for r in caplog.records)


def test_unclosed_loop_garbage_collected_warns_resource_warning() -> None:
    event_loop = ferroloop.new_event_loop()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del event_loop
        gc.collect()


def test_closed_loop_garbage_collected_does_not_warn() -> None:
    event_loop = ferroloop.new_event_loop()
    event_loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del event_loop
        gc.collect()


def test_unclosed_loop_in_a_subprocess_reports_resource_warning() -> None:
    proc = run_python(
        "-W",
        "always::ResourceWarning",
        "-c",
        "import ferroloop, gc; lp = ferroloop.new_event_loop(); del lp; gc.collect()",
    )
    assert proc.returncode == 0
    assert "ResourceWarning: unclosed event loop" in proc.stderr


def test_debug_mode_records_where_handles_and_tasks_were_created(loop: ferroloop.Loop) -> None:
    loop.set_debug(True)
    handle = loop.call_soon(print)
    assert handle._source_traceback
    assert handle._source_traceback[-1][0] == __file__

    async def nothing() -> None:
        pass

    task = loop.create_task(nothing())
    assert task._source_traceback
    loop.run_until_complete(task)


def test_debug_mode_warns_about_a_never_awaited_coroutine_with_its_origin() -> None:
    proc = run_python(
        "-W",
        "always",
        "-c",
        "import asyncio, ferroloop\n"
        "async def forgotten(): pass\n"
        "async def main():\n"
        "    forgotten()\n"
        "ferroloop.run(main(), debug=True)\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "coroutine 'forgotten' was never awaited" in proc.stderr
    assert "Coroutine created at" in proc.stderr
